"""Remote tap benchmark: reading the bus over CurveZMQ (the gateway) vs plain tcp:// vs ipc://.

Three ways a tap reads the same publisher:

- ``ipc``: the tap's SUB on the local proxy's ipc:// subscribe endpoints (on the board);
- ``tcp``: the bus proxy bound on tcp:// instead, no encryption (what the README used to
  suggest for remote taps: anyone who reaches the port reads everything);
- ``curve``: the local ipc:// proxy plus the remote gateway (agent.remote), the tap
  authenticated with its CURVE key (media forwarded: ``[remote] media = ["audio.mic"]``).

Two runs on each:

- throughput: ``--n`` 20 ms mic frames (960 B payload) published as fast as possible;
  messages/s and MB/s at the tap, and how many were lost;
- conversation: ``--seconds`` of what a conversation puts on the bus — mic audio every
  20 ms, assistant transcript pieces every 100 ms, VAD every 500 ms, five heartbeats and a
  session state every second, a tool call and its result every 2 s — paced in real time;
  latency publish -> tap (CLOCK_MONOTONIC, one board) and drops, which must be 0.

Publisher, gateway and tap are separate processes. Results: bench/results/remote.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from agent import topics
from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings
from agent.keys import generate, load_client_keys
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    Envelope,
    Heartbeat,
    Message,
    SessionPhase,
    SessionState,
    Shutdown,
    ToolCall,
    ToolResult,
    VadState,
    decode_envelope,
    encode_envelope,
)
from agent.remote import Gateway
from agent.remote_settings import RemoteSettings
from bench.common import percentiles, save, table

PCM = bytes(960)
END = topics.CONTROL_SHUTDOWN  # the publisher's last message: the tap stops on it
PUBLISHERS = ("mic", "blast")  # the senders whose messages the tap counts


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ipc(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=100_000),
    )


def _tcp() -> BusSettings:
    p = [_free_port() for _ in range(4)]
    return BusSettings(
        control=ControlPlane(
            publish=f"tcp://127.0.0.1:{p[0]}", subscribe=f"tcp://127.0.0.1:{p[1]}", hwm=100_000
        ),
        media=MediaPlane(
            publish=f"tcp://127.0.0.1:{p[2]}", subscribe=f"tcp://127.0.0.1:{p[3]}", hwm=100_000
        ),
    )


# -- processes ------------------------------------------------------------------------------------


def _run_proxy(settings: BusSettings, stop: Any, ready: Any) -> None:
    with Proxy(settings):
        ready.set()
        stop.wait()


def _run_gateway(settings: Settings, stop: Any, ready: Any) -> None:
    async def main() -> None:
        gw = Gateway(settings)
        task = asyncio.create_task(gw.run())
        await gw.ready.wait()
        ready.set()
        await asyncio.to_thread(stop.wait)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def _run_tap(endpoints: list[str], keys: tuple[str, str] | None, ready: Any, results: Any) -> None:
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for ep in endpoints:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        if keys is not None:
            load_client_keys(*keys).apply(s)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(ep)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    count = nbytes = gaps = 0
    last: dict[tuple[str, bytes], int] = {}
    lat_ms: list[float] = []
    first = last_t = 0.0
    warm = False
    ended = False  # END seen: drain what is still in flight on the other plane, then stop
    while True:
        events = dict(poller.poll(1000 if ended else 30_000))
        if not events:
            if ended:
                results.put(
                    {"received": count, "bytes": nbytes, "gaps": gaps, "lat_ms": lat_ms,
                     "seconds": max(last_t - first, 1e-9)}
                )  # fmt: skip
                return
            break
        for s in events:
            frames = s.recv_multipart()
            now_ns = time.monotonic_ns()
            if frames[0].startswith(b"_"):
                continue
            env = decode_envelope(frames[1])
            if isinstance(env.msg, Heartbeat) and env.msg.service == "warmup":
                ready.set()
                continue
            if not warm or env.sender not in PUBLISHERS:
                continue  # (the gateway's own metrics.gateway is not the publisher's traffic)
            if frames[0] == END.encode():
                ended = True
                continue
            key = (env.sender, frames[0])
            prev = last.get(key)
            if prev is not None and env.seq > prev + 1:
                gaps += env.seq - prev - 1
            last[key] = env.seq
            count += 1
            nbytes += sum(len(f) for f in frames)
            lat_ms.append((now_ns - env.mono_ns) / 1e6)
            last_t = time.monotonic()
            if count == 1:
                first = last_t
        if not warm and ready.is_set():
            warm = True
    results.put({"error": "tap timed out"})


def _run_publisher(
    settings: BusSettings, scenario: str, n: int, seconds: float, tap_ready: Any, out: Any
) -> None:  # noqa: E501
    async def main() -> None:
        async with Bus(settings, "mic") as bus:
            while not tap_ready.is_set():  # until the tap's subscription is through
                bus.publish("health.warmup", Heartbeat(service="warmup", pid=0))
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # warm-up stragglers drain
            sent = 0
            if scenario == "throughput":
                sent = _blast(settings, n)
            else:
                sent = await _conversation(bus, seconds)
            await asyncio.sleep(0.5)
            bus.publish(END, Shutdown(reason="bench end"))
            out.put(sent)
            await asyncio.sleep(0.5)

    asyncio.run(main())


def _blast(settings: BusSettings, n: int) -> int:
    """``n`` mic frames as fast as one raw PUB socket takes them (the Bus client's own
    per-message cost would be the limit otherwise, not the path to the tap)."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, n + 10)
    pub.setsockopt(zmq.LINGER, 5000)
    pub.connect(settings.media.publish)
    time.sleep(0.5)  # a fresh PUB connection: let it reach the proxy (bench only)
    frame = AudioFrame(sample_rate_hz=24000)
    topic = topics.AUDIO_MIC.encode()
    for seq in range(1, n + 1):
        body = encode_envelope(Envelope("blast", seq, time.monotonic_ns(), 0, frame))
        pub.send_multipart([topic, body, PCM])
    pub.close()
    return n


async def _conversation(bus: Bus, seconds: float) -> int:
    sent = 0

    def pub(topic: str, msg: Message, *payload: bytes) -> None:
        nonlocal sent
        if not bus.publish(topic, msg, *payload):
            raise RuntimeError(f"publisher dropped {topic}")
        sent += 1

    t0 = time.monotonic()
    for tick in range(int(seconds / 0.02)):
        pub(
            topics.AUDIO_MIC,
            AudioFrame(sample_rate_hz=24000, capture_mono_ns=time.monotonic_ns()),
            PCM,
        )  # noqa: E501
        if tick % 5 == 0:
            piece = AssistantTranscript(response_id=f"r{tick // 250}", text="a few words more ")
            pub(topics.NAVTALK_TRANSCRIPT_ASSISTANT, piece)
        if tick % 25 == 0:
            pub(topics.VAD_STATE, VadState(speaking=tick % 50 == 0, at_mono_ns=time.monotonic_ns()))
        if tick % 50 == 0:
            for service in topics.SERVICES:
                pub(f"health.{service}", Heartbeat(service=service, pid=1))
            pub(topics.SESSION_STATE, SessionState(phase=SessionPhase.READY))
        if tick % 100 == 0:
            pub(topics.TOOL_CALL, ToolCall(call_id=f"c{tick}", name="t", arguments_json="{}"))
            pub(topics.TOOL_RESULT, ToolResult(call_id=f"c{tick}", name="t", ok=True))
        await asyncio.sleep(max(0.0, t0 + (tick + 1) * 0.02 - time.monotonic()))
    return sent


# -- orchestration --------------------------------------------------------------------------------


def _one(transport: str, scenario: str, args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="nt-bench-")
    stop = ctx.Event()
    procs = []
    try:
        bus = _tcp() if transport == "tcp" else _ipc(d)
        ready = ctx.Event()
        procs.append(ctx.Process(target=_run_proxy, args=(bus, stop, ready), daemon=True))
        procs[-1].start()
        ready.wait(10)
        keys = None
        if transport == "curve":
            kd = Path(d) / "keys"
            generate(kd, "server")
            generate(Path(d) / "me", "op")
            (kd / "readers").mkdir()
            shutil.copy(Path(d) / "me" / "op.key", kd / "readers")
            remote = RemoteSettings(
                keys_dir=str(kd), read_port=_free_port(), command_port=_free_port(),
                media=[topics.AUDIO_MIC], read_hwm=100_000,
            )  # fmt: skip
            gready = ctx.Event()
            settings = Settings(bus=bus, remote=remote)
            procs.append(ctx.Process(target=_run_gateway, args=(settings, stop, gready)))
            procs[-1].start()
            gready.wait(10)
            endpoints = [f"tcp://127.0.0.1:{remote.read_port}"]
            keys = (str(Path(d) / "me" / "op.key_secret"), str(kd / "server.key"))
        else:
            endpoints = [bus.control.subscribe, bus.media.subscribe]
        tap_ready, results, sent_q = ctx.Event(), ctx.Queue(), ctx.Queue()
        tap = ctx.Process(target=_run_tap, args=(endpoints, keys, tap_ready, results))
        tap.start()
        pub = ctx.Process(
            target=_run_publisher,
            args=(bus, scenario, args.n, args.seconds, tap_ready, sent_q),
        )
        pub.start()
        r = results.get(timeout=120)
        sent = sent_q.get(timeout=30)
        pub.join(10)
        tap.join(10)
        if "error" in r:
            return {"transport": transport, "scenario": scenario, "error": r["error"]}
        lat = percentiles(r["lat_ms"])
        return {
            "transport": transport,
            "scenario": scenario,
            "sent": sent,
            "received": r["received"],
            "dropped": sent - r["received"],
            "gaps": r["gaps"],
            "msgs_per_s": round(r["received"] / r["seconds"]),
            "MB_per_s": round(r["bytes"] / r["seconds"] / 1e6, 2),
            "p50_ms": lat.get("p50_ms"),
            "p99_ms": lat.get("p99_ms"),
            "max_ms": lat.get("max_ms"),
        }
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="frames in the throughput run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the conversation run")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for scenario in ("throughput", "conversation"):
        for transport in ("ipc", "tcp", "curve"):
            row = _one(transport, scenario, args, ctx)
            print(row, flush=True)
            rows.append(row)
    cols = ["scenario", "transport", "sent", "received", "dropped", "msgs_per_s", "MB_per_s",
            "p50_ms", "p99_ms", "max_ms"]  # fmt: skip
    print(table("remote tap: ipc vs plain tcp vs CurveZMQ gateway", rows, cols))
    convo = [r for r in rows if r["scenario"] == "conversation"]
    ok = all(r.get("dropped") == 0 and r.get("gaps") == 0 for r in convo)
    path = save("remote", {"args": vars(args), "rows": rows, "conversation_zero_drops": ok})
    print(f"conversation over every transport with 0 drops: {ok}\nsaved {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
