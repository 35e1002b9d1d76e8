"""The display's WebRTC peer (agent/video/peer.py), on real aiortc."""

from __future__ import annotations

import asyncio
import time

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from agent.messages import SdpMessage
from agent.video.peer import DisplayPeer, FrameSink, sdp_candidate_addresses


async def test_connections_we_drop_ourselves_report_no_state() -> None:
    """Replacing a connection by a fresh one (a new offer) or closing it is our own doing:
    reporting its "closed" would make the display offer yet again, and two offers in flight
    get their answers crossed."""
    states: list[tuple[int, str]] = []
    peer = DisplayPeer(
        "127.0.0.1", lambda kind, gen, frame: None, lambda g, s: states.append((g, s))
    )
    try:
        await peer.offer()
        await peer.offer()  # replaces generation 1
        assert peer.generation == 2 and peer.signaling_state == "have-local-offer"
    finally:
        await peer.close()
    assert states == []


async def _connected_pair(
    on_frame: FrameSink = lambda kind, gen, frame: None,
) -> tuple[DisplayPeer, RTCPeerConnection]:
    """A DisplayPeer receiving from a plain aiortc sender, connected on 127.0.0.1."""
    connected = asyncio.Event()
    peer = DisplayPeer(
        "127.0.0.1",
        on_frame,
        lambda g, s: connected.set() if s == "connected" else None,
    )
    remote = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no public STUN
    offer = await peer.offer()
    await remote.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
    remote.addTrack(VideoStreamTrack())
    remote.addTrack(AudioStreamTrack())
    await remote.setLocalDescription(await remote.createAnswer())
    assert set(sdp_candidate_addresses(remote.localDescription.sdp)) == {"127.0.0.1"}
    assert await peer.accept_answer(SdpMessage(sdp_type="answer", sdp=remote.localDescription.sdp))
    async with asyncio.timeout(10):
        await connected.wait()
    return peer, remote


async def test_a_cancelled_close_is_not_swallowed() -> None:
    """aioice's close catches the CancelledError of a task it cancelled, which hid the
    display's SIGTERM when it came while the peer was closing (the service then sat out
    its whole stop budget, and CI failed). Cancel close() at every step of its way: the
    caller must always see the cancellation, or the close must already be over."""
    steps = 0
    outcomes: list[str] = []
    while True:
        peer, remote = await _connected_pair()
        try:
            task = asyncio.create_task(peer.close())
            for _ in range(steps):
                await asyncio.sleep(0)
            finished_first = task.done()
            task.cancel()
            await asyncio.wait([task], timeout=5)
            assert task.done(), f"close() still running after a cancel at step {steps}"
            outcome = (
                "finished" if finished_first else ("cancelled" if task.cancelled() else "swallowed")
            )
            outcomes.append(outcome)
            assert outcome != "swallowed", f"cancel at step {steps} was swallowed: {outcomes}"
        finally:
            await peer.close()
            await remote.close()
        if finished_first or steps >= 60:
            break
        steps += 1
    assert outcomes[0] == "cancelled" and outcomes.count("cancelled") >= 3, outcomes


async def test_no_frame_is_delivered_once_close_has_begun() -> None:
    """Frames still queued on a closing connection carry the current generation: were they
    delivered, the display would show the old video as live again."""
    closing = False
    late: list[str] = []
    seen = asyncio.Event()

    def on_frame(kind: str, gen: int, frame: object) -> None:
        seen.set()
        if closing:
            late.append(kind)
        time.sleep(0.02)  # a busy loop: frames queue up in aiortc's track

    peer, remote = await _connected_pair(on_frame)
    try:
        async with asyncio.timeout(10):
            await seen.wait()
        await asyncio.sleep(0.3)  # both tracks flowing
        closing = True
        await peer.close()
        assert late == []
    finally:
        await remote.close()
