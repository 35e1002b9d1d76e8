"""The emulator's side of WebRTC for one connection: an aiortc peer connection carrying the
avatar's video and voice (:class:`agent.emulator.avatar.AvatarMedia`), offered by the server
with its candidates in the SDP [wire]; client answers, candidates and (re)offers applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.aio import run_to_end
from agent.emulator.outputs import RemoteIce, RemoteSdp
from agent.navtalk.settings import EmulatorSettings

__all__ = ["RtcLink"]

logger = logging.getLogger(__name__)

SendFrame = Callable[[Mapping[str, Any]], Awaitable[None]]


class RtcLink:
    def __init__(
        self,
        settings: EmulatorSettings,
        send: SendFrame,
        *,
        on_state: Callable[[str], None] = lambda s: None,
        on_offer_sent: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._send = send
        self._on_state = on_state
        self._on_offer_sent = on_offer_sent
        self.pc: Any = None  # aiortc.RTCPeerConnection
        self.media: Any = None  # agent.emulator.avatar.AvatarMedia
        self.client_offers = 0
        self._lock = asyncio.Lock()
        self._ready: asyncio.Task[None] | None = None
        self._drain: set[asyncio.Task[None]] = set()

    def _new_pc(self) -> Any:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        media = _avatar_media(self.settings)
        if media is not None:
            self.media = media
            pc.addTrack(media.video)
            pc.addTrack(media.audio)
        else:
            pc.addTransceiver("video", direction="sendrecv")
            pc.addTransceiver("audio", direction="sendrecv")

        @pc.on("connectionstatechange")
        def _state() -> None:
            self._on_state(str(pc.connectionState))
            logger.info("= emulator WebRTC %s", pc.connectionState)

        @pc.on("track")
        def _track(track: Any) -> None:  # a client camera: always drain remote tracks
            task = asyncio.create_task(_drain(track))
            self._drain.add(task)
            task.add_done_callback(self._drain.discard)

        return pc

    def start_offer(self) -> asyncio.Task[None]:
        self._ready = asyncio.create_task(self._offer(), name="emu-offer")
        return self._ready

    async def _offer(self) -> None:
        async with self._lock:
            self.pc = self._new_pc()
            # aiortc gathers before it writes the SDP: the candidates are in the offer [wire].
            await self.pc.setLocalDescription(await self.pc.createOffer())
            sdp = self.pc.localDescription.sdp
        await self._send(
            {"type": "webrtc.signaling.offer", "data": {"sdp": {"type": "offer", "sdp": sdp}}}
        )
        self._on_offer_sent()

    async def signal(self, out: RemoteSdp | RemoteIce) -> None:
        from aiortc import RTCSessionDescription
        from aiortc.sdp import candidate_from_sdp

        if self._ready is not None:
            await asyncio.gather(self._ready, return_exceptions=True)
        try:
            async with self._lock:
                if isinstance(out, RemoteIce):
                    if self.pc is None or not out.candidate:
                        return  # end of candidates, or no connection yet
                    cand = candidate_from_sdp(out.candidate.removeprefix("candidate:"))
                    cand.sdpMid = out.sdp_mid
                    cand.sdpMLineIndex = out.sdp_mline_index
                    await self.pc.addIceCandidate(cand)
                elif out.sdp_type == "answer":
                    if self.pc is None:
                        logger.warning("< emulator: answer without an offer")
                        return
                    await self.pc.setRemoteDescription(RTCSessionDescription(out.sdp, "answer"))
                else:  # client-initiated offer (renegotiation [hotel]): answer it
                    self.client_offers += 1
                    # Always on a fresh connection: a client offers when it restarted or its
                    # connection failed, so the offer brings new ICE credentials and a new
                    # DTLS fingerprint, which aiortc cannot apply to a live connection (no
                    # ICE restart): the old one would stay "connecting" for ever.
                    if self.pc is not None:
                        await run_to_end(self.pc.close())  # see agent.aio
                    self.pc = self._new_pc()
                    await self.pc.setRemoteDescription(RTCSessionDescription(out.sdp, "offer"))
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    answer = self.pc.localDescription.sdp
                    await self._send(
                        {
                            "type": "webrtc.signaling.answer",
                            "data": {"sdp": {"type": "answer", "sdp": answer}},
                        }
                    )
        except Exception:  # a bad SDP from the client must not end the session
            logger.exception("emulator: WebRTC signaling failed")

    async def close(self) -> None:
        tasks = list(self._drain) + ([self._ready] if self._ready is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.pc is not None:
            await run_to_end(self.pc.close())  # see agent.aio


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return


def _avatar_media(settings: EmulatorSettings) -> Any:
    from agent.emulator.avatar import AvatarMedia

    return AvatarMedia(settings.video_width, settings.video_height, settings.video_fps)
