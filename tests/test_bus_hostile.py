"""Hostile input on the real bus: nothing a peer sends kills a reader, floods are counted and
logged once per burst, oversized frames are refused before they are allocated, and a reader
that dies anyway fails recv() instead of leaving the service deaf."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.asyncio

from agent import topics
from agent.bus import Bus, Delivery
from agent.bus_stats import MAX_DROP_KEYS, BurstLog
from agent.config import BusSettings
from agent.errors import BusError
from agent.messages import (
    MAX_BODY_BYTES,
    AudioFrame,
    Envelope,
    Heartbeat,
    ImageInput,
    Message,
    ToolCall,
    UserTranscript,
    encode_envelope,
)
from agent.proxy import MAX_FRAME_BYTES
from tests.bus_peer import peer
from tests.conftest import MakeBus

_enc = msgspec.msgpack.encode
NESTED = b"\x91" * 1000 + b"\xc0"  # [[[...[nil]...]]], 1000 deep, ~1 kB


def _nested_body(sender: str, kind: str, fields: dict[str, object]) -> bytes:
    """A well-formed envelope whose message has one extra field nested 1000 deep (msgspec
    skips unknown fields recursively)."""
    pairs = [("kind", kind), *fields.items()]
    body = b"\x95" + _enc(sender) + _enc(1) + _enc(0) + _enc(0)
    body += bytes([0x80 | (len(pairs) + 1)])
    for key, value in pairs:
        body += _enc(key) + _enc(value)
    return body + _enc("extra") + NESTED


def _body(sender: str, seq: int, msg: Message) -> bytes:
    return encode_envelope(Envelope(sender, seq, 0, 0, msg))  # type: ignore[arg-type]


@pytest.fixture
def raw_pubs(bus_settings: BusSettings) -> Iterator[dict[topics.Plane, zmq.Socket[bytes]]]:
    """Plain PUB sockets on both planes' proxies: a peer that speaks whatever it likes."""
    ctx = zmq.Context.instance()
    socks: dict[topics.Plane, zmq.Socket[bytes]] = {}
    for plane, ep in (
        (topics.Plane.CONTROL, bus_settings.control),
        (topics.Plane.MEDIA, bus_settings.media),
    ):
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep.publish)
        socks[plane] = sock
    yield socks
    for sock in socks.values():
        sock.close(linger=0)


async def _until_delivered(bus: Bus, raw: zmq.Socket[bytes], frames: list[bytes]) -> Delivery:
    """Send ``frames`` from a raw socket until ``bus`` gets a message (the raw socket
    connects asynchronously and has no probe of its own)."""
    for _ in range(250):
        raw.send_multipart(frames)
        try:
            return await asyncio.wait_for(bus.recv(), 0.02)
        except TimeoutError:
            continue
    raise AssertionError("nothing delivered")


CASES = [
    ("health.mic", "health.", Heartbeat(service="mic", pid=7), ("service", "mic"), {"pid": 7}),
    (
        topics.TOOL_CALL,
        topics.TOOL_CALL,
        ToolCall(call_id="c", name="t", arguments_json="{}"),
        ("call_id", "c"),
        {"name": "t", "arguments_json": "{}"},
    ),
    (
        topics.AUDIO_MIC,
        topics.AUDIO_MIC,
        AudioFrame(sample_rate_hz=24000),
        ("sample_rate_hz", 24000),
        {},
    ),
]


@pytest.mark.parametrize(("topic", "prefix", "good", "field", "more"), CASES)
async def test_a_body_nested_1000_deep_is_dropped_and_counted_and_the_next_one_delivered(
    bus_settings: BusSettings,
    raw_pubs: dict[topics.Plane, zmq.Socket[bytes]],
    topic: str,
    prefix: str,
    good: Message,
    field: tuple[str, object],
    more: dict[str, object],
) -> None:
    plane = topics.spec_for(topic).plane
    raw = raw_pubs[plane]
    payload = [b"\0" * 960] if plane is topics.Plane.MEDIA else []
    async with Bus(bus_settings, "victim") as bus:
        bus.subscribe(prefix)
        d = await _until_delivered(bus, raw, [topic.encode(), _body("warm", 1, good), *payload])
        assert d.sender == "warm"
        while bus._control or bus._media:  # noqa: SLF001 (drain the warm-up copies)
            await bus.recv()
        evil = _nested_body("evil", type(good).__name__, dict([field, *more.items()]))
        raw.send_multipart([topic.encode(), evil, *payload])
        raw.send_multipart([topic.encode(), _body("good", 1, good), *payload])
        d = await asyncio.wait_for(bus.recv(), 5)
        assert d.sender == "good" and d.msg == good
        declared = topics.spec_for(topic).name
        assert bus.stats.decode_errors_by == {(declared, "evil"): 1}


async def test_a_64_mb_frame_is_refused_without_ballooning_memory(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    # the proxy and the subscriber run here; the sender in another process
    async with Bus(bus_settings, "tools") as tools, peer(short_tmp, "evil") as evil:
        tools.subscribe(topics.TOOL_CALL)
        for _ in range(250):
            evil.send("raw-call warm")
            try:
                await asyncio.wait_for(tools.recv(), 0.02)
                break
            except TimeoutError:
                continue
        while tools._control:  # noqa: SLF001 (drain the warm-up copies)
            await tools.recv()
        peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        evil.send("raw-big 64")
        got: list[Delivery] = []
        for i in range(500):  # the proxy dropped the sender's connection: it reconnects
            evil.send(f"raw-call after{i}")
            try:
                got.append(await asyncio.wait_for(tools.recv(), 0.02))
                break
            except TimeoutError:
                continue
        peak_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert got, "the bus did not come back after the oversized frame"
        assert all(isinstance(d.msg, ToolCall) and d.msg.call_id != "big" for d in got)
        assert all(not d.payload for d in got)
        assert peak_after_kb - peak_before_kb < 32 * 1024, (peak_before_kb, peak_after_kb)


async def test_a_flood_of_20000_malformed_messages_is_counted_and_logged_a_few_times(
    bus_settings: BusSettings,
    raw_pubs: dict[topics.Plane, zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = raw_pubs[topics.Plane.CONTROL]
    call = ToolCall(call_id="ok", name="t", arguments_json="{}")
    async with Bus(bus_settings, "tools") as tools:
        tools.subscribe(topics.TOOL_CALL)
        await _until_delivered(tools, raw, [b"tool.call", _body("warm", 1, call)])
        while tools._control:  # noqa: SLF001 (drain the warm-up copies)
            await tools.recv()
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="agent.bus")
        bad = [
            [b"tool.call", b"\x93garbage"],
            [b"tool.call"],
            [b"tool.call", _body("liar", 1, UserTranscript(text="not a call"))],
            [
                b"tool.call",
                _nested_body(
                    "deep", "ToolCall", {"call_id": "x", "name": "t", "arguments_json": "{}"}
                ),
            ],
        ]
        for i in range(5000):
            for frames in bad:
                raw.send_multipart(frames)
            # forged senders: the per-sender counts stay bounded
            raw.send_multipart([b"tool.call", _body(f"forged-{i}", 1, UserTranscript(text=""))])
        raw.send_multipart([b"tool.call", _body("good", 1, call)])
        d = await asyncio.wait_for(tools.recv(), 30)
        assert d.sender == "good"
        assert tools.stats.decode_errors == 25_000
        by = tools.stats.decode_errors_by
        assert by[("tool.call", "liar")] == 5000 and by[("tool.call", "deep")] == 5000
        assert by[("tool.call", "?")] == 10_000  # garbage and missing body: sender unknown
        assert len(by) <= MAX_DROP_KEYS + 1 and sum(by.values()) == 25_000
        lines = [r for r in caplog.records if r.name == "agent.bus"]
        assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]


def test_burst_log_logs_the_first_then_one_summary_per_window() -> None:
    burst = BurstLog(window_s=10)
    assert burst.record("a", now=0.0)  # the first of a burst, in full
    assert not any(burst.record("a" if i % 3 else "b", now=0.001 * i) for i in range(1, 3001))
    assert burst.summary(now=5.0) is None  # not before the window ends
    line = burst.summary(now=10.0)
    assert line is not None and line.startswith("3000 more dropped") and "a x2000" in line
    assert burst.summary(now=30.0) is None  # nothing held
    assert not burst.record("a", now=15.0)  # within the window that followed the summary
    assert burst.summary(now=20.0) is not None
    assert burst.record("a", now=40.0)  # after a quiet window: in full again


async def test_a_reader_that_dies_fails_recv_instead_of_hanging(bus_settings: BusSettings) -> None:
    ctx = zmq.asyncio.Context()
    bus = Bus(bus_settings, "victim", context=ctx)
    bus.subscribe(topics.TOOL_CALL)
    await bus.start()
    try:
        waiting = asyncio.create_task(bus.recv())
        await asyncio.sleep(0)  # noqa: ASYNC110 (let recv() park on its wake-up)
        ctx.destroy(linger=0)  # the connection goes away under the bus
        with pytest.raises(BusError, match="reader .* (died|was cancelled)"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(BusError, match="died|cancelled"):
            async for _ in bus:  # what runtime's shutdown listener does
                pass
    finally:
        await bus.close()


async def test_publish_refuses_what_every_receiver_would_drop(make_bus: MakeBus) -> None:
    session = await make_bus("session")
    with pytest.raises(BusError, match="payload frame is over"):
        session.publish(
            topics.INPUT_IMAGE, ImageInput(), bytes(MAX_FRAME_BYTES[topics.Plane.CONTROL] + 1)
        )
    with pytest.raises(BusError, match="body of"):
        session.publish(
            topics.NAVTALK_TRANSCRIPT_USER, UserTranscript(text="x" * (MAX_BODY_BYTES + 1))
        )
    assert session.stats.published == 0
