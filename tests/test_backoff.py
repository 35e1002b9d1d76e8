"""The retry classifier and the backoff generator."""

from __future__ import annotations

import itertools
import random

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Response

from agent.backoff import FailureKind, backoff, classify, classify_server_message
from agent.errors import (
    ConfigError,
    PermanentSessionError,
    ProtocolError,
    TransientSessionError,
)


def test_classify_errors() -> None:
    assert classify(PermanentSessionError("bad license")) is FailureKind.PERMANENT
    assert classify(TransientSessionError("drop")) is FailureKind.TRANSIENT
    assert classify(ConnectionRefusedError()) is FailureKind.TRANSIENT
    assert classify(TimeoutError()) is FailureKind.TRANSIENT
    assert classify(ProtocolError("bad frame")) is FailureKind.TRANSIENT
    assert classify(ConnectionClosedError(None, None)) is FailureKind.TRANSIENT
    assert classify(ConfigError("x")) is FailureKind.TRANSIENT


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, FailureKind.PERMANENT),
        (403, FailureKind.PERMANENT),
        (502, FailureKind.TRANSIENT),
        (503, FailureKind.TRANSIENT),
    ],
)
def test_classify_refused_handshake(status: int, kind: FailureKind) -> None:
    assert classify(InvalidStatus(Response(status, "x", Headers()))) is kind


def test_classify_server_messages() -> None:
    assert classify_server_message("Insufficient points") is FailureKind.PERMANENT  # [seed]
    assert classify_server_message("License is invalid") is FailureKind.PERMANENT
    assert classify_server_message("Session closed") is FailureKind.TRANSIENT
    assert classify_server_message("") is FailureKind.TRANSIENT


def test_backoff_grows_caps_and_jitters() -> None:
    plain = list(itertools.islice(backoff(initial_s=1, max_s=10, factor=2, jitter=0), 6))
    assert plain == [1, 2, 4, 8, 10, 10]
    delays = list(
        itertools.islice(
            backoff(initial_s=1, max_s=10, factor=2, jitter=0.5, rng=random.Random(7)), 200
        )
    )
    assert all(0.5 <= d <= 10 for d in delays)
    assert len(set(delays)) > 150  # jittered
    assert 0.5 <= delays[0] <= 1.0
    assert len({d for d in delays[10:]}) == 190  # spread even at the cap
    again = list(
        itertools.islice(
            backoff(initial_s=1, max_s=10, factor=2, jitter=0.5, rng=random.Random(7)), 200
        )
    )
    assert again == delays  # seeded: reproducible


def test_backoff_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        next(backoff(initial_s=0))
    with pytest.raises(ValueError):
        next(backoff(initial_s=2, max_s=1))
