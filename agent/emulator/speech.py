"""The frames of one spoken response, with their send times, in the real service's order.

Transcript deltas are paced with the audio: each word's delta goes out when the audio
reaches that word (its share of the text, by characters), right before the audio chunk of
that moment; ``audio_transcript.done`` and ``audio.done`` close the response [seed].
"""

from __future__ import annotations

import base64
import re
from typing import Any

__all__ = ["AUDIO_CHUNK_MS", "OUT_RATE_HZ", "response_frames"]

OUT_RATE_HZ = 24_000  # audio.delta: PCM16 24 kHz mono (inferred [seed])
AUDIO_CHUNK_MS = 100  # audio.delta size


def response_frames(
    response_id: str, text: str, pcm: bytes, *, chunk_ms: int = AUDIO_CHUNK_MS
) -> list[tuple[float, dict[str, Any]]]:
    """``(send time s from the response's start, frame)`` pairs, in send order."""
    duration = len(pcm) / (OUT_RATE_HZ * 2)
    pieces = re.findall(r"\S+\s*", text) or [text]
    total = max(1, sum(len(p) for p in pieces))
    timed: list[tuple[float, int, dict[str, Any]]] = []  # (time, tie-break, frame)
    done_chars = 0
    for piece in pieces:
        at = duration * done_chars / total
        done_chars += len(piece)
        timed.append(
            (
                at,
                0,
                {
                    "type": "realtime.response.audio_transcript.delta",
                    "data": {"id": response_id, "content": piece},
                },
            )
        )
    step = OUT_RATE_HZ * 2 * chunk_ms // 1000
    t = 0.0
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        timed.append(
            (
                t,
                1,
                {
                    "type": "realtime.response.audio.delta",
                    "data": {"delta": base64.b64encode(chunk).decode("ascii")},
                },
            )
        )
        t += len(chunk) / (OUT_RATE_HZ * 2)
    timed.sort(key=lambda x: (x[0], x[1]))
    out = [(at, frame) for at, _, frame in timed]
    out.append(
        (
            t,
            {
                "type": "realtime.response.audio_transcript.done",
                "data": {"id": response_id, "content": text},
            },
        )
    )
    out.append((t, {"type": "realtime.response.audio.done", "data": {}}))
    return out
