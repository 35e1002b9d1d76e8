"""Which copy of the avatar's voice the speaker plays: sans-I/O, times passed in.

The voice comes twice: as WebRTC audio forwarded by the display (``audio.out``, real time,
one continuous track) and as ``navtalk.audio.delta`` chunks from the WebSocket (per response,
often faster than real time). Playing both doubles every word; playing only WebRTC mutes
the avatar while WebRTC is not up (the greeting is spoken before it connects).

::

    WebRTC live = an audio.out frame within stall_ms.
    first delta of a response: DELTAS if WebRTC is not live, or a DELTAS response is still
                               playing (back-to-back replies stay on one source); else WEBRTC
    a DELTAS response ......... its deltas are played, audio.out is held back (dropped) until
                               it has ended (done, or no delta for end_after_ms) and the
                               speaker's queue is empty: no doubling, no gap
    deltas without a response id: each done ends one response, the next delta starts another
    a WEBRTC response ......... its deltas are kept (bounded), not played; when WebRTC stalls
                               before the response's audio is over, the rest is played from
                               the deltas, from the point WebRTC had reached (estimated by
                               the time since the response's first delta)
    barge-in .................. the current response ends; kept deltas are dropped

The choice is per response, so a switch never splits a response between the two sources
except after a stall, where the alternative is silence.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass, field

__all__ = ["Resume", "Source", "VoiceSource"]

log = logging.getLogger(__name__)

_MS = 1_000_000
_S = 1_000_000_000


class Source(enum.StrEnum):
    WEBRTC = "webrtc"
    DELTAS = "deltas"


@dataclass(frozen=True, slots=True)
class Resume:
    """The rest of a response to play from its deltas, after WebRTC stalled."""

    response_id: str
    pcm: bytes
    sample_rate_hz: int
    channels: int


@dataclass(slots=True)
class _Response:
    response_id: str
    source: Source
    first_ns: int  # first delta received
    last_ns: int  # latest delta received
    done: bool = False
    ended: bool = False  # over for good (barge-in, resumed after a stall, drained)
    sample_rate_hz: int = 24_000
    channels: int = 1
    kept: list[bytes] = field(default_factory=list)  # WEBRTC: its deltas, for a stall
    kept_bytes: int = 0


class VoiceSource:
    def __init__(
        self,
        *,
        stall_ms: int = 400,
        end_after_ms: int = 2000,
        keep_ms: int = 120_000,
        remember: int = 64,
    ) -> None:
        self._stall_ns = stall_ms * _MS
        self._end_after_ns = end_after_ms * _MS
        self._keep_ms = keep_ms
        self._remember = remember
        self._last_webrtc_ns: int | None = None
        self._responses: dict[str, _Response] = {}  # insertion order = arrival order
        self._on_deltas: _Response | None = None  # the DELTAS response playing, if any
        self._on_webrtc: _Response | None = None  # the latest WEBRTC response
        self._early_done: collections.deque[str] = collections.deque(maxlen=remember)
        self.held_back = 0  # audio.out frames dropped while a DELTAS response played
        self.ignored_deltas = 0  # deltas of WEBRTC responses not played
        self.resumed = 0  # responses finished on deltas after WebRTC stalled

    # --- inputs -----------------------------------------------------------------------------

    def webrtc_live(self, now_ns: int) -> bool:
        return self._last_webrtc_ns is not None and now_ns - self._last_webrtc_ns < self._stall_ns

    def on_webrtc(self, now_ns: int, queued_ms: float) -> bool:
        """An audio.out frame arrived: True to play it. ``queued_ms``: the audible voice still
        queued at the speaker."""
        self._last_webrtc_ns = now_ns
        r = self._on_deltas
        if r is not None:
            if not self._over(r, now_ns) or queued_ms > 0:
                self.held_back += 1
                return False
            self._on_deltas = None
            r.ended = True
            log.info("= voice: response %s played from deltas; back to WebRTC", r.response_id)
        return True

    def on_delta(
        self,
        response_id: str,
        pcm: bytes,
        sample_rate_hz: int,
        channels: int,
        now_ns: int,
        queued_ms: float,
    ) -> bytes:
        """A navtalk.audio.delta chunk arrived: the PCM to play now (b"" for none).
        ``queued_ms``: the audible voice still queued at the speaker."""
        r = self._responses.get(response_id)
        if r is not None and (r.ended or (r.done and not response_id)):
            # Over, and the id comes again: a new response. Deltas without an id (a server
            # that sends none) are told apart by their done only.
            del self._responses[response_id]
            r = None
        if r is None:
            r = self._start(response_id, now_ns, queued_ms)
            r.sample_rate_hz, r.channels = sample_rate_hz, channels
        r.last_ns = now_ns
        if r.ended and r.source is Source.WEBRTC:
            self.ignored_deltas += 1
            return b""
        if r.source is Source.DELTAS:
            return pcm
        if r.kept_bytes < r.sample_rate_hz * r.channels * 2 * self._keep_ms // 1000:
            r.kept.append(pcm)
            r.kept_bytes += len(pcm)
        self.ignored_deltas += 1
        return b""

    def on_done(self, response_id: str) -> None:
        """navtalk.audio.done: the response's deltas are complete. It rides the control plane
        and may overtake the response's deltas (media plane): a done for a response not seen
        yet is remembered (except without an id, where a done only separates responses)."""
        r = self._responses.get(response_id)
        if r is not None:
            r.done = True
        elif response_id:
            self._early_done.append(response_id)

    def on_barge_in(self) -> None:
        for r in (self._on_deltas, self._on_webrtc):
            if r is not None:
                r.ended = True
                r.kept, r.kept_bytes = [], 0
        self._on_deltas = None

    def tick(self, now_ns: int) -> Resume | None:
        """Now and then: after a WebRTC stall, the rest of the response WebRTC was playing,
        as (response_id, PCM) to play from the deltas."""
        r = self._on_webrtc
        if r is None or r.ended or self.webrtc_live(now_ns) or self._last_webrtc_ns is None:
            return None
        # What WebRTC had played of it when it stalled, and how long the response is.
        played_ns = max(0, self._last_webrtc_ns - r.first_ns)
        frame_bytes = 2 * r.channels
        rate_bytes_s = r.sample_rate_hz * frame_bytes
        skip = played_ns * r.sample_rate_hz // _S * frame_bytes
        if skip >= r.kept_bytes and (r.done or now_ns - r.last_ns >= self._end_after_ns):
            r.ended = True  # it was over before WebRTC stalled
            r.kept, r.kept_bytes = [], 0
            return None
        rest = b"".join(r.kept)[skip:]
        r.kept, r.kept_bytes = [], 0
        r.source = Source.DELTAS
        self._on_deltas = r
        self._on_webrtc = None
        self.resumed += 1
        log.info(
            "= voice: WebRTC stalled in response %s; the rest from deltas (%d ms skipped)",
            r.response_id,
            skip * 1000 // rate_bytes_s,
        )
        return Resume(r.response_id, rest, r.sample_rate_hz, r.channels)

    # --- internals --------------------------------------------------------------------------

    def _start(self, response_id: str, now_ns: int, queued_ms: float) -> _Response:
        playing = self._on_deltas
        if playing is not None and self._over(playing, now_ns) and queued_ms <= 0:
            playing.ended = True  # over and played out
            self._on_deltas = playing = None
        source = Source.WEBRTC if self.webrtc_live(now_ns) and playing is None else Source.DELTAS
        r = _Response(response_id, source, now_ns, now_ns)
        if response_id and response_id in self._early_done:
            self._early_done.remove(response_id)
            r.done = True
        self._responses[response_id] = r
        while len(self._responses) > self._remember:
            del self._responses[next(iter(self._responses))]
        if source is Source.DELTAS:
            self._on_deltas = r
        else:
            if self._on_webrtc is not None:
                self._on_webrtc.kept, self._on_webrtc.kept_bytes = [], 0
            self._on_webrtc = r
        if source is Source.WEBRTC:
            why = "WebRTC is live"
        elif playing is not None:
            why = f"response {playing.response_id!r} is still playing from deltas"
        elif self._last_webrtc_ns is None:
            why = "no WebRTC voice yet"
        else:
            why = f"WebRTC quiet for {(now_ns - self._last_webrtc_ns) / 1e6:.0f} ms"
        log.info("= voice: response %s from %s (%s)", response_id, source, why)
        return r

    def _over(self, r: _Response, now_ns: int) -> bool:
        return r.ended or r.done or now_ns - r.last_ns >= self._end_after_ns
