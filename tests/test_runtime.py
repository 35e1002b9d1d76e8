"""agent/runtime.py: how a service process stops, run as a real process on a real bus."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import BusSettings

ROOT = Path(__file__).resolve().parent.parent

# A service process whose main misbehaves on cancellation in the way named by argv[2].
SERVICE = textwrap.dedent(
    """
    import asyncio, logging, sys
    from agent.config import Settings, SupervisorSettings
    from agent.runtime import serve
    from tests.conftest import ipc_bus_settings

    mode = sys.argv[2]

    async def main(settings, bus):
        await bus.start()
        print("ready", flush=True)
        if mode == "swallow-once":  # what aioice's close did to a cancellation
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(3600)  # carries on as if never told
        elif mode == "ignore":
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass
        else:
            await asyncio.sleep(3600)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    settings = Settings(
        bus=ipc_bus_settings(sys.argv[1]), supervisor=SupervisorSettings(stop_timeout_s=2.0)
    )
    sys.exit(asyncio.run(serve("mic", settings, main)))
    """
)


def _run_and_stop(short_tmp: Path, mode: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(short_tmp), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("mode", ["plain", "swallow-once"])
def test_a_service_stops_cleanly_even_if_a_library_swallowed_its_cancel(
    bus_settings: BusSettings, short_tmp: Path, mode: str
) -> None:
    code, err = _run_and_stop(short_tmp, mode)
    assert code == 0, err
    assert "= mic stopped (exit 0)" in err
    if mode == "swallow-once":  # told again, with where it was waiting
        assert "service-mic still running 0.8 s after its cancel; cancelling again" in err
        assert "in main" in err
    else:
        assert "cancelling again" not in err


def test_a_service_that_ignores_every_cancel_is_reported_and_exits_1(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    code, err = _run_and_stop(short_tmp, "ignore")
    assert code == 1, err
    assert "service-mic did not stop within 1.5 s" in err
    assert "Current thread" in err  # faulthandler's dump of every thread
