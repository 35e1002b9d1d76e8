"""Bus benchmark: one hop through the proxy vs a direct PUB->SUB, and video-sized throughput.

- Latency: 20 ms PCM frames (960 bytes) on ``audio.mic``, paced like a real mic
  (one every ``--interval-ms``), timed from ``publish()`` to the subscriber's
  ``recv()`` with CLOCK_MONOTONIC (publisher and subscriber are separate processes).
- Throughput: 512x512x3 frames (786 kB) as payload, as fast as possible, through
  the proxy (and direct), with a bounded media queue on the reader.

Goal (issue #2): proxy hop p99 <= 1 ms and within 1.1x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import tempfile
import time
from typing import Any

import zmq
import zmq.asyncio

from agent import topics
from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane
from agent.messages import AudioFrame, Envelope, decode_envelope, encode_envelope
from bench.common import percentiles, save, table

PCM = bytes(960)
FRAME = bytes(512 * 512 * 3)


def _settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=1000),
    )


# -- through the proxy, with the real Bus client on both ends ---------------------------------


async def _bus_publisher(settings: BusSettings, n: int, interval_s: float, payload: bytes) -> None:
    async with Bus(settings, "mic") as bus:
        bus.subscribe(topics.CONTROL_SHUTDOWN)  # start signal
        await bus.recv()
        t_next = time.monotonic()
        for _ in range(n):
            bus.publish(
                topics.AUDIO_MIC,
                AudioFrame(sample_rate_hz=24000, capture_mono_ns=time.monotonic_ns()),
                payload,
            )
            if interval_s:
                t_next += interval_s
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await asyncio.sleep(0.2)


def _bus_publisher_proc(settings: BusSettings, n: int, interval_s: float, big: bool) -> None:
    asyncio.run(_bus_publisher(settings, n, interval_s, FRAME if big else PCM))


async def _through_proxy(
    settings: BusSettings, n: int, interval_s: float, big: bool
) -> tuple[list[float], float, int]:
    from agent.messages import Shutdown

    async with Bus(settings, "session", media_queue=1000) as bus:
        bus.subscribe(topics.AUDIO_MIC)
        pub = mp.get_context("spawn").Process(
            target=_bus_publisher_proc, args=(settings, n, interval_s, big)
        )
        pub.start()
        async with Bus(settings, "supervisor") as ctl:
            # publish the start signal until the publisher answers with its first frame
            got: list[float] = []
            first = None
            while first is None:
                ctl.publish(topics.CONTROL_SHUTDOWN, Shutdown(reason="start"))
                try:
                    first = await asyncio.wait_for(bus.recv(), 0.05)
                except TimeoutError:
                    continue
            t0 = time.monotonic()
            got.append((time.monotonic_ns() - first.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
            while len(got) < n:
                try:
                    d = await asyncio.wait_for(bus.recv(), 2.0)
                except TimeoutError:
                    break
                got.append((time.monotonic_ns() - d.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
            elapsed = time.monotonic() - t0
        pub.join(10)
    return got, elapsed, bus.stats.media_dropped


# -- direct PUB -> SUB, same framing, no proxy -------------------------------------------------


def _direct_publisher_proc(
    endpoint: str, ready_ep: str, n: int, interval_s: float, big: bool
) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.bind(endpoint)
    ready = ctx.socket(zmq.PULL)
    ready.bind(ready_ep)
    payload = FRAME if big else PCM
    # wait for "go": the subscriber sends it once probes arrive
    while True:
        pub.send_multipart([b"audio.mic", b"probe"])
        if ready.poll(10):
            ready.recv()
            break
    t_next = time.monotonic()
    for i in range(n):
        body = encode_envelope(
            Envelope(
                "mic",
                i + 1,
                time.monotonic_ns(),
                time.time_ns(),
                AudioFrame(sample_rate_hz=24000, capture_mono_ns=time.monotonic_ns()),
            )
        )
        pub.send_multipart([b"audio.mic", body, payload], copy=False)
        if interval_s:
            t_next += interval_s
            time.sleep(max(0.0, t_next - time.monotonic()))
    time.sleep(0.2)
    pub.close(0)
    ready.close(0)
    ctx.term()


async def _direct(d: str, n: int, interval_s: float, big: bool) -> tuple[list[float], float]:
    ep, ready_ep = f"ipc://{d}/direct", f"ipc://{d}/direct-ready"
    proc = mp.get_context("spawn").Process(
        target=_direct_publisher_proc, args=(ep, ready_ep, n, interval_s, big)
    )
    proc.start()
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.setsockopt(zmq.SUBSCRIBE, b"audio.mic")
    sub.connect(ep)
    go = ctx.socket(zmq.PUSH)
    go.connect(ready_ep)
    while True:
        frames = await sub.recv_multipart()
        if frames[1] == b"probe":
            break
    await go.send(b"go")
    got: list[float] = []
    t0 = 0.0
    while len(got) < n:
        if not await sub.poll(2000):
            break
        frames = await sub.recv_multipart()
        if frames[1] == b"probe":
            continue
        if not got:
            t0 = time.monotonic()
        env = decode_envelope(frames[1])  # same decode work as the Bus does
        got.append((time.monotonic_ns() - env.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
    elapsed = time.monotonic() - t0
    sub.close(0)
    go.close(0)
    proc.join(10)
    return got, elapsed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="ntb-")
    settings = _settings(d)
    results: dict[str, Any] = {}
    try:
        with Proxy(settings):
            interval = args.interval_ms / 1000
            lat_proxy, _, _ = await _through_proxy(settings, args.frames, interval, big=False)
            lat_direct, _ = await _direct(d, args.frames, interval, big=False)
            thr_proxy, el_p, dropped = await _through_proxy(settings, args.big, 0.0, big=True)
            thr_direct, el_d = await _direct(d, args.big, 0.0, big=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    p, q = percentiles(lat_proxy), percentiles(lat_direct)
    results["latency_960B"] = {"proxy": p, "direct": q, "interval_ms": args.interval_ms}
    results["ratio_p99_proxy_vs_direct"] = round(p["p99_ms"] / q["p99_ms"], 3)
    results["ratio_p50_proxy_vs_direct"] = round(p["p50_ms"] / q["p50_ms"], 3)
    mb = len(FRAME) / 1e6
    results["throughput_512x512x3"] = {
        "proxy": {
            "frames": len(thr_proxy),
            "fps": round(len(thr_proxy) / el_p, 1),
            "MB_per_s": round(len(thr_proxy) * mb / el_p, 1),
            "reader_dropped": dropped,
        },
        "direct": {
            "frames": len(thr_direct),
            "fps": round(len(thr_direct) / el_d, 1),
            "MB_per_s": round(len(thr_direct) * mb / el_d, 1),
        },
    }
    results["goal"] = {
        "proxy_p99_le_1ms": p["p99_ms"] <= 1.0,
        "proxy_within_1_1x_direct_p99": results["ratio_p99_proxy_vs_direct"] <= 1.1,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500, help="960-byte frames to time")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="pacing between frames")
    parser.add_argument("--big", type=int, default=300, help="512x512x3 frames for throughput")
    args = parser.parse_args()
    r = asyncio.run(main_async(args))
    lat = r["latency_960B"]
    rows = [{"path": name, **{k: v for k, v in lat[name].items()}} for name in ("proxy", "direct")]
    print(
        table(
            "Hop latency, 960-byte frames (publish -> recv, ms)",
            rows,
            ["path", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
        )
    )
    print(
        f"proxy/direct: p50 x{r['ratio_p50_proxy_vs_direct']},"
        f" p99 x{r['ratio_p99_proxy_vs_direct']}"
    )
    thr = r["throughput_512x512x3"]
    print(
        table(
            "\nThroughput, 512x512x3 frames",
            [{"path": k, **v} for k, v in thr.items()],
            ["path", "frames", "fps", "MB_per_s", "reader_dropped"],
        )
    )
    print("goals:", r["goal"])
    print("saved", save("bus", r))


if __name__ == "__main__":
    main()
