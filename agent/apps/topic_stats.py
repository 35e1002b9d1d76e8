"""``navtalk-agent topics``: every topic seen over a window, with its rate and sizes (as
``ros2 topic hz`` / ``ros2 topic bw`` do), read from the proxies or a remote gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import zmq
import zmq.asyncio

from agent.bus import INTERNAL_PREFIX
from agent.bus_stats import peek_sender
from agent.keys import ClientKeys
from agent.remote import remote_sub_socket, sync_view

__all__ = ["TopicRates", "topics_command"]

MAX_TOPICS = 512  # distinct topic names counted (a flood of names shares the last row)
MAX_SENDERS = 16  # sender names kept per topic


@dataclass
class _Row:
    count: int = 0
    bytes_total: int = 0
    bytes_max: int = 0
    first: float = 0.0
    last: float = 0.0
    senders: set[str] = field(default_factory=set)


class TopicRates:
    """Counts messages per topic; rates over the observed window. No I/O: pass ``now``."""

    def __init__(self, started: float):
        self.started = started
        self.rows: dict[str, _Row] = {}

    def add(self, frames: Sequence[bytes], now: float) -> None:
        topic = bytes(frames[0][:128]).decode("ascii", "replace")
        if topic.startswith(INTERNAL_PREFIX):
            return
        row = self.rows.get(topic)
        if row is None:
            if len(self.rows) >= MAX_TOPICS:
                topic = "(other)"
                row = self.rows.setdefault(topic, _Row(first=now))
            else:
                row = self.rows[topic] = _Row(first=now)
        size = sum(len(f) for f in frames[1:])
        row.count += 1
        row.bytes_total += size
        row.bytes_max = max(row.bytes_max, size)
        row.last = now
        if len(frames) > 1 and len(row.senders) < MAX_SENDERS:
            row.senders.add(peek_sender(bytes(frames[1][:64])))

    def table(self, now: float) -> list[dict[str, object]]:
        window = max(now - self.started, 1e-9)
        out = []
        for topic in sorted(self.rows):
            r = self.rows[topic]
            out.append(
                {
                    "topic": topic,
                    "count": r.count,
                    "rate_hz": round(r.count / window, 2),
                    "bytes_per_s": round(r.bytes_total / window, 1),
                    "avg_bytes": round(r.bytes_total / r.count, 1),
                    "max_bytes": r.bytes_max,
                    "senders": sorted(r.senders),
                }
            )
        return out

    def render(self, now: float) -> str:
        rows = self.table(now)
        lines = [
            f"{'TOPIC':<30}{'COUNT':>8}{'RATE Hz':>10}{'kB/s':>9}{'AVG B':>9}{'MAX B':>9}  SENDERS"
        ]
        for r in rows:
            lines.append(
                f"{r['topic']!s:<30}{r['count']:>8}{r['rate_hz']:>10.2f}"
                f"{float(r['bytes_per_s']) / 1000:>9.1f}{r['avg_bytes']:>9.0f}{r['max_bytes']:>9}"  # type: ignore[arg-type]
                f"  {','.join(r['senders'])}"  # type: ignore[arg-type]
            )
        lines.append(f"-- {len(rows)} topic(s) over {now - self.started:.1f} s")
        return "\n".join(lines)


async def topics_command(
    endpoints: Sequence[str],
    out: TextIO,
    *,
    window_s: float,
    as_json: bool,
    keys: ClientKeys | None = None,
) -> int:
    """Listen to ``endpoints`` for ``window_s`` seconds, then print the table."""
    ctx = zmq.asyncio.Context.instance()
    socks = []
    for ep in endpoints:
        sock = remote_sub_socket(ctx, ep, keys if ep.startswith("tcp://") else None)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        socks.append(sock)
    poller = zmq.asyncio.Poller()
    views = {}
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
        views[sock] = sync_view(sock)
    rates = TopicRates(time.monotonic())
    deadline = rates.started + window_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            for sock, _ in await poller.poll(int(left * 1000) + 1):
                with contextlib.suppress(zmq.Again):
                    for _ in range(1000):
                        frames = views[sock].recv_multipart(zmq.NOBLOCK)
                        rates.add(frames, time.monotonic())
    except asyncio.CancelledError:
        pass
    finally:
        for sock in socks:
            sock.close(linger=0)
    now = time.monotonic()
    out.write((json.dumps(rates.table(now)) if as_json else rates.render(now)) + "\n")
    return 0
