"""Retry policy: a pure failure classifier and an exponential backoff generator.

Both are pure (no clock, no sleeping, the random source injectable) so they are
unit-tested directly; the session service's shell does the waiting.
(Pattern: websockets ``asyncio/client.py`` ``process_exception`` + ``backoff``.)
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator

from agent.errors import PermanentSessionError, ProtocolError, TransientSessionError

__all__ = ["FailureKind", "backoff", "classify", "classify_server_message"]


class FailureKind(enum.Enum):
    TRANSIENT = "transient"  # a reconnect may cure it
    PERMANENT = "permanent"  # retrying cannot help; stop and tell a human


# Words in a server's close/fail text that mean "no money / no license": never retry.
_PERMANENT_WORDS = ("insufficient", "balance", "points", "license", "unauthori", "forbidden")
# HTTP statuses of a refused WebSocket handshake that retrying cannot cure.
_PERMANENT_HTTP = frozenset({400, 401, 402, 403, 404, 410})


def classify_server_message(message: str) -> FailureKind:
    """Classify the text of a ``conversation.connected.close``/``fail`` event.

    A close carrying ``Insufficient points`` [seed] (or naming the license) is permanent;
    any other close (idle timeout, server restart) is transient.
    """
    lowered = message.lower()
    if any(word in lowered for word in _PERMANENT_WORDS):
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


def classify(error: BaseException) -> FailureKind:
    """Whether a failure of the session is worth a reconnect."""
    if isinstance(error, PermanentSessionError):
        return FailureKind.PERMANENT
    if isinstance(error, TransientSessionError | ProtocolError | OSError | TimeoutError):
        return FailureKind.TRANSIENT
    status = _http_status(error)
    if status is not None:
        return FailureKind.PERMANENT if status in _PERMANENT_HTTP else FailureKind.TRANSIENT
    if type(error).__module__.startswith("websockets"):
        # ConnectionClosed, InvalidHandshake, ...: network-level trouble.
        if type(error).__name__ in ("InvalidURI", "InvalidProxy"):
            return FailureKind.PERMANENT
        return FailureKind.TRANSIENT
    return FailureKind.TRANSIENT


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of a refused handshake (websockets ``InvalidStatus``), if any."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def backoff(
    *,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    factor: float = 2.0,
    jitter: float = 0.25,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays before each retry: ``initial_s * factor**n`` capped at ``max_s``, each cut by a
    random fraction in ``[0, jitter)`` (so many devices do not reconnect in lockstep, even
    at the cap; the delay never exceeds ``max_s``).

    Infinite; the caller stops it (and makes a new one after a success).
    """
    if initial_s <= 0 or max_s < initial_s or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("need 0 < initial_s <= max_s, factor >= 1, 0 <= jitter <= 1")
    rand = rng if rng is not None else random.Random()
    delay = initial_s
    while True:
        yield delay * (1.0 - jitter * rand.random())
        delay = min(max_s, delay * factor)
