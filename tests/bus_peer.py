"""A bus client in its own OS process, driven line by line over stdin (for the bus tests).

``python -m tests.bus_peer IPC_DIR SENDER`` connects to the proxy of
``tests.conftest.ipc_bus_settings(IPC_DIR)``, prints ``ready``, then runs one command per
stdin line and answers each with ``ok`` (or ``error ...``) on stdout:

- ``offer SDP LATCH``: an SdpMessage on webrtc.remote.offer (``LATCH`` 0 = not latched)
- ``ice CANDIDATE LATCH``: an IceCandidate on webrtc.remote.ice
- ``unlatch TOPIC``
- ``calls N``: N ToolCalls on tool.call (call_id "0".."N-1"), all at once
"""

from __future__ import annotations

import asyncio
import sys

from agent import topics
from agent.bus import Bus
from agent.messages import IceCandidate, SdpMessage, ToolCall
from tests.conftest import ipc_bus_settings


def _run(bus: Bus, words: list[str]) -> None:
    op, args = words[0], words[1:]
    if op == "offer":
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


async def main(directory: str, sender: str) -> None:
    loop = asyncio.get_running_loop()
    async with Bus(ipc_bus_settings(directory), sender) as bus:
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                _run(bus, line.split())
            except Exception as exc:  # report to the test, keep serving
                print(f"error {exc!r}", flush=True)
            else:
                print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
