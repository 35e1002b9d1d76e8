"""The session's mic relay: live mic audio to NavTalk, or into the backlog until READY.

A thin shell over :class:`agent.navtalk.backlog.AudioBacklog`: frames go straight to
NavTalk while the session is READY; while a session is wanted but not ready they wait
in the backlog behind the mic's pre-roll (asked for at each connect), and are flushed
at ``realtime.session.updated``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from agent import topics
from agent.bus import Bus
from agent.messages import AudioFrame, PreRoll, PreRollRequest
from agent.navtalk.backlog import AudioBacklog
from agent.navtalk.protocol import AUDIO_SAMPLE_RATE_HZ
from agent.navtalk.url import RedactFilter
from services.session_parts.conn import Connection

__all__ = ["MicRelay"]

log = logging.getLogger("services.session")
log.addFilter(RedactFilter())


class MicRelay:
    def __init__(
        self,
        bus: Bus,
        *,
        preroll_ms: int,
        backlog_ms: int,
        current: Callable[[], Connection | None],
        wanted: Callable[[], bool],
        flood: Callable[..., None],
    ) -> None:
        self.bus = bus
        self.preroll_ms = preroll_ms
        self.backlog = AudioBacklog(backlog_ms * AUDIO_SAMPLE_RATE_HZ * 2 // 1000)
        self._current, self._wanted, self._flood = current, wanted, flood
        self._preroll_id = ""
        self.frames_sent = 0

    def request_preroll(self, duration_ms: int | None = None) -> None:
        ms = self.preroll_ms if duration_ms is None else duration_ms
        if ms <= 0:
            return
        self._preroll_id = uuid.uuid4().hex[:12]
        self.bus.publish(
            topics.MIC_PREROLL_REQUEST,
            PreRollRequest(request_id=self._preroll_id, duration_ms=min(ms, 10_000)),
        )

    async def flush(self, conn: Connection) -> None:
        if not len(self.backlog):
            return
        pcm = self.backlog.drain()
        log.info("> sending %d ms of buffered audio", len(pcm) * 1000 // (AUDIO_SAMPLE_RATE_HZ * 2))
        await conn.send(*conn.proto.audio_append(pcm))

    async def on_mic(self, frame: AudioFrame, payload: list[bytes]) -> None:
        if not payload:
            return
        if frame.sample_rate_hz != AUDIO_SAMPLE_RATE_HZ or frame.channels != 1:
            self._flood(
                "mic-format",
                "< audio.mic is %d Hz x%d; NavTalk needs 24000 Hz mono: dropped",
                frame.sample_rate_hz,
                frame.channels,
            )
            return
        pcm = payload[0]
        conn = self._current()
        if conn is not None and conn.proto.can_send_audio:
            await conn.send(*conn.proto.audio_append(pcm))
            self.frames_sent += 1
        elif self._wanted():
            self.backlog.add(frame.capture_mono_ns, bytes(pcm))

    def on_preroll(self, msg: PreRoll, payload: list[bytes]) -> None:
        if msg.request_id != self._preroll_id or not payload:
            return
        if msg.sample_rate_hz != AUDIO_SAMPLE_RATE_HZ:
            log.warning("< pre-roll at %d Hz ignored", msg.sample_rate_hz)
            return
        conn = self._current()
        if conn is not None and conn.proto.can_send_audio:
            return  # too late: live audio is already flowing
        self.backlog.merge_preroll(msg.end_mono_ns, bytes(payload[0]))
