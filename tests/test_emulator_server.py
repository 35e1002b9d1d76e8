"""The emulator's server on real loopback sockets: path, TLS, client offers, faults."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.navtalk import events as ev
from agent.navtalk.protocol import NavTalkProtocol, SessionStatus
from agent.navtalk.settings import EmulatorSettings
from agent.video.peer import restrict_ice_host, sdp_candidate_addresses

SCRIPT = Script(greeting="", fallback="Sorry?")


async def events_until(ws: Any, proto: NavTalkProtocol, kind: type[ev.Event]) -> list[ev.Event]:
    seen: list[ev.Event] = []
    while not any(isinstance(e, kind) for e in seen):
        seen += proto.receive_text(await ws.recv(), 0.0)
    return seen


async def test_wrong_path_is_404() -> None:
    async with Emulator(EmulatorSettings(port=0, webrtc=False), script=SCRIPT) as emu:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{emu.port}/api/realtime-api?license=x"):
                pass
        assert info.value.response.status_code == 404


async def test_tls_with_generated_certificate() -> None:
    async with Emulator(EmulatorSettings(port=0, tls=True, webrtc=False), script=SCRIPT) as emu:
        assert emu.base_url.startswith("wss://127.0.0.1:")
        ctx = ssl.create_default_context(cadata=emu.cert_pem.decode())
        async with connect(emu.base_url + "?license=abc&name=Leo", ssl=ctx) as ws:
            proto = NavTalkProtocol()
            seen = await events_until(ws, proto, ev.SessionUpdated)
            assert isinstance(seen[0], ev.ConnectedSuccess)


async def test_client_offer_is_answered_and_ice_accepted() -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    # The emulator keeps ICE on loopback even when it makes no offer of its own (webrtc =
    # false): a client's offer once got the machine's other interfaces as candidates.
    restrict_ice_host("")  # aioice's own choice until the emulator restricts it
    async with Emulator(EmulatorSettings(port=0, webrtc=False), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&avatarId=A1") as ws:
            proto = NavTalkProtocol()
            await events_until(ws, proto, ev.SessionUpdated)
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send(proto.webrtc_offer(pc.localDescription.sdp))
            (answer,) = [e for e in await events_until(ws, proto, ev.RtcAnswer)
                         if isinstance(e, ev.RtcAnswer)]  # fmt: skip
            assert "a=candidate" in answer.sdp  # candidates in the SDP
            assert set(sdp_candidate_addresses(answer.sdp)) == {"127.0.0.1"}
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            # a trickled candidate (and an end-of-candidates) must not upset the server
            await ws.send(proto.ice_candidate("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
                                              "0", 0))  # fmt: skip
            await ws.send(proto.ice_candidate("", "0", 0))
            await pc.close()
            await ws.send(proto.text_turn("hello")[0])
            await ws.send(proto.text_turn("hello")[1])
            seen = await events_until(ws, proto, ev.TranscriptDone)
            assert [e.content for e in seen if isinstance(e, ev.TranscriptDone)] == ["Sorry?"]
        record = emu.sessions[0]
        assert record.client_offers == 1 and "avatarId=A1" in record.query
        assert "abc" not in record.query  # the license is redacted


async def test_malformed_fault_frames_reach_the_client_as_events() -> None:
    async with Emulator(EmulatorSettings(port=0, webrtc=False), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=malformed-1&name=Leo") as ws:
            proto = NavTalkProtocol()
            seen = await events_until(ws, proto, ev.SessionUpdated)
            while sum(isinstance(e, ev.Malformed) for e in seen) < 4:
                seen += proto.receive_text(await ws.recv(), 0.0)
            assert any(isinstance(e, ev.Unknown) for e in seen)


async def test_rejected_license_closes() -> None:
    async with Emulator(EmulatorSettings(port=0, webrtc=False), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=bad-key&name=Leo") as ws:
            proto = NavTalkProtocol()
            frame = json.loads(await ws.recv())
            assert frame == {"type": "conversation.connected.fail", "message": "Invalid license"}
            events = proto.receive_text(json.dumps(frame), 0.0)
            assert events == [ev.ConnectedFail(message="Invalid license")]
            assert proto.state is SessionStatus.CLOSED
            await ws.wait_closed()
            assert ws.close_code == 1000


async def test_server_offer_is_loopback_and_a_restarted_client_renegotiates() -> None:
    """The server's offer carries only 127.0.0.1 candidates; a client that comes back with
    its own offer (a restarted display: new ICE credentials, new DTLS) while the first
    connection is live gets a fresh connection, and media flows again on the same session."""
    from agent.messages import SdpMessage
    from agent.video.peer import DisplayPeer, sdp_candidate_addresses

    async with Emulator(EmulatorSettings(port=0), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            proto = NavTalkProtocol()
            seen = await events_until(ws, proto, ev.RtcOffer)
            (offer,) = [e for e in seen if isinstance(e, ev.RtcOffer)]
            addresses = sdp_candidate_addresses(offer.sdp)
            assert addresses and set(addresses) == {"127.0.0.1"}, addresses

            peers: list[DisplayPeer] = []
            video = [asyncio.Event(), asyncio.Event()]

            def on_frame(n: int) -> Callable[[str, int, Any], None]:
                return lambda kind, gen, frame: video[n].set() if kind == "video" else None

            try:
                first = DisplayPeer("127.0.0.1", on_frame(0), lambda g, s: None)
                peers.append(first)
                answer = await first.answer(SdpMessage(sdp_type="offer", sdp=offer.sdp))
                assert set(sdp_candidate_addresses(answer.sdp)) == {"127.0.0.1"}
                await ws.send(proto.webrtc_answer(answer.sdp))
                await asyncio.wait_for(video[0].wait(), 10)

                second = DisplayPeer("127.0.0.1", on_frame(1), lambda g, s: None)
                peers.append(second)
                own = await second.offer()
                await ws.send(proto.webrtc_offer(own.sdp))
                seen = await events_until(ws, proto, ev.RtcAnswer)
                (reply,) = [e for e in seen if isinstance(e, ev.RtcAnswer)]
                assert set(sdp_candidate_addresses(reply.sdp)) == {"127.0.0.1"}
                assert await second.accept_answer(SdpMessage(sdp_type="answer", sdp=reply.sdp))
                await asyncio.wait_for(video[1].wait(), 10)
                assert second.connection_state == "connected"
            finally:
                for peer in peers:
                    await peer.close()
        record = emu.sessions[0]
        assert len(emu.sessions) == 1 and record.client_offers == 1
        assert len(record.offers_sent_mono) == 1 and len(record.answers_mono) == 1
        assert record.answers_mono[0] > record.offers_sent_mono[0]
        assert emu.violations == []
