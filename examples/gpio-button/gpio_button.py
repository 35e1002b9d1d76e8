#!/usr/bin/env python3
"""A push button on a GPIO pin opens a kiosk visit: ``control.session start`` on the bus.

Run it next to the agent (same configuration, so the same bus), e.g. on a Raspberry Pi
with the button between GPIO 17 and ground::

    python examples/gpio-button/gpio_button.py -c config/kiosk.toml --chip /dev/gpiochip0 --line 17

``--end-line N`` adds a second button that ends the visit. The pin is read with libgpiod's
Python binding (``pip install gpiod``, v2), pulled up, falling edge, debounced by the
kernel (``--debounce-ms``); presses closer than ``--min-interval-s`` are ignored (a guest
pressing three times opens one visit). Without a GPIO chip, ``--simulate`` reads presses
from stdin: an empty line or ``start`` presses start, ``end`` presses end.

The session acts on the press only when ``button`` is in ``[session] start_triggers``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Literal

from agent import topics
from agent.bus import Bus
from agent.config import load
from agent.errors import ConfigError
from agent.messages import SessionControl

log = logging.getLogger("gpio_button")

Action = Literal["start", "end"]
MAX_LINE = 80  # a stdin line longer than this is not a press


class Gate:
    """Presses in, the ones to act on out (sans I/O): one per ``min_interval_s`` per action."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}

    def press(self, action: Action, now: float) -> bool:
        last = self._last.get(action)
        if last is not None and now - last < self.min_interval_s:
            return False
        self._last[action] = now
        return True


def parse_press(line: str) -> Action | None:
    """A line of ``--simulate`` input: "" or "start" -> start, "end" -> end, else None."""
    word = line[:MAX_LINE].strip().lower()
    if word in ("", "start"):
        return "start"
    if word == "end":
        return "end"
    return None


async def stdin_presses() -> AsyncIterator[Action]:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline, MAX_LINE + 1)
        if not line:
            return  # end of input
        action = parse_press(line)
        if action is None:
            log.warning("= %r ignored: an empty line, start or end", line[:MAX_LINE].strip())
        else:
            yield action


async def gpio_presses(
    chip: str, start_line: int, end_line: int | None, debounce_ms: int
) -> AsyncIterator[Action]:
    gpiod = _gpiod()
    from gpiod.line import Bias, Edge  # type: ignore[import-not-found,unused-ignore]

    actions: dict[int, Action] = {start_line: "start"}
    if end_line is not None:
        actions[end_line] = "end"
    line_settings = gpiod.LineSettings(
        edge_detection=Edge.FALLING,
        bias=Bias.PULL_UP,
        debounce_period=timedelta(milliseconds=debounce_ms),
    )
    with gpiod.request_lines(
        chip, consumer="navtalk-button", config={tuple(actions): line_settings}
    ) as request:
        log.info("= waiting for presses on %s line(s) %s", chip, sorted(actions))
        while True:
            for event in await asyncio.to_thread(_wait_edges, request):
                yield actions[event.line_offset]


def _gpiod() -> Any:
    try:
        import gpiod  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise SystemExit(
            "gpio_button: libgpiod's Python binding is needed (pip install gpiod), "
            "or run with --simulate"
        ) from exc
    return gpiod


def _wait_edges(request: Any) -> list[Any]:
    """Edge events, or none after a second (so a stop is not held up for long)."""
    if request.wait_edge_events(timedelta(seconds=1)):
        return list(request.read_edge_events())
    return []


async def run(args: argparse.Namespace) -> int:
    settings = load(args.config)
    if not args.simulate:
        _gpiod()  # before the bus: say at once what is missing
    presses = (
        stdin_presses()
        if args.simulate
        else gpio_presses(args.chip, args.line, args.end_line, args.debounce_ms)
    )
    gate = Gate(args.min_interval_s)
    async with Bus(settings.bus, "button") as bus:
        log.info("= on the bus; press the button")
        async for action in presses:
            if not gate.press(action, time.monotonic()):
                log.info(
                    "= %s press ignored: within %.1f s of the last", action, gate.min_interval_s
                )
                continue
            if not bus.publish(
                topics.CONTROL_SESSION, SessionControl(action=action, reason="button")
            ):
                log.warning("= control.session %s not sent: the bus is full", action)
                continue
            log.info("> control.session %s", action)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-c", "--config", metavar="FILE", help="the agent's TOML profile (its bus)")
    p.add_argument("--chip", default="/dev/gpiochip0", help="GPIO chip (default: %(default)s)")
    p.add_argument("--line", type=int, default=17, help="start button's line (default: 17)")
    p.add_argument("--end-line", type=int, default=None, help="an end button's line (optional)")
    p.add_argument("--debounce-ms", type=int, default=50, help="kernel debounce (default: 50)")
    p.add_argument(
        "--min-interval-s", type=float, default=2.0,
        help="presses closer than this are one press (default: 2.0)",
    )  # fmt: skip
    p.add_argument("--simulate", action="store_true", help="read presses from stdin, no GPIO")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(f"gpio_button: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
