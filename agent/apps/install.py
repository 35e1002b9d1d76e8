"""``navtalk-agent install systemd``: put the unit, the profile and the license file in place.

::

    navtalk-agent install systemd [--profile robot]          system service (root)
        /etc/systemd/system/navtalk-agent.service   the unit, ExecStart = this venv's command
        /etc/navtalk-agent/agent.toml               the profile (kept if it exists)
        /etc/navtalk-agent/env                      NAVTALK_LICENSE=, mode 0600 (kept)
    navtalk-agent install systemd --user [--profile kiosk]   user service, graphical session
        ~/.config/systemd/user/navtalk-agent.service
        ~/.config/navtalk-agent/agent.toml, ~/.config/navtalk-agent/env

``--dry-run`` prints the files instead; ``--prefix DIR`` writes under DIR (a staging root
for a system install, the home directory for ``--user``). The units come from
``config/systemd/`` (shipped in the package); only ``@NAVTALK_AGENT@`` is filled in here,
the rest of the paths are systemd's own specifiers (``%E``, ``%S``, ``%t``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.errors import NavtalkAgentError
from agent.resources import data_file, profile_path

__all__ = ["PlannedFile", "add_cli_arguments", "executable", "main", "plan", "render_unit"]

UNIT = "navtalk-agent.service"
PLACEHOLDER = "@NAVTALK_AGENT@"
ENV_TEXT = """\
# The NavTalk license for navtalk-agent, read by systemd when it starts the service.
# Keep this file mode 0600: it is the only place the license is written down.
NAVTALK_LICENSE=
"""


class InstallError(NavtalkAgentError):
    """The install cannot proceed (no navtalk-agent command found, a file not writable)."""


@dataclass(frozen=True)
class PlannedFile:
    path: Path
    text: str
    mode: int
    keep_existing: bool  # a file the owner edits (profile, license): never overwritten


def executable(env: Mapping[str, str] | None = None) -> Path:
    """This installation's ``navtalk-agent`` command: beside the running interpreter (the
    venv's bin/), else on PATH. Absolute, as systemd wants it."""
    beside = Path(sys.executable).parent / "navtalk-agent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    env = os.environ if env is None else env
    found = shutil.which("navtalk-agent", path=env.get("PATH"))
    if found:
        return Path(found).absolute()
    raise InstallError(
        "cannot find the navtalk-agent command beside this Python or on PATH; "
        "install the package (pip install navtalk-agent) into the venv the service will use"
    )


def render_unit(template: str, exe: Path) -> str:
    if not exe.is_absolute() or any(c.isspace() for c in str(exe)):
        raise InstallError(f"{exe}: systemd needs an absolute path without spaces")
    return template.replace(PLACEHOLDER, str(exe))


def plan(
    *,
    user: bool,
    profile: str,
    exe: Path,
    prefix: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> list[PlannedFile]:
    """The files an install writes, with their final contents and modes."""
    env = os.environ if env is None else env
    if user:
        if prefix is not None:
            config_home = prefix / ".config"
        elif env.get("XDG_CONFIG_HOME"):
            config_home = Path(env["XDG_CONFIG_HOME"])
        else:
            config_home = Path(env.get("HOME") or Path.home()) / ".config"
        unit_dir, etc = config_home / "systemd" / "user", config_home / "navtalk-agent"
        template = data_file(f"systemd/user/{UNIT}")
    else:
        root = prefix if prefix is not None else Path("/")
        unit_dir, etc = root / "etc/systemd/system", root / "etc/navtalk-agent"
        template = data_file(f"systemd/{UNIT}")
    source = profile_path(profile)
    profile_text = (
        f"# navtalk-agent profile, from the shipped {source.name} by `navtalk-agent install`.\n"
        "# Edit freely: a new install keeps this file. Paths for the history and the bus\n"
        f"# come from the unit ({UNIT}); the license goes in the env file beside this one.\n\n"
        + source.read_text(encoding="utf-8")
    )
    return [
        PlannedFile(unit_dir / UNIT, render_unit(template.read_text("utf-8"), exe), 0o644, False),
        PlannedFile(etc / "agent.toml", profile_text, 0o644, True),
        PlannedFile(etc / "env", ENV_TEXT, 0o600, True),
    ]


def write(files: list[PlannedFile], out: TextIO) -> None:
    for f in files:
        if f.keep_existing and f.path.exists():
            print(f"kept     {f.path} (exists)", file=out)
            continue
        try:
            f.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.path.with_name(f".{f.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f.text)
            os.chmod(tmp, f.mode)  # whatever the umask
            os.replace(tmp, f.path)
        except OSError as exc:
            raise InstallError(f"cannot write {f.path}: {exc.strerror} (run as root?)") from exc
        print(f"wrote    {f.path} (mode {f.mode:04o})", file=out)


def next_steps(user: bool, files: list[PlannedFile]) -> str:
    ctl = "systemctl --user" if user else "systemctl"
    env_file = files[2].path
    return (
        f"next: put the license in {env_file} (NAVTALK_LICENSE=...), check the profile\n"
        f"      ({files[1].path}), then: {ctl} daemon-reload && {ctl} enable --now "
        f"navtalk-agent\n      logs: journalctl {'--user ' if user else ''}-u navtalk-agent -f"
    )


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=["systemd"], help="what to install for")
    p.add_argument("--user", action="store_true", help="a user service (kiosk in a desktop)")
    p.add_argument(
        "--profile",
        choices=["kiosk", "robot", "emulator"],
        help="the shipped profile to start from (default: robot, or kiosk with --user)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the files, write nothing")
    p.add_argument(
        "--prefix",
        type=Path,
        metavar="DIR",
        help="write under DIR (a staging root; the home directory with --user)",
    )


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    profile = args.profile or ("kiosk" if args.user else "robot")
    files = plan(user=args.user, profile=profile, exe=executable(), prefix=args.prefix)
    if args.dry_run:
        for f in files:
            print(f"# ---- {f.path} (mode {f.mode:04o})", file=out)
            print(f.text, end="" if f.text.endswith("\n") else "\n", file=out)
        print(next_steps(args.user, files), file=out)
        return 0
    write(files, out)
    print(next_steps(args.user, files), file=out)
    return 0
