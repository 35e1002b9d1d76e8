"""Record and replay in MCAP on the real bus: what replay publishes, recorded again, is the
same messages and payloads, in the same order, with the same timing (within 5 ms)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from mcap.reader import make_reader

from agent import topics
from agent.apps.console import Link
from agent.apps.recording import FORMAT, Entry, read_recording, record, record_prefixes
from agent.config import BusSettings, Settings
from agent.messages import AudioFrame, Message, OtherEvent, TextInput, ToolCall
from tests.conftest import MakeBus
from tests.supervisor_helpers import ROOT, bus_toml

LICENSE = "LIC-record-secret-987654"
TIMING_TOLERANCE_NS = 5_000_000


def script(rng: random.Random) -> list[tuple[float, str, Message, list[bytes]]]:
    """(delay before, topic, message, payload): a conversation's mix, values long and short."""
    out: list[tuple[float, str, Message, list[bytes]]] = []
    for i in range(60):
        delay = rng.choice([0.0, 0.002, 0.01, 0.02, 0.04])
        if i % 3 == 0:
            pcm = rng.randbytes(960)
            out.append((delay, topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), [pcm]))
        elif i % 3 == 1:
            long_text = "x" * 500 + f" {i}"
            out.append((delay, topics.INPUT_TEXT, TextInput(text=long_text), []))
        else:
            call = ToolCall(call_id=f"c{i}", name="t", arguments_json=json.dumps({"i": i}))
            out.append((delay, topics.TOOL_CALL, call, []))
    secret = OtherEvent(type="x", data_json=f'{{"url": "wss://h/?license={LICENSE}&a=1"}}')
    out.append((0.01, topics.NAVTALK_OTHER, secret, []))
    return out


def by_plane(entries: list[Entry]) -> dict[topics.Plane, list[Entry]]:
    out: dict[topics.Plane, list[Entry]] = {p: [] for p in topics.Plane}
    for e in entries:
        out[topics.spec_for(e.topic).plane].append(e)
    return out


async def start_recording(
    settings: Settings, path: Path, count: int
) -> tuple[asyncio.Task[int], Link]:
    prefixes = record_prefixes([], media=True)
    link = Link(settings, prefixes, None)
    await link.__aenter__()  # subscribed once this returns (the bus's probes came back)
    task = asyncio.create_task(record(link, path, prefixes, media=True, count=count))
    return task, link


async def replay_and_compare(
    settings: Settings,
    bus_settings: BusSettings,
    short_tmp: Path,
    first: Path,
    second: Path,
    steps: list[tuple[float, str, Message, list[bytes]]],
) -> list[int]:
    """Replay ``first`` (`navtalk-agent replay`, its own process, as it is used) while
    recording ``second``; check messages, payloads and order; the sorted timing skews."""
    task, link = await start_recording(settings, second, len(steps))
    cfg = short_tmp / "bus.toml"
    cfg.write_text(bus_toml(bus_settings))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "replay", str(first), "--config", str(cfg),
        cwd=ROOT, env={**os.environ, "NAVTALK_LICENSE": LICENSE},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out + err).decode()
    async with asyncio.timeout(10):
        await task
    await link.__aexit__()

    a, b = list(read_recording(first)), list(read_recording(second))
    assert len(a) == len(b) == len(steps)
    others = [e.record.msg for e in a + b if isinstance(e.record.msg, OtherEvent)]
    assert len(others) == 2
    assert all(LICENSE not in o.data_json and "license=***" in o.data_json for o in others)
    sent: dict[topics.Plane, list[tuple[str, Message, list[bytes]]]] = {p: [] for p in topics.Plane}
    for _, topic, msg, payload in steps:
        sent[topics.spec_for(topic).plane].append((topic, msg, payload))
    for plane, originals in sent.items():
        pa, pb = by_plane(a)[plane], by_plane(b)[plane]
        assert [(e.topic, e.record.payload) for e in pa] == [(t, p) for t, _, p in originals]
        assert [(e.topic, e.record.msg, e.record.payload) for e in pb] == [
            (e.topic, e.record.msg, e.record.payload) for e in pa
        ], f"{plane}: replayed messages differ"
        assert all(e.record.sender == "replay" for e in pb)
    # timing: when replay published each message (its envelope's mono_ns, recorded in the
    # second file) against when the original was received (log_time in the first), paired
    # within a plane (across planes the receive order may differ), less the one constant
    # shift that is the replay's start and the two clocks' offset
    pairs = [
        (ea.log_time_ns, eb.record.mono_ns)
        for plane in topics.Plane
        for ea, eb in zip(by_plane(a)[plane], by_plane(b)[plane], strict=True)
    ]
    shifts = sorted(tb - ta for ta, tb in pairs)
    shift = shifts[len(shifts) // 2]
    return sorted(abs(tb - ta - shift) for ta, tb in pairs)


async def test_record_replay_roundtrip(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAVTALK_LICENSE", LICENSE)
    settings = Settings(bus=bus_settings)
    steps = script(random.Random(7))
    first = short_tmp / "first.mcap"

    task, link = await start_recording(settings, first, len(steps))
    pub = await make_bus("session")
    for delay, topic, msg, payload in steps:
        if delay:
            await asyncio.sleep(delay)  # the traffic's own timing, not synchronisation
        assert pub.publish(topic, msg, *payload)
    async with asyncio.timeout(10):
        await task
    await link.__aexit__()

    a = list(read_recording(first))
    assert len(a) == len(steps)
    # Replay into a second recording and compare. The machine is shared: a process can be
    # stalled for 100+ ms (cgroup CPU throttling), which no replay survives; so up to three
    # replays, each compared in full, and the timing must hold in one of them entirely.
    worst: list[list[float]] = []
    for attempt in range(3):
        second = short_tmp / f"second-{attempt}.mcap"
        skew = await replay_and_compare(settings, bus_settings, short_tmp, first, second, steps)
        worst.append([round(x / 1e6, 1) for x in skew[-3:]])
        if skew[-1] <= TIMING_TOLERANCE_NS:
            break
    else:
        raise AssertionError(f"replay timing off by more than 5 ms in 3 runs: worst {worst}")
    # the long text is complete, not cut
    texts = [e.record.msg for e in a if isinstance(e.record.msg, TextInput)]
    assert texts and all(len(t.text) > 500 for t in texts)


def test_file_is_foxglove_ready(short_tmp: Path) -> None:
    """MCAP with json messages and a jsonschema per message class, and our metadata."""
    from agent.apps.recording import McapBusWriter
    from agent.bus import Delivery

    path = short_tmp / "f.mcap"
    with open(path, "wb") as f:
        w = McapBusWriter(f, prefixes=["audio."], media=True)
        frame = AudioFrame(sample_rate_hz=24000, capture_mono_ns=5)
        w.add(Delivery("audio.mic", "mic", 3, 10, 20, frame, [b"\x00\x01"]), 1_000)
        w.finish()
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        (channel,) = summary.channels.values()
        schema = summary.schemas[channel.schema_id]
        assert (channel.topic, channel.message_encoding) == ("audio.mic", "json")
        assert (schema.name, schema.encoding) == ("navtalk_agent.AudioFrame", "jsonschema")
        js = json.loads(schema.data)
        assert js["properties"]["msg"]["properties"]["sample_rate_hz"]["type"] == "integer"
        assert "$ref" not in schema.data.decode()
        (_, _, message), *_ = list(reader.iter_messages())
        body = json.loads(message.data)
        assert body["msg"]["kind"] == "AudioFrame" and body["payload"] == ["AAE="]
        assert (message.log_time, message.publish_time, message.sequence) == (1_000, 20, 3)
        (meta,) = list(reader.iter_metadata())
        assert meta.name == "navtalk_agent" and meta.metadata["format"] == FORMAT


async def test_record_and_replay_commands(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = short_tmp / "bus.toml"
    cfg.write_text(bus_toml(bus_settings))
    path = short_tmp / "cli.mcap"
    rec = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "record", str(path), "input.", "--count", "3",
        "--config", str(cfg), cwd=ROOT, env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    pub = await make_bus("session")
    for i in range(500):  # until the recorder has joined and taken three
        pub.publish(topics.INPUT_TEXT, TextInput(text=f"t{i}"))
        pub.publish(topics.TOOL_CALL, ToolCall(call_id="c", name="t", arguments_json="{}"))
        try:
            async with asyncio.timeout(0.02):
                await asyncio.shield(rec.wait())
            break
        except TimeoutError:
            continue
    _, err = await asyncio.wait_for(rec.communicate(), 10)
    assert rec.returncode == 0, err.decode()
    entries = list(read_recording(path))
    assert [e.topic for e in entries] == ["input.text"] * 3
    first = int(entries[0].record.msg.text[1:])  # type: ignore[attr-defined]
    assert [e.record.msg.text for e in entries] == [f"t{first + i}" for i in range(3)]  # type: ignore[attr-defined]

    listener = await make_bus("session", topics.INPUT_TEXT)
    r = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "replay", str(path), "--speed", "4",
        "--config", str(cfg), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(r.communicate(), 20)
    assert r.returncode == 0, err.decode()
    assert b"3 message(s) replayed" in out
    got = []
    async with asyncio.timeout(5):
        while len(got) < 3:
            got.append((await listener.recv()).msg)
    assert got == [e.record.msg for e in entries]


def test_replay_refuses_a_foreign_file(short_tmp: Path) -> None:
    from agent.errors import ConfigError

    bad = short_tmp / "bad.mcap"
    bad.write_bytes(b"not an mcap file at all")
    with pytest.raises(ConfigError):
        list(read_recording(bad))
