"""The real proxy over ipc:// and tcp://127.0.0.1, with real pyzmq sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
import zmq

from agent import topics
from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane
from agent.errors import BusError
from agent.messages import (
    AudioFrame,
    Envelope,
    Heartbeat,
    ToolCall,
    ToolResult,
    UserTranscript,
    encode_envelope,
)
from tests.bus_peer import peer
from tests.conftest import MakeBus, free_port

PCM = bytes(range(256)) * 3 + bytes(192)  # 960 bytes = 20 ms at 24 kHz mono


def _frame(i: int = 0) -> AudioFrame:
    return AudioFrame(sample_rate_hz=24000, capture_mono_ns=time.monotonic_ns(), stream_id=str(i))


async def _recv(bus: Bus, timeout: float = 3.0):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(bus.recv(), timeout)


async def test_ipc_roundtrip_keeps_type_envelope_and_payload(make_bus: MakeBus) -> None:
    mic = await make_bus("mic")
    session = await make_bus("session", topics.AUDIO_MIC)
    before = time.monotonic_ns()
    assert mic.publish(topics.AUDIO_MIC, _frame(), PCM)
    d = await _recv(session)
    assert d.topic == "audio.mic" and d.sender == "mic" and d.seq == 1
    assert isinstance(d.msg, AudioFrame) and d.msg.sample_rate_hz == 24000
    assert d.payload == [PCM]
    assert before <= d.mono_ns <= time.monotonic_ns()


async def test_tcp_loopback_proxy() -> None:
    ports = [free_port() for _ in range(4)]
    settings = BusSettings(
        control=ControlPlane(
            publish=f"tcp://127.0.0.1:{ports[0]}", subscribe=f"tcp://127.0.0.1:{ports[1]}", hwm=1000
        ),
        media=MediaPlane(
            publish=f"tcp://127.0.0.1:{ports[2]}", subscribe=f"tcp://127.0.0.1:{ports[3]}", hwm=100
        ),
    )
    with Proxy(settings):
        async with Bus(settings, "tools") as tools, Bus(settings, "session") as session:
            # subscribe after start works too
            session.subscribe(topics.TOOL_RESULT, topics.AUDIO_MIC)
            # the subscription travels to the proxy asynchronously: sync() waits for it
            await session.sync()
            tools.publish(topics.TOOL_RESULT, ToolResult(call_id="c1", name="t", ok=True))
            got = await _recv(session)
            assert isinstance(got.msg, ToolResult) and got.msg.call_id == "c1"


async def test_sequence_numbers_count_per_topic(make_bus: MakeBus) -> None:
    tools = await make_bus("tools")
    session = await make_bus("session", "tool.")
    for i in range(3):
        tools.publish(topics.TOOL_RESULT, ToolResult(call_id=str(i), name="t", ok=True))
    tools.publish(topics.TOOL_CATALOG, __import__("agent.messages").messages.ToolCatalog(tools=[]))
    seqs = [(d.topic, d.seq) for d in [await _recv(session) for _ in range(4)]]
    assert seqs == [("tool.result", 1), ("tool.result", 2), ("tool.result", 3), ("tool.catalog", 1)]
    assert session.stats.gaps == 0


async def test_publish_refuses_wrong_type_and_unknown_topic(make_bus: MakeBus) -> None:
    bus = await make_bus("session")
    with pytest.raises(BusError, match="carries AudioFrame"):
        bus.publish(topics.AUDIO_MIC, UserTranscript(text="hi"))
    with pytest.raises(BusError, match="unknown topic"):
        bus.publish("no.such.topic", UserTranscript(text="hi"))
    with pytest.raises(BusError, match="matches no topic"):
        bus.subscribe("nosuch.")


async def test_family_topics(make_bus: MakeBus) -> None:
    mic = await make_bus("mic")
    sup = await make_bus("supervisor", "health.")
    mic.publish("health.mic", Heartbeat(service="mic", pid=1))
    d = await _recv(sup)
    assert d.topic == "health.mic" and isinstance(d.msg, Heartbeat)


async def test_control_is_delivered_before_queued_media(make_bus: MakeBus) -> None:
    mic = await make_bus("mic")
    session = await make_bus("session", topics.AUDIO_MIC, topics.TOOL_RESULT)
    for i in range(20):
        mic.publish(topics.AUDIO_MIC, _frame(i), PCM)
    mic.publish(topics.TOOL_RESULT, ToolResult(call_id="late", name="t", ok=True))
    # let both reader tasks drain their sockets before the first recv()
    deadline = time.monotonic() + 3
    while session.stats.received < 21 and time.monotonic() < deadline:  # noqa: ASYNC110 (stats have no event)
        await asyncio.sleep(0.005)
    first = await _recv(session)
    assert isinstance(first.msg, ToolResult), "control must overtake queued media"
    rest = [await _recv(session) for _ in range(20)]
    assert [d.msg.stream_id for d in rest] == [str(i) for i in range(20)]  # type: ignore[union-attr]


async def test_media_queue_is_bounded_and_drops_oldest(make_bus: MakeBus) -> None:
    mic = await make_bus("mic")
    session = await make_bus("session", topics.AUDIO_MIC, media_queue=10)
    for i in range(50):
        mic.publish(topics.AUDIO_MIC, _frame(i), PCM)
    deadline = time.monotonic() + 3
    while session.stats.received < 50 and time.monotonic() < deadline:  # noqa: ASYNC110 (stats have no event)
        await asyncio.sleep(0.005)
    assert session.stats.received == 50
    assert session.stats.media_dropped == 40
    got = [(await _recv(session)).msg.stream_id for _ in range(10)]  # type: ignore[union-attr]
    assert got == [str(i) for i in range(40, 50)]  # newest kept


async def test_malformed_frames_are_dropped_and_counted(bus_settings: BusSettings) -> None:
    async with Bus(bus_settings, "session") as session:
        session.subscribe(topics.TOOL_CALL)
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.PUB)
        raw.connect(bus_settings.control.publish)
        good = encode_envelope(
            Envelope("x", 1, 0, 0, ToolCall(call_id="ok", name="t", arguments_json="{}"))
        )
        wrong_type = encode_envelope(Envelope("x", 2, 0, 0, UserTranscript(text="not a call")))
        try:
            got = None
            for _ in range(200):  # the raw PUB connects asynchronously
                raw.send_multipart([b"tool.call", b"\x93garbage"])
                raw.send_multipart([b"tool.call"])
                raw.send_multipart([b"tool.call", wrong_type])
                raw.send_multipart([b"tool.call", good])
                try:
                    got = await asyncio.wait_for(session.recv(), 0.02)
                    break
                except TimeoutError:
                    continue
        finally:
            raw.close(linger=0)
        assert got is not None and isinstance(got.msg, ToolCall) and got.msg.call_id == "ok"
        assert session.stats.decode_errors >= 3


async def test_gap_detection(bus_settings: BusSettings) -> None:
    async with Bus(bus_settings, "session") as session:
        session.subscribe(topics.TOOL_CALL)
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.PUB)
        raw.connect(bus_settings.control.publish)
        msg = ToolCall(call_id="c", name="t", arguments_json="{}")
        try:
            for _ in range(200):
                raw.send_multipart([b"tool.call", encode_envelope(Envelope("tools", 1, 0, 0, msg))])
                try:
                    await asyncio.wait_for(session.recv(), 0.02)
                    break
                except TimeoutError:
                    continue
            raw.send_multipart([b"tool.call", encode_envelope(Envelope("g", 1, 0, 0, msg))])
            raw.send_multipart([b"tool.call", encode_envelope(Envelope("g", 5, 0, 0, msg))])
            await _recv(session)
            await _recv(session)
        finally:
            raw.close(linger=0)
        assert session.stats.gaps == 3


async def test_start_fails_clearly_without_proxy(short_tmp) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ipc_bus_settings

    bus = Bus(ipc_bus_settings(str(short_tmp)), "mic")
    with pytest.raises(BusError, match="not reachable"):
        await bus.start(timeout=0.3)


def _missing_ipc_files(settings: BusSettings) -> list[str]:
    return [
        ep
        for plane in (settings.control, settings.media)
        for ep in (plane.publish, plane.subscribe)
        if not os.path.exists(ep.removeprefix("ipc://"))
    ]


async def test_proxy_bind_conflict_is_a_clear_error_and_the_live_bus_survives(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    with pytest.raises(BusError, match="cannot bind"):
        Proxy(bus_settings).start()
    # the refused proxy did not remove the live one's socket files: new clients still connect
    assert _missing_ipc_files(bus_settings) == []
    late = await make_bus("late", topics.TOOL_RESULT)
    sender = await make_bus("tools")
    sender.publish(topics.TOOL_RESULT, ToolResult(call_id="c", name="t", ok=True))
    async with asyncio.timeout(5):
        assert isinstance((await late.recv()).msg, ToolResult)


async def test_control_plane_is_lossless_once_start_returns(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    """A publisher in another OS process sends the moment a new subscriber's start() returns:
    nothing is lost (the subscription is in the proxy's XPUB, and every publisher sends all
    to the proxy, so no publisher has to learn of it first)."""
    n = 50
    async with peer(short_tmp, "session") as session:
        for round_ in range(10):
            tools = Bus(bus_settings, f"tools{round_}")
            tools.subscribe(topics.TOOL_CALL)
            await tools.start()
            try:
                session.send(f"calls {n}")
                got = [await _recv(tools, 5.0) for _ in range(n)]
                assert await session.line() == "ok"
            finally:
                await tools.close()
            assert [d.msg.call_id for d in got] == [str(i) for i in range(n)]  # type: ignore[attr-defined]
            assert tools.stats.gaps == 0


async def test_nothing_published_after_start_returns_is_lost_even_from_a_stalled_publisher(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    """The publisher streams and is stalled (as on a loaded board) while a subscriber comes
    up: every message it publishes after the subscriber's start() returned arrives, although
    it had no chance to take note of the new subscription first."""
    n = 800
    async with peer(short_tmp, "session") as session:
        for round_ in range(2):
            tools = Bus(bus_settings, f"tools{round_}")
            tools.subscribe(topics.TOOL_CALL)
            session.send(f"stream {n}")
            os.kill(session.proc.pid, signal.SIGSTOP)
            try:
                await tools.start()
                started_ns = time.monotonic_ns()
            finally:
                os.kill(session.proc.pid, signal.SIGCONT)
            try:
                got: set[str] = set()
                while str(n - 1) not in got:
                    got.add((await _recv(tools, 10.0)).msg.call_id)  # type: ignore[attr-defined]
                stamps_line = await session.line()
                assert await session.line() == "ok"
            finally:
                await tools.close()
            stamps: dict[str, int] = json.loads(stamps_line.removeprefix("stamps "))
            after = {call_id for call_id, ns in stamps.items() if ns > started_ns}
            assert len(after) > 100, "the stream ended before the subscriber started"
            assert after - got == set(), f"lost {len(after - got)} of {len(after)}"


async def test_a_subscription_after_start_is_lossless_once_sync_returns(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    n = 50
    async with peer(short_tmp, "session") as session:
        for round_ in range(5):
            async with Bus(bus_settings, f"tools{round_}") as tools:
                tools.subscribe(topics.TOOL_CALL if round_ % 2 == 0 else "tool.")
                await tools.sync()
                session.send(f"calls {n}")
                got = [await _recv(tools, 5.0) for _ in range(n)]
                assert await session.line() == "ok"
            assert [d.msg.call_id for d in got] == [str(i) for i in range(n)]  # type: ignore[attr-defined]
