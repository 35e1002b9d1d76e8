"""Console commands as an operator runs them (subprocesses) against a real bus: say,
session, tools list (the real tools service), topics, tap --json, and the same through
the CurveZMQ gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, Settings, default_settings
from agent.keys import generate
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    SessionControl,
    SessionPhase,
    SessionState,
    TextInput,
    ToolCall,
    ToolResult,
    UserTranscript,
)
from agent.remote import Gateway
from agent.remote_settings import RemoteSettings
from agent.tools.settings import ToolsSettings
from services import tools as tools_service
from tests.conftest import MakeBus, free_port
from tests.supervisor_helpers import ROOT, bus_toml


async def cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config(path: Path, bus: BusSettings, extra: str = "") -> str:
    path.write_text(bus_toml(bus) + extra)
    return str(path)


async def answer_like_a_session(bus: Bus) -> None:
    """A peer on the bus standing in for the session's replies (the session itself is
    covered by its own e2e tests): text in -> transcripts out; control -> state."""
    async for d in bus:
        if isinstance(d.msg, TextInput):
            bus.publish(topics.NAVTALK_TRANSCRIPT_USER, UserTranscript(text=d.msg.text))
            reply = AssistantTranscript(
                response_id="r1", text=f"You said: {d.msg.text}", final=True
            )
            bus.publish(topics.NAVTALK_TRANSCRIPT_ASSISTANT, reply)
        elif isinstance(d.msg, SessionControl):
            for phase in (
                (SessionPhase.CONNECTING, SessionPhase.READY)
                if d.msg.action == "start"
                else (SessionPhase.IDLE,)
            ):
                bus.publish(topics.SESSION_STATE, SessionState(phase=phase, detail="console"))


@contextlib.asynccontextmanager
async def session_peer(make_bus: MakeBus) -> AsyncIterator[None]:
    bus = await make_bus("session", topics.INPUT_TEXT, topics.CONTROL_SESSION)
    task = asyncio.create_task(answer_like_a_session(bus))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_say_publishes_text_input_and_prints_the_reply(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    listener = await make_bus("display", topics.INPUT_TEXT)
    async with session_peer(make_bus):
        code, out, err = await cli("say", "Is breakfast included?", "--wait", "10", "-c", cfg)
    assert code == 0, err
    assert out.splitlines() == [
        "guest: Is breakfast included?",
        "avatar: You said: Is breakfast included?",
    ]
    async with asyncio.timeout(5):
        d = await listener.recv()
    assert d.msg == TextInput(text="Is breakfast included?") and d.sender == "console"
    code, _, err = await cli("say", "quiet", "--no-reply", "-c", cfg)
    assert code == 0, err
    async with asyncio.timeout(5):
        d = await listener.recv()
    assert d.msg == TextInput(text="quiet", reply=False)


async def test_session_start_and_end_wait_for_the_phase(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    async with session_peer(make_bus):
        code, out, err = await cli("session", "start", "--wait", "10", "-c", cfg)
        assert code == 0, err
        assert out.splitlines()[-1] == "session: ready (console)"
        code, out, err = await cli("session", "end", "--wait", "10", "-c", cfg)
        assert code == 0, err
        assert out.splitlines()[-1] == "session: idle (console)"
    code, out, _ = await cli("session", "start", "--wait", "1", "-c", cfg)
    assert code == 1 and "not ready within" in out  # nobody answers: says so, exit 1


async def test_tools_list_from_the_real_tools_service(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        tools=ToolsSettings(entry_points=False, disabled_builtins=["take_photo"]),
    )
    service = asyncio.create_task(tools_service.run(settings, Bus(bus_settings, "tools")))
    try:
        code, out, err = await cli("tools", "list", "--json", "-c", cfg)
        assert code == 0, err
        tools = {t["name"]: t for t in json.loads(out)}
        assert "get_current_time" in tools and "take_photo" not in tools
        assert tools["set_volume"]["parameters"]["type"] == "object"
        code, out, err = await cli("tools", "list", "-c", cfg)
        assert code == 0 and any(x.startswith("set_volume ") for x in out.splitlines()), err
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
    code, out, _ = await cli("tools", "list", "--wait", "1", "-c", cfg)
    assert code == 1 and "no tool.catalog" in out


async def publish_while(proc_done: asyncio.Future[object], bus: Bus, every_s: float) -> int:
    n = 0
    while not proc_done.done():
        bus.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), bytes(960))
        bus.publish(topics.INPUT_TEXT, TextInput(text="y" * 300))
        n += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):  # the traffic's own pace
                await asyncio.shield(proc_done)
    return n


async def test_topics_lists_rates_and_sizes(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    bus = await make_bus("mic")
    run = asyncio.ensure_future(cli("topics", "--window", "2", "--json", "-c", cfg))
    await publish_while(run, bus, 0.02)
    code, out, err = run.result()
    assert code == 0, err
    rows = {r["topic"]: r for r in json.loads(out)}
    mic = rows["audio.mic"]
    assert mic["senders"] == ["mic"] and mic["max_bytes"] > 960
    assert 10 < mic["rate_hz"] < 60, mic  # ~50 Hz offered; a loaded machine publishes less
    assert rows["input.text"]["avg_bytes"] > 300
    assert not [t for t in rows if t.startswith("_")], "bus-internal topics are not listed"


async def test_tap_json_prints_complete_values(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    bus = await make_bus("mic")
    run = asyncio.ensure_future(cli("tap", "input.", "--json", "--count", "1", "-c", cfg))
    await publish_while(run, bus, 0.02)
    code, out, err = run.result()
    assert code == 0, err
    (line,) = out.splitlines()
    assert json.loads(line)["msg"]["text"] == "y" * 300


async def test_console_through_the_gateway_with_keys(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    keys = short_tmp / "keys"
    generate(keys, "server")
    generate(short_tmp / "me", "op")
    for role in ("readers", "writers"):
        (keys / role).mkdir()
        shutil.copy(short_tmp / "me" / "op.key", keys / role)
    read_port, command_port = free_port(), free_port()
    remote = RemoteSettings(keys_dir=str(keys), read_port=read_port, command_port=command_port)
    gw = Gateway(Settings(bus=bus_settings, remote=remote))
    task = asyncio.create_task(gw.run())
    # the operator's machine knows only the gateway: a profile with its ports, no bus
    cfg = short_tmp / "op.toml"
    cfg.write_text(f"[remote]\nread_port = {read_port}\ncommand_port = {command_port}\n")
    key_args: Sequence[str] = (
        "--remote", "127.0.0.1", "--key", str(short_tmp / "me" / "op.key_secret"),
        "--server-key", str(keys / "server.key"), "-c", str(cfg),
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            await gw.ready.wait()
        async with session_peer(make_bus):
            code, out, err = await cli("say", "Hello from afar", "--wait", "10", *key_args)
            assert code == 0, err
            assert out.splitlines()[-1] == "avatar: You said: Hello from afar"
            code, out, err = await cli("session", "start", "--wait", "10", *key_args)
            assert code == 0 and out.splitlines()[-1] == "session: ready (console)", err
        assert gw.stats.commands == 2
        wrong = list(key_args)
        wrong[wrong.index("--key") + 1] = str(keys / "server.key_secret")  # not a client key
        code, out, err = await cli("say", "nope", *wrong)
        assert code == 1 and "no answer from the gateway" in err
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_console_mode_types_as_the_guest_and_shows_replies_and_tool_calls(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = config(short_tmp / "c.toml", bus_settings)
    tools_bus = await make_bus("tools", topics.INPUT_TEXT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "console", "-c", cfg, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    async def until(prefix: str) -> str:
        async with asyncio.timeout(15):
            while True:
                line = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
                assert line, "console ended early"
                if line.startswith(prefix):
                    return line.rstrip("\n")

    try:
        assert "type as the guest" in await until("--")
        async with session_peer(make_bus):
            proc.stdin.write(b"What time is it?\n")
            await proc.stdin.drain()
            assert await until("avatar:") == "avatar: You said: What time is it?"
            call = ToolCall(call_id="c1", name="get_current_time", arguments_json="{}")
            tools_bus.publish(topics.TOOL_CALL, call)
            result = ToolResult(call_id="c1", name="get_current_time", ok=True, output_json='"9"')
            tools_bus.publish(topics.TOOL_RESULT, result)
            assert (await until("  tool call")).endswith("get_current_time({})")
            assert (await until("  tool result")).endswith('get_current_time: "9"')
            proc.stdin.write(b"/start\n")
            await proc.stdin.drain()
            assert await until("  [session ready") == "  [session ready: console]"
        proc.stdin.write(b"/quit\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
