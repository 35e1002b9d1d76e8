"""`navtalk-agent tap` against the real proxy: readable lines, sizes not bytes, gaps, no license."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from agent import topics
from agent.apps.tap import TapPrinter
from agent.bus import Bus
from agent.config import BusSettings
from agent.messages import AudioFrame, Envelope, OtherEvent, ToolCall, encode_envelope
from tests.supervisor_helpers import ROOT, bus_toml

LICENSE = "LIC-tap-secret-123456"


def test_printer_lines_gaps_and_redaction(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NAVTALK_LICENSE", LICENSE)
    p = TapPrinter()
    audio = AudioFrame(sample_rate_hz=24000, capture_mono_ns=5)
    line = p.line(
        [b"audio.mic", encode_envelope(Envelope("mic", 1, 0, 0, audio)), b"\x01" * 960], 0
    )
    assert "audio.mic" in line and "payload=960 B" in line and "\\x01" not in line
    other = OtherEvent(type="x", data_json=f'{{"url": "wss://h/?license={LICENSE}&name=a"}}')
    line = p.line([b"navtalk.other", encode_envelope(Envelope("session", 1, 0, 0, other))], 0)
    assert LICENSE not in line and "license=***" in line
    line = p.line([b"audio.mic", encode_envelope(Envelope("mic", 4, 0, 0, audio)), b""], 0)
    assert "GAP(2 lost)" in line and p.gaps == 2
    assert "undecodable" in p.line([b"tool.call", b"\xc1"], 0)


async def test_tap_command_json(bus_settings: BusSettings, short_tmp: Path) -> None:
    cfg = short_tmp / "tap.toml"
    cfg.write_text(bus_toml(bus_settings))
    env = {**os.environ, "NAVTALK_LICENSE": LICENSE}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "tap", "tool.", "audio.", "--json", "--count", "3",
        "--config", str(cfg), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with Bus(bus_settings, "session") as bus:
        # the tap joins asynchronously: publish until it has printed three lines
        for i in range(400):
            bus.publish(topics.TOOL_CALL, ToolCall(call_id=f"c{i}", name="t", arguments_json="{}"))
            bus.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), bytes(960))
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.02)
                break
            except TimeoutError:
                continue
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert len(lines) == 3
    kinds = {x["kind"] for x in lines}
    assert kinds <= {"ToolCall", "AudioFrame"}
    for x in lines:
        if x["kind"] == "AudioFrame":
            assert x["payload_bytes"] == [960]
        assert x["sender"] == "session"
