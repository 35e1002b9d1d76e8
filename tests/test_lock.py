"""requirements/lock-py311.txt: it pins what pyproject.toml asks for, the venv holds those
versions, and every pin has a binary wheel for x86-64 and aarch64 (scripts/check-wheels.sh;
skipped only when the package index cannot be reached, and then it says so)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock-py311.txt"
UNREACHABLE = 3  # check-wheels.sh's exit status when the index cannot be reached


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_lock_pins_every_dependency_within_what_pyproject_allows() -> None:
    pins = _pins()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in deps:
        req = Requirement(text)
        version = pins.get(_key(req.name))
        assert version is not None, f"{req.name} is not pinned in {LOCK.name}"
        assert req.specifier.contains(version), f"{req.name}=={version} is not {req.specifier}"


def test_the_venv_holds_the_locked_versions() -> None:
    wrong = {
        name: metadata.version(name)
        for name, version in _pins().items()
        if metadata.version(name) != version
    }
    assert not wrong, f"installed versions differ from {LOCK.name} (make setup): {wrong}"


def _check_wheels(lock: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-wheels.sh"), str(lock)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    if proc.returncode == UNREACHABLE:
        pytest.skip(f"the package index cannot be reached, wheels not checked: {proc.stderr}")
    return proc


def test_every_pin_has_binary_wheels_for_x86_64_and_aarch64() -> None:
    proc = _check_wheels(LOCK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(_pins())
    assert f"x86_64: {n} binary wheels" in proc.stdout
    assert f"aarch64: {n} binary wheels" in proc.stdout


def test_check_wheels_rejects_a_pin_without_wheels(tmp_path: Path) -> None:
    """The positive control: webrtcvad 2.0.10 is published as source only."""
    lock = tmp_path / "lock.txt"
    lock.write_text("webrtcvad==2.0.10\n")
    proc = _check_wheels(lock)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "aarch64: some pin has no binary wheel" in proc.stderr
