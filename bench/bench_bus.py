"""Bus benchmark: the proxy hop against a direct PUB->SUB, like for like, and throughput.

Rows, each with where it starts and stops:

- **hop, 960 B** (a 20 ms mic frame, paced every ``--interval-ms``, 20 ms = a real mic):
  from the publisher's ``send`` (``capture_mono_ns`` stamped just before) to the
  subscriber's ``recv`` returning, CLOCK_MONOTONIC, publisher and subscriber in separate
  processes. The *same client* (zmq.asyncio sockets, the Bus's envelope encoding and
  decoding) sends every frame either through the proxy or straight to the subscriber,
  the path chosen per frame in ABBA order, so both paths see the same load at the same
  time; only the hop differs. The ratio proxy/direct at p99 is the headline figure.
- **Bus client, 960 B**: the real :class:`agent.bus.Bus` on both ends through the proxy,
  same pacing: publish() -> recv() (what a service sees; includes the Bus's reader task
  and queue).
- **throughput, 786 kB** (512x512x3 frames) as fast as the publisher can send, again one
  client alternating the two paths per frame.

Every row counts what was sent next to what arrived (not only the reader queue's drops),
and prints the 1-minute load average at the end of its phase.

Goal (issue #17): proxy hop p99 within 1.1x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
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
PATHS = ("proxy", "direct")
ABBA = (0, 1, 1, 0)  # the path of frame i is PATHS[ABBA[i % 4]]
TOPIC = topics.AUDIO_MIC.encode()


def _settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=1000),
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# -- one client, two paths, interleaved per frame ---------------------------------------------


async def _pair_publisher(
    settings: BusSettings, direct_ep: str, go_ep: str, n: int, interval_s: float, big: bool
) -> None:
    ctx = zmq.asyncio.Context()
    hwm = settings.media.hwm
    socks = []
    for path in PATHS:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, hwm)
        pub.setsockopt(zmq.LINGER, 2000)
        if path == "proxy":
            pub.connect(settings.media.publish)
        else:
            pub.bind(direct_ep)
        socks.append(pub)
    go = ctx.socket(zmq.PULL)
    go.bind(go_ep)
    while not await go.poll(10):  # probes on both paths until the subscriber has both
        for pub in socks:
            await pub.send_multipart([TOPIC, b"probe"])
    await go.recv()
    payload = FRAME if big else PCM
    seq = [0, 0]
    t_next = time.monotonic()
    for i in range(n):
        k = ABBA[i % 4]
        seq[k] += 1
        now = time.monotonic_ns()
        body = encode_envelope(
            Envelope(
                "mic",
                seq[k],
                now,
                time.time_ns(),
                AudioFrame(sample_rate_hz=24000, capture_mono_ns=now),
            )
        )
        await socks[k].send_multipart([TOPIC, body, payload], copy=False)
        if interval_s:
            t_next += interval_s
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        elif i % 4 == 3:
            await asyncio.sleep(0)
    await asyncio.sleep(0.3)
    for s in (*socks, go):
        s.close()
    ctx.term()


def _pair_publisher_proc(*args: Any) -> None:
    asyncio.run(_pair_publisher(*args))


async def _pair(
    settings: BusSettings, d: str, n: int, interval_s: float, big: bool
) -> dict[str, Any]:
    """Frames alternate between the proxy and the direct path; per path: latencies, sent,
    arrived. Returns also the phase's elapsed time and load."""
    direct_ep, go_ep = f"ipc://{d}/direct", f"ipc://{d}/go"
    proc = mp.get_context("spawn").Process(
        target=_pair_publisher_proc, args=(settings, direct_ep, go_ep, n, interval_s, big)
    )
    proc.start()
    ctx = zmq.asyncio.Context.instance()
    subs = []
    for path in PATHS:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, settings.media.hwm)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        sub.connect(settings.media.subscribe if path == "proxy" else direct_ep)
        subs.append(sub)
    go = ctx.socket(zmq.PUSH)
    go.connect(go_ep)
    seen = [False, False]
    while not all(seen):  # a probe on each path: both subscriptions are in place
        for k, sub in enumerate(subs):
            if await sub.poll(10):
                seen[k] |= (await sub.recv_multipart())[1] == b"probe"
    await go.send(b"go")
    lat: list[list[float]] = [[], []]
    t0 = time.monotonic()
    t_last = t0
    poller = zmq.asyncio.Poller()
    for sub in subs:
        poller.register(sub, zmq.POLLIN)
    while sum(map(len, lat)) < n:
        ready = dict(await poller.poll(2000))
        if not ready:
            break  # 2 s of nothing: the rest was lost
        for k, sub in enumerate(subs):  # one frame per ready path, then poll again: fair
            if sub not in ready:
                continue
            frames = await sub.recv_multipart()
            got_ns = time.monotonic_ns()
            if frames[1] == b"probe":
                continue
            env = decode_envelope(frames[1])  # the decode work the Bus does
            lat[k].append((got_ns - env.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
            t_last = time.monotonic()
    load = _load()
    for s in (*subs, go):
        s.close(0)
    proc.join(10)
    sent = [sum(1 for i in range(n) if ABBA[i % 4] == k) for k in (0, 1)]
    return {
        "elapsed_s": max(1e-9, t_last - t0),
        "load": load,
        **{
            p: {"sent": sent[k], "arrived": len(lat[k]), "lat": lat[k]} for k, p in enumerate(PATHS)
        },
    }


# -- the real Bus client through the proxy ------------------------------------------------------


async def _bus_publisher(settings: BusSettings, n: int, interval_s: float) -> None:
    async with Bus(settings, "mic") as bus:
        bus.subscribe(topics.CONTROL_SHUTDOWN)  # start signal
        await bus.recv()
        t_next = time.monotonic()
        for _ in range(n):
            now = time.monotonic_ns()
            bus.publish(
                topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000, capture_mono_ns=now), PCM
            )
            t_next += interval_s
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await asyncio.sleep(0.3)


def _bus_publisher_proc(settings: BusSettings, n: int, interval_s: float) -> None:
    asyncio.run(_bus_publisher(settings, n, interval_s))


async def _bus_client(settings: BusSettings, n: int, interval_s: float) -> dict[str, Any]:
    from agent.messages import Shutdown

    async with Bus(settings, "session", media_queue=1000) as bus:
        bus.subscribe(topics.AUDIO_MIC)
        await bus.sync()
        pub = mp.get_context("spawn").Process(
            target=_bus_publisher_proc, args=(settings, n, interval_s)
        )
        pub.start()
        async with Bus(settings, "supervisor") as ctl:
            got: list[float] = []
            first = None
            while first is None:  # the start signal until the first frame comes
                ctl.publish(topics.CONTROL_SHUTDOWN, Shutdown(reason="start"))
                try:
                    first = await asyncio.wait_for(bus.recv(), 0.05)
                except TimeoutError:
                    continue
            got.append((time.monotonic_ns() - first.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
            while len(got) < n:
                try:
                    d = await asyncio.wait_for(bus.recv(), 2.0)
                except TimeoutError:
                    break
                got.append((time.monotonic_ns() - d.msg.capture_mono_ns) / 1e6)  # type: ignore[union-attr]
        load = _load()
        pub.join(10)
        dropped = bus.stats.media_dropped
    return {"lat": got, "sent": n, "arrived": len(got), "reader_dropped": dropped, "load": load}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="ntb-")
    settings = _settings(d)
    interval = args.interval_ms / 1000
    try:
        with Proxy(settings):
            hop = await _pair(settings, d, args.frames, interval, big=False)
            client = await _bus_client(settings, args.frames // 2, interval)
            thr = await _pair(settings, d, args.big, 0.0, big=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    p, q = percentiles(hop["proxy"]["lat"]), percentiles(hop["direct"]["lat"])
    rows = []
    for name, stats, src in (("proxy hop", p, hop["proxy"]), ("direct", q, hop["direct"])):
        rows.append({"path": name, "sent": src["sent"], "arrived": src["arrived"],
                     "load": hop["load"], **stats})  # fmt: skip
    c = percentiles(client["lat"])
    rows.append({"path": "Bus client via proxy", "sent": client["sent"],
                 "arrived": client["arrived"], "load": client["load"], **c})  # fmt: skip
    mb = len(FRAME) / 1e6
    throughput = [
        {
            "path": path,
            "sent": thr[path]["sent"],
            "arrived": thr[path]["arrived"],
            "MB_per_s": round(thr[path]["arrived"] * mb / thr["elapsed_s"], 1),
            "p50_ms": percentiles(thr[path]["lat"]).get("p50_ms"),
            "p99_ms": percentiles(thr[path]["lat"]).get("p99_ms"),
            "load": thr["load"],
        }
        for path in PATHS
    ]
    return {
        "interval_ms": args.interval_ms,
        "latency_960B": rows,
        "ratio_p99_proxy_vs_direct": round(p["p99_ms"] / q["p99_ms"], 3),
        "ratio_p50_proxy_vs_direct": round(p["p50_ms"] / q["p50_ms"], 3),
        "bus_client_reader_dropped": client["reader_dropped"],
        "throughput_512x512x3": throughput,
        "goal": {
            "proxy_within_1_1x_direct_p99": p["p99_ms"] / q["p99_ms"] <= 1.1,
            "nothing_lost_at_mic_pace": all(r["arrived"] == r["sent"] for r in rows),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000, help="960-byte frames, both paths")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pacing (20 = a mic)")
    parser.add_argument("--big", type=int, default=300, help="512x512x3 frames for throughput")
    args = parser.parse_args()
    r = asyncio.run(main_async(args))
    cols = ["path", "sent", "arrived", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "load"]
    print(
        table(
            f"Hop latency, 960-byte frames every {args.interval_ms:g} ms "
            "(send -> recv, ms; proxy and direct interleaved ABBA, same client)",
            r["latency_960B"],
            cols,
        )
    )
    print(
        f"proxy/direct: p50 x{r['ratio_p50_proxy_vs_direct']},"
        f" p99 x{r['ratio_p99_proxy_vs_direct']}"
        f" (Bus client reader queue dropped {r['bus_client_reader_dropped']})"
    )
    print(
        table(
            "\nThroughput, 512x512x3 frames, as fast as sent (interleaved ABBA, same client)",
            r["throughput_512x512x3"],
            ["path", "sent", "arrived", "MB_per_s", "p50_ms", "p99_ms", "load"],
        )
    )
    print("goals:", r["goal"])
    print("saved", save("bus", r))


if __name__ == "__main__":
    main()
