"""A pytest plugin: when the devices are required, a test that needs them may not skip.

A test needs the virtual devices when it is marked ``audio`` or ``display``, or uses one
of the device fixtures (it is then marked here). With ``NAVTALK_REQUIRE_DEVICES`` set
(``scripts/with-virtual-devices.sh`` sets it, and so ``make test`` and ``.ci/run``) or
``CI`` set, such a test that skips is reported as **failed**, with the skip's reason: CI
cannot go green with the real-time audio tests skipped because PulseAudio did not start.

Loaded by ``tests/conftest.py``; ``-p tests.device_guard`` loads it alone (its own test).
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

DEVICE_MARKS = ("audio", "display")
# fixture -> the mark a test that uses it gets
DEVICE_FIXTURES = {
    "pulse_audio": "audio",
    "alsa_audio": "audio",
    "vaudio": "audio",
    "x_display": "display",
}


def devices_required() -> bool:
    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")

    return on("NAVTALK_REQUIRE_DEVICES") or on("CI")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())
        for fixture, mark in DEVICE_FIXTURES.items():
            if fixture in used:
                item.add_marker(mark)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and devices_required()
        and any(item.get_closest_marker(m) is not None for m in DEVICE_MARKS)
    ):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs the virtual devices but skipped ({reason}); "
            "NAVTALK_REQUIRE_DEVICES/CI is set, so a skip here is a failure"
        )
    return report
