"""CI cannot go green by skipping: a device that does not start fails the run, and a test
that needs a device fails instead of skipping when the devices are required."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)

SKIPPING_TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.fixture
    def pulse_audio():
        pytest.skip("no PulseAudio virtual sink")

    @pytest.mark.audio
    def test_marked_audio():
        pytest.skip("PortAudio lists no 'pulse' device")

    def test_uses_the_device_fixture(pulse_audio):
        assert pulse_audio

    def test_not_a_device_test():
        pytest.skip("optional package missing")
    """
)


def _pytest(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (directory / "test_skipping.py").write_text(SKIPPING_TESTS)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "NAVTALK_REQUIRE_DEVICES")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "ignore", "-p", "no:cacheprovider", "-p",
         "tests.device_guard", "-c", os.devnull, "--rootdir", str(directory),
         str(directory / "test_skipping.py")],
        cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_device_test_that_skips_fails_when_devices_are_required(tmp_path: Path) -> None:
    r = _pytest(tmp_path, NAVTALK_REQUIRE_DEVICES="1")
    assert r.returncode == 1, r.stdout + r.stderr
    # a skip in a test fails it; a skip in a device fixture is an error of its set-up
    assert "1 failed, 1 skipped" in r.stdout and "1 error" in r.stdout, r.stdout
    assert "test_marked_audio needs the virtual devices but skipped" in r.stdout
    assert "no PulseAudio virtual sink" in r.stdout, "the skip's reason is kept"
    r = _pytest(tmp_path, CI="true")
    assert r.returncode == 1 and "1 failed, 1 skipped" in r.stdout, r.stdout


def test_without_the_requirement_a_skip_stays_a_skip(tmp_path: Path) -> None:
    r = _pytest(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 skipped" in r.stdout


def _bogus_pulseaudio(directory: Path) -> dict[str, str]:
    """An environment whose `pulseaudio` cannot start a server, and a private server dir
    (so the shared server of this machine is not reused)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulseaudio"
    fake.write_text("#!/bin/sh\necho 'pulseaudio: no way' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "DISPLAY")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["NAVTALK_VAUDIO_DIR"] = str(directory / "va")
    return env


def test_with_virtual_devices_fails_when_pulseaudio_cannot_start(short_tmp: Path) -> None:
    marker = short_tmp / "ran"
    r = subprocess.run(
        [str(ROOT / "scripts" / "with-virtual-devices.sh"), "touch", str(marker)],
        env=_bogus_pulseaudio(short_tmp), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0, r.stderr
    assert not marker.exists(), "the command ran without its devices"
    assert "pulseaudio failed to start" in r.stderr
    assert "virtual audio devices did not start" in r.stderr


def test_with_virtual_devices_gives_working_devices_and_requires_them() -> None:
    # positive control for the test above: the same script on this machine starts both devices
    r = subprocess.run(
        [str(ROOT / "scripts" / "with-virtual-devices.sh"), "sh", "-c",
         'scripts/check-devices.sh && echo "require=$NAVTALK_REQUIRE_DEVICES"'],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "check-devices: PulseAudio vsink at" in r.stdout
    assert "require=1" in r.stdout


def _ci_run(env: dict[str, str], short_tmp: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """.ci/run with a `make` that only records its targets (the real one installs and runs
    everything): what is left to test is .ci/run's own device check."""
    calls = short_tmp / "make-calls"
    make = Path(env["PATH"].split(":")[0]) / "make"
    make.write_text(f'#!/bin/sh\necho "$1" >> {calls}\n')
    make.chmod(0o755)
    r = subprocess.run(
        [str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=90
    )
    return r, calls.read_text() if calls.exists() else ""


def test_ci_run_fails_where_pulseaudio_cannot_start(short_tmp: Path) -> None:
    r, made = _ci_run(_bogus_pulseaudio(short_tmp), short_tmp)
    assert r.returncode != 0, r.stdout + r.stderr
    assert made.split() == ["setup"], "the tests must not run without their devices"
    assert "virtual audio devices did not start" in r.stderr


def test_ci_run_passes_its_device_check_where_the_devices_start(short_tmp: Path) -> None:
    bin_dir = short_tmp / "bin"
    bin_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "DISPLAY")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["NAVTALK_VAUDIO_DIR"] = str(short_tmp / "va")  # a private server, started and stopped
    r, made = _ci_run(env, short_tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert made.split() == ["setup", "lint", "types", "test"]
    assert "check-devices: PulseAudio vsink at" in r.stdout
