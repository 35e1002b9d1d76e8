"""One NavTalk WebSocket connection as the session shell runs it, why it ended, and the
relay of local WebRTC signaling to it (BRIEF contract 2: signaling of another connection
is dropped; the server's latched offer and candidates are unlatched once answered)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection

from agent import topics
from agent.bus import Bus
from agent.messages import IceCandidate, SdpMessage
from agent.navtalk.bridge import stale_signaling
from agent.navtalk.protocol import NavTalkProtocol
from agent.navtalk.url import redact

__all__ = ["Connection", "SignalingRelay", "close_detail"]


@dataclass(slots=True)
class Connection:
    """One WebSocket connection and its protocol core."""

    ws: ClientConnection
    proto: NavTalkProtocol
    connection_id: str
    ended_by_us: bool = False
    failure: BaseException | None = None
    handshake: asyncio.Timeout | None = None  # the handshake deadline's scope
    replay: list[str] = field(default_factory=list)  # user turns to replay at session.created

    async def send(self, *frames: str) -> None:
        for frame in frames:
            await self.ws.send(frame)


def close_detail(ws: ClientConnection, ended_by_us: bool) -> str:
    """Why the socket closed, in words: who closed it, the close code and its reason."""
    proto = ws.protocol
    rcvd, sent = proto.close_rcvd, proto.close_sent
    we_first = rcvd is None or proto.close_rcvd_then_sent is False
    if sent is not None and we_first and not ended_by_us:
        # we closed first without meaning to end: a protocol error (e.g. 1009, too big)
        tail = f", {redact(sent.reason)[:120]!r}" if sent.reason else ""
        return f"closed by this client with code {sent.code}{tail}"
    if rcvd is None:
        if ended_by_us:
            return "closed by us"
        return "connection dropped (no close frame)"
    reason = redact(rcvd.reason)[:120]
    tail = f", {reason!r}" if reason else ""
    if ended_by_us:
        return f"closed by us (server answered code {rcvd.code}{tail})"
    if rcvd.code in (1000, 1001):
        kind = "normal close" if rcvd.code == 1000 else "going away"
        return f"closed by the server: {kind} (code {rcvd.code}{tail})"
    return f"closed by the server with code {rcvd.code}{tail}"


class SignalingRelay:
    def __init__(
        self, bus: Bus, current: Callable[[], Connection | None], flood: Callable[..., None]
    ) -> None:
        self.bus = bus
        self._current, self._flood = current, flood
        self.stale = 0  # local signaling dropped

    def unlatch(self) -> None:
        """Forget the server's offer and candidates (answered, or the connection ended)."""
        self.bus.unlatch(topics.WEBRTC_REMOTE_OFFER)
        self.bus.unlatch(topics.WEBRTC_REMOTE_ICE)

    def _for(self, connection_id: str, what: str) -> Connection | None:
        conn = self._current()
        why = stale_signaling(connection_id, conn.connection_id if conn else None)
        if why is None:
            return conn
        self.stale += 1
        self._flood(f"signaling:{what}", "= local %s dropped: %s", what, why)
        return None

    async def on_sdp(self, msg: SdpMessage) -> None:
        conn = self._for(msg.connection_id, msg.sdp_type)
        if conn is None:
            return
        if msg.sdp_type == "answer":
            await conn.send(conn.proto.webrtc_answer(msg.sdp))
            self.unlatch()  # answered: a display that starts later must not answer it again
        else:
            await conn.send(conn.proto.webrtc_offer(msg.sdp))

    async def on_ice(self, msg: IceCandidate) -> None:
        conn = self._for(msg.connection_id, "ICE candidate")
        if conn is not None:
            await conn.send(
                conn.proto.ice_candidate(msg.candidate, msg.sdp_mid, msg.sdp_mline_index)
            )
