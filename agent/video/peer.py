"""The display's WebRTC peer: one aiortc RTCPeerConnection at a time, receive-only.

::

    remote offer ──▶ answer()        ─▶ local answer (+ its candidates, to trickle)
    offer()  (own restart / failure) ─▶ local offer   … remote answer ──▶ accept_answer()
    remote ICE   ──▶ add_candidate() (queued until the remote description is set)
    every remote track is drained at once, frames go to ``on_frame`` (never left queued:
    aiortc's remote track queue is unbounded)

Each new negotiation starts from a fresh RTCPeerConnection (a *generation*): a
restarted display or a failed connection has nothing worth keeping, and a fresh
peer is what both aiortc and browsers renegotiate most reliably. Frames and
state changes carry the generation so the caller can ignore stale ones; a
connection we close ourselves reports no state at all (its ``closed`` is not a
failure to recover from, and must not start yet another offer).

ICE stays on the configured host address: aioice gathers only there (see
:func:`restrict_ice_host`), and on loopback remote candidates and ICE servers
that are not loopback are dropped, so no packet leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from agent.aio import run_to_end
from agent.errors import NavtalkAgentError
from agent.messages import IceCandidate, IceServer, SdpMessage
from agent.video.ice import is_loopback

__all__ = [
    "DisplayPeer",
    "FrameSink",
    "PeerError",
    "StateSink",
    "filter_sdp_candidates",
    "is_loopback",
    "restrict_ice_host",
    "sdp_candidate_addresses",
]

log = logging.getLogger(__name__)

# on_frame(kind "audio"/"video", generation, av frame); on_state(generation, connectionState)
FrameSink = Callable[[str, int, Any], None]
StateSink = Callable[[int, str], None]


class PeerError(NavtalkAgentError):
    """A WebRTC negotiation step failed (bad SDP, wrong signaling state)."""


def restrict_ice_host(host: str) -> None:
    """Make aioice gather host candidates on ``host`` only (process-wide).

    aioice leaves 127.0.0.1 out of its host addresses and uses every other
    interface; ``get_host_addresses`` is its public hook for that choice.
    An empty ``host`` restores the library's own behaviour.
    """
    if not hasattr(restrict_ice_host, "original"):
        restrict_ice_host.original = aioice.ice.get_host_addresses  # type: ignore[attr-defined]
    if not host:
        aioice.ice.get_host_addresses = restrict_ice_host.original  # type: ignore[attr-defined]
        return

    def only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [host]

    aioice.ice.get_host_addresses = only


def sdp_candidate_addresses(sdp: str) -> list[str]:
    """The connection address of every ``a=candidate`` line of an SDP."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) >= 5:
                out.append(bits[4])
    return out


def filter_sdp_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """Drop ``a=candidate`` lines whose address ``keep`` refuses."""
    lines = []
    for line in sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n"):
        if line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) >= 5 and not keep(bits[4]):
                log.info("= dropping remote candidate %s", bits[4])
                continue
        lines.append(line)
    return ("\r\n" if "\r\n" in sdp else "\n").join(lines)


class DisplayPeer:
    """Receive-only WebRTC peer with fresh-connection renegotiation. See the module docstring."""

    def __init__(self, host: str, on_frame: FrameSink, on_state: StateSink) -> None:
        self.host = host
        self._on_frame = on_frame
        self._on_state = on_state
        self._pc: RTCPeerConnection | None = None
        self.generation = 0
        self._pending_ice: list[IceCandidate] = []
        self._drains: set[asyncio.Task[None]] = set()
        self.tracks_seen = 0
        restrict_ice_host(host)

    # --- state -------------------------------------------------------------------------

    @property
    def connection_state(self) -> str:
        return "none" if self._pc is None else str(self._pc.connectionState)

    @property
    def signaling_state(self) -> str:
        return "none" if self._pc is None else str(self._pc.signalingState)

    @property
    def awaiting_answer(self) -> bool:
        return self._pc is not None and self._pc.signalingState == "have-local-offer"

    def _keep_address(self, address: str) -> bool:
        return not is_loopback(self.host) or is_loopback(address)

    def _config(self, servers: Sequence[IceServer]) -> RTCConfiguration:
        ice: list[RTCIceServer] = []
        for s in servers:
            urls = list(s.urls)
            if is_loopback(self.host):
                urls = [u for u in urls if is_loopback(_url_host(u))]
            if urls:
                ice.append(RTCIceServer(urls=urls, username=s.username, credential=s.credential))
            else:
                log.info("= ICE server %s skipped: ICE is kept on %s", s.urls, self.host)
        return RTCConfiguration(iceServers=ice)  # [] also stops aiortc's public STUN default

    async def _fresh(self, servers: Sequence[IceServer]) -> RTCPeerConnection:
        await self.close()
        self.generation += 1
        gen = self.generation
        pc = RTCPeerConnection(self._config(servers))
        self._pc = pc
        self._pending_ice = []

        @pc.on("track")  # type: ignore[untyped-decorator,unused-ignore]
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks_seen += 1
            log.info("< track %s (generation %d)", track.kind, gen)
            task = asyncio.create_task(self._drain(track, gen), name=f"drain-{track.kind}-{gen}")
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

        @pc.on("connectionstatechange")  # type: ignore[untyped-decorator,unused-ignore]
        def on_state() -> None:
            log.info("= webrtc %s (generation %d)", pc.connectionState, gen)
            if self._pc is not pc:
                return  # one we dropped ourselves (close(), or a fresh one replaced it)
            self._on_state(gen, str(pc.connectionState))

        return pc

    async def _drain(self, track: MediaStreamTrack, gen: int) -> None:
        kind = str(track.kind)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                log.info("= %s track ended (generation %d)", kind, gen)
                return
            try:
                self._on_frame(kind, gen, frame)
            except Exception:
                log.exception("frame handler failed; continuing")

    # --- negotiation ---------------------------------------------------------------------

    async def answer(self, offer: SdpMessage, servers: Sequence[IceServer] = ()) -> SdpMessage:
        """Answer a remote offer on a fresh connection."""
        if offer.sdp_type != "offer":
            raise PeerError(f"expected an offer, got {offer.sdp_type}")
        pc = await self._fresh(servers or offer.ice_servers)
        sdp = filter_sdp_candidates(offer.sdp, self._keep_address)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await self._apply_pending()
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, AssertionError) as exc:  # aiortc's way of rejecting an SDP
            raise PeerError(f"cannot answer the offer: {exc}") from exc
        return SdpMessage(sdp_type="answer", sdp=pc.localDescription.sdp)

    async def offer(self, servers: Sequence[IceServer] = ()) -> SdpMessage:
        """Start over with our own offer (receive video and audio)."""
        pc = await self._fresh(servers)
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return SdpMessage(sdp_type="offer", sdp=pc.localDescription.sdp)

    async def accept_answer(self, answer: SdpMessage) -> bool:
        """Apply the remote answer to our offer; False (ignored) if no offer is pending."""
        if not self.awaiting_answer or self._pc is None:
            log.info("= answer ignored: no offer of ours is pending (%s)", self.signaling_state)
            return False
        sdp = filter_sdp_candidates(answer.sdp, self._keep_address)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, AssertionError) as exc:
            raise PeerError(f"cannot accept the answer: {exc}") from exc
        await self._apply_pending()
        return True

    async def add_candidate(self, candidate: IceCandidate) -> None:
        """Add a trickled remote candidate (queued until a remote description is set)."""
        if self._pc is None:
            return
        if self._pc.remoteDescription is None:
            self._pending_ice.append(candidate)
            return
        await self._add(candidate)

    async def _apply_pending(self) -> None:
        pending, self._pending_ice = self._pending_ice, []
        for c in pending:
            await self._add(c)

    async def _add(self, c: IceCandidate) -> None:
        assert self._pc is not None
        text = c.candidate.strip().removeprefix("a=").removeprefix("candidate:")
        if not text:  # end-of-candidates
            await self._pc.addIceCandidate(None)
            return
        try:
            cand = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:
            log.warning("< bad ICE candidate %r: %s", c.candidate, exc)
            return
        if not self._keep_address(cand.ip):
            log.info("= dropping remote candidate %s", cand.ip)
            return
        cand.sdpMid = c.sdp_mid or None
        cand.sdpMLineIndex = c.sdp_mline_index
        if cand.sdpMid is None and cand.sdpMLineIndex is None:
            cand.sdpMLineIndex = 0
        await self._pc.addIceCandidate(cand)

    def local_candidates(self) -> list[IceCandidate]:
        """Our candidates, to trickle (aiortc also writes them into the SDP)."""
        if self._pc is None or self._pc.localDescription is None:
            return []
        out: list[IceCandidate] = []
        for t in self._pc.getTransceivers():
            gatherer = t.receiver.transport.transport.iceGatherer
            for cand in gatherer.getLocalCandidates():
                out.append(
                    IceCandidate(
                        candidate="candidate:" + candidate_to_sdp(cand),
                        sdp_mid=t.mid,
                        sdp_mline_index=_mline_index(self._pc.localDescription.sdp, t.mid),
                    )
                )
            break  # BUNDLE: every m-line shares the first transport
        return out

    async def close(self) -> None:
        pc, self._pc = self._pc, None
        # Stop the drains first: frames still queued on the old connection must not reach
        # on_frame while it closes (they carry the generation that is still current).
        drains = list(self._drains)
        for task in drains:
            task.cancel()
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)
        if pc is not None:
            await run_to_end(pc.close())  # aioice can swallow our cancellation: see run_to_end


def _url_host(url: str) -> str:
    rest = url.split(":", 1)[1] if ":" in url else url
    rest = rest.split("?", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _mline_index(sdp: str, mid: str | None) -> int | None:
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line == f"a=mid:{mid}":
            return index
    return None
