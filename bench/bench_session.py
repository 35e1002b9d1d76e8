"""Session benchmark: a mic frame published on the bus -> its audio append received by the emulator.

Three processes on one board, as in production: this one (the bus proxy, a
mic publisher and the emulator), and the session service in its own process.
Each 20 ms frame (960 bytes, 24 kHz mono PCM16) carries its index in its first
8 bytes; the emulator's observer decodes each append and takes CLOCK_MONOTONIC
at receipt; latency = receipt - publish. The path measured is: bus PUB ->
proxy -> session SUB -> protocol core (base64 + JSON) -> WebSocket over
loopback -> emulator.

Goal (issue #3): p99 <= 5 ms added by the session.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from agent import topics
from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings, default_settings
from agent.emulator.script import Script
from agent.emulator.server import Emulator, SessionRecord
from agent.messages import AudioFrame, SessionPhase, SessionState
from agent.navtalk.settings import EmulatorSettings, NavTalkSettings, SessionSettings
from bench.common import percentiles, save, table

FRAME_BYTES = 960  # 20 ms at 24 kHz mono PCM16
LICENSE = "bench-license"
ROOT = Path(__file__).resolve().parent.parent


def _child(settings_json: str) -> None:
    """The session service, alone in this process."""
    from services import session

    settings = msgspec.json.decode(settings_json, type=Settings)

    async def main() -> None:
        bus = Bus(settings.bus, "session")
        await session.run(settings, bus, license=LICENSE)

    asyncio.run(main())


async def bench(seconds: float) -> dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="nt-bench-")
    bus_settings = BusSettings(
        control=ControlPlane(publish=f"ipc://{tmp}/c-in", subscribe=f"ipc://{tmp}/c-out",
                               hwm=100_000),
        media=MediaPlane(publish=f"ipc://{tmp}/m-in", subscribe=f"ipc://{tmp}/m-out", hwm=100),
    )  # fmt: skip
    arrivals: dict[int, int] = {}
    n = int(seconds / 0.020)
    all_in = asyncio.Event()

    def observe(record: SessionRecord, kind: str, now_ns: int, text: str) -> None:
        if kind == "realtime.input_audio_buffer.append":
            pcm = base64.b64decode(json.loads(text)["data"]["audio"])
            arrivals[struct.unpack_from("<Q", pcm)[0]] = now_ns
            if len(arrivals) >= n:
                all_in.set()

    script = Script(greeting="", fallback="")
    emu = Emulator(EmulatorSettings(port=0, webrtc=False), script=script, observer=observe)
    proxy = Proxy(bus_settings)
    proxy.start()
    child: asyncio.subprocess.Process | None = None
    try:
        await emu.start()
        settings = msgspec.structs.replace(
            default_settings(),
            bus=bus_settings,
            navtalk=NavTalkSettings(url=emu.base_url, name="navtalk.Leo"),
            session=SessionSettings(
                history_enabled=False, catalog_wait_ms=0, preroll_ms=0, declare_tools=False
            ),
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_session", "--child",
            msgspec.json.encode(settings).decode(),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        async with Bus(bus_settings, "mic") as mic:
            mic.subscribe(topics.SESSION_STATE)
            await mic.start()
            async with asyncio.timeout(30):
                async for d in mic:
                    if isinstance(d.msg, SessionState) and d.msg.phase is SessionPhase.READY:
                        break
            published: dict[int, int] = {}
            start = time.monotonic()
            for i in range(n):
                delay = start + i * 0.020 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # a real mic's pace
                pcm = struct.pack("<Q", i) + bytes(FRAME_BYTES - 8)
                t = time.monotonic_ns()
                mic.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000, capture_mono_ns=t),
                            pcm)  # fmt: skip
                published[i] = t
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 5.0)
    finally:
        if child is not None:
            child.terminate()
            await asyncio.wait_for(child.wait(), 10)
        await emu.close()
        proxy.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lat = [(arrivals[i] - published[i]) / 1e6 for i in sorted(arrivals) if i in published]
    stats = percentiles(lat)
    return {"frames_published": n, "frames_received": len(arrivals), **stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio to stream")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return 0
    result = asyncio.run(bench(args.seconds))
    row = {"path": "audio.mic publish -> emulator receives append", **result}
    print(
        table(
            "session: mic frame -> NavTalk audio append (ms)",
            [row],
            ["path", "frames_published", "frames_received", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
        )
    )
    goal = 5.0
    p99 = float(result.get("p99_ms", float("inf")))  # type: ignore[arg-type]
    print(f"goal p99 <= {goal} ms: {'met' if p99 <= goal else 'NOT met'}")
    path = save("session", {"results": [row], "goal_p99_ms": goal, "goal_met": p99 <= goal})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
