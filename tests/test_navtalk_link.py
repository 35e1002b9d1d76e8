"""The connection/retry core: handshake deadline, backoff reset after a healthy session."""

from __future__ import annotations

import random

from agent.backoff import FailureKind
from agent.navtalk.link import Link, LinkState, Outcome, RetryPolicy

T = FailureKind.TRANSIENT


def link(**kw: object) -> Link:
    base: dict[str, object] = dict(initial_s=1.0, max_s=100.0, factor=2.0, jitter=0.0)
    base.update(kw)
    return Link(RetryPolicy(**base), random.Random(1))  # type: ignore[arg-type]


def fail_once(lk: Link, *, healthy: bool = False, kind: FailureKind | None = T) -> Outcome:
    lk.opening("c")
    lk.opened(0.0)
    if healthy:
        lk.session_created()
    return lk.ended(kind)


def test_handshake_deadline_from_socket_open_to_session_updated() -> None:
    lk = link(handshake_timeout_s=5.0)
    lk.opening("c1")
    assert lk.state is LinkState.OPENING and lk.deadline is None
    lk.opened(10.0)
    assert lk.state is LinkState.HANDSHAKE and lk.deadline == 15.0
    assert not lk.handshake_expired(14.9) and lk.handshake_expired(15.0)
    lk.session_created()  # healthy, but no audio may flow before session.updated
    assert lk.state is LinkState.LIVE and lk.deadline == 15.0 and lk.handshake_expired(15.0)
    lk.session_updated()
    assert lk.deadline is None and not lk.handshake_expired(1e9)


def test_backoff_grows_over_consecutive_failures() -> None:
    lk = link()
    delays = [fail_once(lk).retry_in_s for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert lk.state is LinkState.WAITING and lk.failures == 4


def test_a_healthy_session_resets_backoff_and_failures() -> None:
    lk = link(max_attempts=2)
    out = fail_once(lk)
    assert out.retry_in_s == 1.0 and out.failures == 1
    for _ in range(10):  # ten healthy sessions lost in a row: never gives up, never grows
        out = fail_once(lk, healthy=True)
        assert out.state is LinkState.WAITING
        assert out.retry_in_s == 1.0 and out.failures == 1 and out.healthy


def test_max_attempts_counts_consecutive_failures() -> None:
    lk = link(max_attempts=3)
    assert fail_once(lk).state is LinkState.WAITING
    assert fail_once(lk).state is LinkState.WAITING
    out = fail_once(lk)
    assert out.state is LinkState.FAILED and out.failures == 3
    assert fail_once(lk).state is LinkState.WAITING  # counting starts over


def test_permanent_failure_and_no_reconnect_give_up_at_once() -> None:
    assert fail_once(link(), kind=FailureKind.PERMANENT).state is LinkState.FAILED
    assert fail_once(link(reconnect=False)).state is LinkState.FAILED


def test_ended_by_us_goes_idle_without_counting() -> None:
    lk = link()
    fail_once(lk)
    out = fail_once(lk, kind=None)
    assert out.state is LinkState.IDLE and out.retry_in_s is None
    assert lk.failures == 1
    lk.opening("c9")
    assert lk.attempts == 3 and lk.connection_id == "c9"
