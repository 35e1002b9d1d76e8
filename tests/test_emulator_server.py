"""The emulator's server on real loopback sockets: path, TLS, client offers, faults."""

from __future__ import annotations

import json
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.emulator.brain import Script
from agent.emulator.server import Emulator, limit_ice_to_loopback
from agent.navtalk import events as ev
from agent.navtalk.protocol import NavTalkProtocol
from agent.navtalk.settings import EmulatorSettings

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

    limit_ice_to_loopback()
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
            proto.receive_text(json.dumps(frame), 0.0)
            await ws.wait_closed()
            assert ws.close_code == 1000
