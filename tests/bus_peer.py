"""A bus client in its own OS process, driven line by line over stdin (for the bus tests).

``python -m tests.bus_peer IPC_DIR SENDER`` connects to the proxy of
``tests.conftest.ipc_bus_settings(IPC_DIR)``, prints ``ready``, then runs one command per
stdin line and answers each with ``ok`` (or ``error ...``) on stdout:

- ``offer SDP LATCH``: an SdpMessage on webrtc.remote.offer (``LATCH`` 0 = not latched)
- ``ice CANDIDATE LATCH``: an IceCandidate on webrtc.remote.ice
- ``unlatch TOPIC``
- ``calls N``: N ToolCalls on tool.call (call_id "0".."N-1"), all at once
- ``stream N``: the same, one every ~0.5 ms, then ``stamps {call_id: monotonic ns}``
- ``raw-call ID``: a ToolCall from a raw PUB socket (no Bus, no start(): may be lost while
  that socket connects, or reconnects after the proxy refused it)
- ``raw-big MB``: a ToolCall with an MB-megabyte payload frame, from the raw socket
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import zmq

from agent import topics
from agent.bus import Bus
from agent.messages import Envelope, IceCandidate, SdpMessage, ToolCall, encode_envelope
from tests.conftest import ipc_bus_settings

ROOT = Path(__file__).resolve().parent.parent


def _raw_call(call_id: str) -> bytes:
    return encode_envelope(
        Envelope("raw", 1, 0, 0, ToolCall(call_id=call_id, name="t", arguments_json="{}"))
    )


def _run(bus: Bus, raw: zmq.Socket[bytes], words: list[str]) -> None:
    op, args = words[0], words[1:]
    if op == "raw-call":
        raw.send_multipart([topics.TOOL_CALL.encode(), _raw_call(args[0])])
    elif op == "raw-big":
        big = bytes(int(args[0]) * 1024 * 1024)
        raw.send_multipart([topics.TOOL_CALL.encode(), _raw_call("big"), big])
    elif op == "offer":
        bus.publish(
            topics.WEBRTC_REMOTE_OFFER,
            SdpMessage(sdp_type="offer", sdp=args[0]),
            latch=int(args[1]),
        )
    elif op == "ice":
        bus.publish(topics.WEBRTC_REMOTE_ICE, IceCandidate(candidate=args[0]), latch=int(args[1]))
    elif op == "unlatch":
        bus.unlatch(args[0])
    elif op == "calls":
        for i in range(int(args[0])):
            sent = bus.publish(
                topics.TOOL_CALL, ToolCall(call_id=str(i), name="t", arguments_json="{}")
            )
            if not sent:
                raise RuntimeError(f"call {i} refused at the high-water mark")
    else:
        raise ValueError(f"unknown command {op!r}")


@contextlib.asynccontextmanager
async def peer(directory: Path, sender: str) -> AsyncIterator[Peer]:
    """A Bus in another OS process (tests/bus_peer.py), driven over its stdin."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bus_peer",
        str(directory),
        sender,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    p = Peer(proc)
    try:
        assert await p.line() == "ready"
        yield p
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class Peer:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        return raw.decode().strip()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def do(self, command: str) -> None:
        self.send(command)
        assert await self.line() == "ok"


async def _stream(bus: Bus, n: int) -> None:
    """N ToolCalls, one every ~0.5 ms; then a line ``stamps {call_id: ns}``: CLOCK_MONOTONIC
    just before each publish (so ``stamp > t`` means "published after t")."""
    stamps: dict[str, int] = {}
    for i in range(n):
        stamps[str(i)] = time.monotonic_ns()
        if not bus.publish(
            topics.TOOL_CALL, ToolCall(call_id=str(i), name="t", arguments_json="{}")
        ):
            raise RuntimeError(f"call {i} refused at the high-water mark")
        await asyncio.sleep(0.0005)
    print(f"stamps {json.dumps(stamps)}", flush=True)


async def main(directory: str, sender: str) -> None:
    loop = asyncio.get_running_loop()
    settings = ipc_bus_settings(directory)
    raw = zmq.Context.instance().socket(zmq.PUB)
    raw.setsockopt(zmq.SNDHWM, 0)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(settings.control.publish)
    async with Bus(settings, sender) as bus:
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                words = line.split()
                if words[0] == "stream":
                    await _stream(bus, int(words[1]))
                else:
                    _run(bus, raw, words)
            except Exception as exc:  # report to the test, keep serving
                print(f"error {exc!r}", flush=True)
            else:
                print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
