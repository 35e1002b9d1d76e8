"""Logging setup shared by every process, with secrets redacted from every line.

Lines look like ``12:00:01.234 session  INFO  services.session: = ready``; the
process name is in every line so the supervisor's merged stderr reads well.
The NavTalk license (from the environment) and any ``license=`` URL parameter
are replaced by ``***`` in the final text of every record, whoever logged it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from agent.config import LogSettings, navtalk_license
from agent.navtalk.url import redact, register_secret

__all__ = ["RedactingFormatter", "redact", "setup_logging"]


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(settings: LogSettings, process: str, *, verbose: bool = False) -> None:
    """Configure the root logger for this process (stderr, plus a file when configured)."""
    register_secret(navtalk_license())  # set after this module was imported, too
    fmt = RedactingFormatter(
        f"%(asctime)s.%(msecs)03d {process:<10} %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.dir:
        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(settings.dir) / f"{process}.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else settings.level)
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level)
