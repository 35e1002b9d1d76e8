"""The emulator's conformance log on real loopback sockets: each kind of client violation is
logged, counted, written as JSON lines, and with strict_fail closes the socket (1008) and
fails the emulator process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.emulator.brain import RACE_GRACE_S
from agent.emulator.conformance import ViolationKind
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.navtalk.settings import EmulatorSettings

SCRIPT = Script(greeting="", fallback="Sorry?")
TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent


def settings(**kw: Any) -> EmulatorSettings:
    base: dict[str, Any] = {"port": 0, "webrtc": False, "strict_fail": False,
                            "recognizer": "order"}  # fmt: skip
    return EmulatorSettings(**(base | kw))


async def until(ws: Any, kind: str) -> list[dict[str, Any]]:
    """Frames received up to and including the first of type ``kind``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while not seen or seen[-1].get("type") != kind:
            seen.append(json.loads(await ws.recv()))
    return seen


def audio(n_bytes: int = 4800) -> str:
    pcm = bytes(n_bytes)
    return json.dumps({"type": "realtime.input_audio_buffer.append",
                       "data": {"audio": base64.b64encode(pcm).decode()}})  # fmt: skip


TOOLS = json.dumps(
    [
        {
            "type": "function",
            "name": "get_current_time",
            "description": "now",
            "parameters": {"type": "object", "properties": {}, "required": []},
        }
    ]
)
DECLARE = json.dumps({"type": "realtime.input_function_call", "data": {"content": TOOLS}})

CASES: list[tuple[str, list[str], ViolationKind]] = [
    ("unknown type", [json.dumps({"type": "realtime.input_bogus", "data": {}})],
     ViolationKind.UNKNOWN_TYPE),
    ("missing field", [json.dumps({"type": "realtime.input_audio_buffer.append", "data": {}})],
     ViolationKind.BAD_FIELD),
    ("wrong type", [json.dumps({"type": "realtime.input_image",
                                "data": {"content": "data:image/jpeg;base64,AA", "reply": "1"}})],
     ViolationKind.BAD_FIELD),
    ("bad item", [json.dumps({"type": "conversation.item.create",
                              "item": {"type": "message", "role": "user", "content": "hi"}})],
     ViolationKind.BAD_FIELD),
    ("chunk too large", [audio(4800)], ViolationKind.AUDIO_CHUNK_TOO_LARGE),  # 6400 chars
    ("tools twice", [DECLARE, DECLARE], ViolationKind.TOOLS_DECLARED_TWICE),
    ("not json", ["{nope"], ViolationKind.NOT_JSON),
]  # fmt: skip


@pytest.mark.parametrize(("name", "frames", "kind"), CASES, ids=[c[0] for c in CASES])
async def test_each_violation_is_logged_counted_and_written(
    tmp_path: Path, name: str, frames: list[str], kind: ViolationKind
) -> None:
    log = tmp_path / "conformance.jsonl"
    async with Emulator(settings(conformance_log_path=str(log)), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "realtime.session.updated")
            for frame in frames:
                await ws.send(frame)
            (violation,) = await emu.wait_violations(1, TIMEOUT)
            assert violation.kind is kind, violation
            assert emu.sessions[0].violations == [violation]
            assert not emu.failed  # strict_fail is off here
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [line["kind"] for line in lines] == [kind.value]
        assert lines[0]["session"] == 1 and lines[0]["detail"] == violation.detail


async def test_conforming_client_leaves_the_log_empty() -> None:
    async with Emulator(settings(strict_fail=True), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await ws.send(DECLARE)  # on open, as the SDK does
            await until(ws, "realtime.session.updated")
            for _ in range(3):
                await ws.send(audio(3000))  # 4000 base64 chars
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hello"}]}}))  # fmt: skip
            await ws.send(json.dumps({"type": "response.create"}))
            seen = await until(ws, "realtime.response.audio.done")
            assert any(f["type"] == "realtime.response.audio_transcript.done" for f in seen)
        assert emu.violations == [] and not emu.failed
        assert emu.sessions[0].stats.received["realtime.input_audio_buffer.append"] == 3


async def test_audio_before_session_updated() -> None:
    async with Emulator(settings(), script=SCRIPT, updated_delay_s=30.0) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "realtime.session.created")
            await ws.send(audio(3000))
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.AUDIO_BEFORE_UPDATED


async def test_item_before_session_created() -> None:
    async with Emulator(settings(), script=SCRIPT, created_delay_s=30.0) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "conversation.connected.success")
            await ws.send(DECLARE)  # allowed at once, as the SDK does
            item = {"type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "hello"}]}  # fmt: skip
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.ITEM_BEFORE_CREATED


async def test_client_offer_while_the_server_offer_is_unanswered() -> None:
    async with Emulator(settings(webrtc=True), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "webrtc.signaling.offer")
            offer = {"type": "webrtc.signaling.offer",
                     "data": {"sdp": {"type": "offer", "sdp": "v=0\r\n"}}}  # fmt: skip
            await ws.send(json.dumps(offer))
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.CLIENT_OFFER_WHILE_OFFER_PENDING


async def test_binary_frame() -> None:
    async with Emulator(settings(), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "realtime.session.updated")
            await ws.send(b"\x00\x01")
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.BINARY_FRAME


async def test_unanswered_server_offer() -> None:
    async with Emulator(settings(webrtc=True, offer_deadline_s=0.5), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            seen = await until(ws, "webrtc.signaling.offer")
            assert seen[0]["type"] == "conversation.connected.success"
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.OFFER_UNANSWERED
            assert emu.sessions[0].offers_sent_mono


async def test_response_create_while_active_gets_an_error_event() -> None:
    script = Script(greeting="Welcome to the emulated hotel, we are glad to see you.")
    async with Emulator(settings(), script=script) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "realtime.response.audio_transcript.delta")  # greeting under way
            seen_at = time.monotonic()
            async with asyncio.timeout(TIMEOUT):  # the greeting's frames for over RACE_GRACE_S:
                while time.monotonic() - seen_at <= RACE_GRACE_S:  # no race, a violation
                    assert json.loads(await ws.recv())["type"] != "realtime.response.audio.done"
            await ws.send(json.dumps({"type": "response.create"}))
            seen = await until(ws, "realtime.error")
            error = seen[-1]
            assert error["data"]["type"] == "invalid_request_error"
            assert error["data"]["code"] == "conversation_already_has_active_response"
            assert error["raw_data"]["type"] == "error"
            (v,) = await emu.wait_violations(1, TIMEOUT)
            assert v.kind is ViolationKind.RESPONSE_WHILE_ACTIVE


async def test_strict_fail_closes_the_socket_with_an_error() -> None:
    async with Emulator(settings(strict_fail=True), script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            await until(ws, "realtime.session.updated")
            await ws.send(DECLARE)
            await ws.send(DECLARE)
            seen = await until(ws, "realtime.error")
            assert seen[-1]["data"]["code"] == "conformance_violation"
            assert "tools_declared_twice" in seen[-1]["data"]["message"]
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1008
        assert emu.failed and len(emu.violations) == 1


def test_strict_emulator_process_exits_non_zero_after_a_violation(tmp_path: Path) -> None:
    log = tmp_path / "c.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "emulator", "--port", "0", "--no-webrtc", "--strict",
         "--recognizer", "order", "--conformance-log", str(log)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "NavTalk emulator on ws://" in line, line
        url = line.split(" on ", 1)[1].split("?", 1)[0]

        async def violate() -> None:
            async with connect(f"{url}?license=abc&name=Leo") as ws:
                await until(ws, "realtime.session.updated")
                await ws.send(json.dumps({"type": "realtime.nonsense"}))
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        while True:
                            await ws.recv()

        asyncio.run(violate())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 1
        assert json.loads(log.read_text())["kind"] == "unknown_type"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_a_missing_script_and_a_bad_port(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    missing = subprocess.run(
        [sys.executable, "-m", "agent", "emulator", "--port", "0",
         "--script", str(tmp_path / "none.toml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "none.toml" in missing.stderr
    port = subprocess.run(
        [sys.executable, "-m", "agent", "emulator", "--port", "70000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert port.returncode == 2 and "from 0 to 65535" in port.stderr
