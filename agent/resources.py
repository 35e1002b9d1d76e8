"""The files that ship inside the package: profiles, systemd units, the emulator's scripts.

::

    config/                      in a checkout; in the wheel as agent/_config/
      default.toml emulator.toml kiosk.toml robot.toml     profiles (--profile NAME)
      scripts/demo.toml                                    the demo's emulator script
      systemd/navtalk-agent.service, systemd/user/...      units (navtalk-agent install)

``agent/_config`` is a symlink to ``config/`` in the source tree, so the same
:func:`data_dir` works from a checkout, an editable install and an installed wheel
(``importlib.resources``), and ``navtalk-agent run --profile emulator`` works anywhere.
"""

from __future__ import annotations

import argparse
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

__all__ = [
    "apply_profile",
    "data_dir",
    "data_file",
    "packaged_path_overrides",
    "profile_names",
    "profile_path",
]


def data_dir() -> Path:
    """The directory of shipped data (``config/`` of the checkout)."""
    root = resources.files("agent").joinpath("_config")
    if not isinstance(root, Path):  # a zipped install: there is no file to hand to systemd
        raise ConfigError("navtalk-agent must be installed as files, not as a zip archive")
    return root


def data_file(relative: str) -> Path:
    """A shipped file by its path under ``config/`` (``"systemd/navtalk-agent.service"``)."""
    path = data_dir() / relative
    if not path.is_file():
        raise ConfigError(f"the package holds no {relative!r} (installed without its data?)")
    return path


def profile_names() -> list[str]:
    return sorted(p.stem for p in data_dir().glob("*.toml"))


def profile_path(name: str) -> Path:
    """The shipped profile ``name`` (``emulator``, ``kiosk``, ``robot``, ``default``)."""
    path = data_dir() / f"{name}.toml"
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ConfigError(
            f"--profile {name!r}: no such profile; shipped profiles: "
            f"{', '.join(profile_names())} (or give a file with --config)"
        )
    return path


def _strings(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in raw.items():
        if isinstance(value, dict):
            out += _strings(value, f"{prefix}{key}.")
        elif isinstance(value, str):
            out.append((f"{prefix}{key}", value))
    return out


def packaged_path_overrides(profile: Path, cwd: Path) -> list[str]:
    """``--set`` overrides that point a shipped profile's ``config/...`` paths (the emulator
    script of ``emulator.toml``) at the shipped copies, when ``cwd`` has no such file (the
    command runs outside a checkout). Other relative paths (outputs under ``out/``) stay."""
    raw = tomllib.loads(profile.read_text(encoding="utf-8"))
    out = []
    for key, value in _strings(raw):
        if value.startswith("config/") and not (cwd / value).exists():
            shipped = data_dir() / value.removeprefix("config/")
            if shipped.is_file():
                out.append(f"{key}={shipped}")
    return out


def apply_profile(args: argparse.Namespace, cwd: Path | None = None) -> None:
    """The CLI's ``--profile NAME``: use the shipped profile as ``--config`` (so the
    supervisor hands the same file to its children) with its ``config/`` paths resolved."""
    name = getattr(args, "profile", None)
    if not name:
        return
    if getattr(args, "config", None) or getattr(args, "file", None):
        raise ConfigError("give either --profile or a configuration file, not both")
    path = profile_path(name)
    args.config = str(path)
    args.overrides[:0] = packaged_path_overrides(path, Path.cwd() if cwd is None else cwd)
