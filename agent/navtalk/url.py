"""The NavTalk connection URL, and redaction of the license from any text.

The license rides in the URL query (``?license=...``), so every string that may
contain the URL or the license (log lines, errors, bus messages) goes through
:func:`redact` first. A license passed to :func:`build_url` or
:func:`register_secret` is also removed wherever it appears literally.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlencode, urlsplit, urlunsplit

from agent.navtalk.settings import LICENSE_ENV

__all__ = ["REDACTED", "RedactFilter", "build_url", "redact", "register_secret"]

REDACTED = "***"
_MIN_SECRET_LEN = 4  # shorter strings would redact ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()
# `license=` in a query string, a JSON object, or key=value text; value up to a delimiter.
_LICENSE_PARAM = re.compile(r"""(?i)(license["']?\s*[=:]\s*["']?)([^&\s"'<>,;}]+)""")


def register_secret(secret: str) -> None:
    """Remember ``secret`` so :func:`redact` removes it wherever it appears."""
    if len(secret) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with every known license and every ``license=...`` value replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "license" not in text.lower():  # the regex costs ~60 us per kB; this ~1 us
        return text
    return _LICENSE_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


def build_url(
    base_url: str, license: str, *, name: str = "", avatar_id: str = "", model: str = ""
) -> str:
    """The connection URL: ``base_url`` + ``license`` + ``avatarId`` (wins) or ``name``.

    Existing query parameters of ``base_url`` are kept. Registers the license as a secret.
    """
    if not license:
        raise ValueError("a license is required")
    if not (name or avatar_id):
        raise ValueError("a character name or an avatarId is required")
    register_secret(license)
    params: list[tuple[str, str]] = [("license", license)]
    if avatar_id:  # [seed]: avatarId wins when both are given
        params.append(("avatarId", avatar_id))
    else:
        params.append(("name", name))
    if model:
        params.append(("model", model))
    parts = urlsplit(base_url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class RedactFilter(logging.Filter):
    """A logging filter that passes every record through :func:`redact`.

    Attach it to handlers (or to loggers that may see a URL, such as the one given to
    websockets, which logs the request line at DEBUG level).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# Every process knows the license of its environment as a secret from the start, so a tap,
# a recording or a log line never shows it, whoever wrote it (NAVTALK_LICENSE).
register_secret(os.environ.get(LICENSE_ENV, "").strip())
