"""Fuzz of the envelope decoder: whatever bytes arrive, decode_envelope returns an Envelope or
raises MessageDecodeError, nothing else; and the depth check never refuses a legal body."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import MessageDecodeError
from agent.messages import (
    MAX_BODY_DEPTH,
    MAX_BODY_ITEMS,
    AnyMessage,
    AudioFrame,
    ConnectionEvent,
    Envelope,
    IceServer,
    ToolCatalog,
    ToolSpec,
    decode_envelope,
    encode_envelope,
)
from agent.msgpack_limits import MsgpackLimitError, check_msgpack

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = [cls.__name__ for cls in typing.get_args(AnyMessage)]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=16,
)


_enc = msgspec.msgpack.encode


@st.composite
def deep(draw: st.DrawFn) -> tuple[bytes, int]:
    """MessagePack nested 1..3000 levels deep, in lists and maps, and its depth."""
    depth = draw(st.sampled_from([MAX_BODY_DEPTH + 1, 1000, 3000]) | st.integers(1, 3000))
    pattern = draw(st.integers(0, 2**16 - 1))
    levels = [b"\x81\xa1k" if pattern >> (i % 16) & 1 else b"\x91" for i in range(depth)]
    return b"".join(levels) + _enc(draw(scalars)), depth


def _shallow(value: Any) -> tuple[bytes, int]:
    return _enc(value), _depth(value)


bodies = values.map(_shallow) | deep()


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Envelope-shaped bodies: a real kind with arbitrary (also deep) fields."""
    names = st.sampled_from(["call_id", "sdp", "x", "values", "tools", "sample_rate_hz"])
    fields = draw(st.dictionaries(names, bodies, max_size=3))
    pairs = _enc("kind") + _enc(draw(st.sampled_from(KINDS)))
    pairs += b"".join(_enc(name) + body for name, (body, _) in fields.items())
    msg = bytes([0x80 | (len(fields) + 1)]) + pairs
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    head = [_enc(draw(st.text(max_size=10))), *(_enc(draw(ints)) for _ in range(3))]
    tail = [draw(bodies)[0] for _ in range(draw(st.integers(0, 1)))]  # extra items are skipped
    return bytes([0x90 | (len(head) + 1 + len(tail))]) + b"".join(head) + msg + b"".join(tail)


def _depth(value: Any) -> int:
    """Levels of non-empty containers (an empty one opens no level to decode into)."""
    if isinstance(value, list | dict) and value:
        inner = value.values() if isinstance(value, dict) else value
        return 1 + max(map(_depth, inner))
    return 0


def _decodes_or_refuses(body: bytes) -> None:
    try:
        env = decode_envelope(body)
    except MessageDecodeError:
        return
    assert isinstance(env, Envelope)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(body: bytes) -> None:
    _decodes_or_refuses(body)


@FUZZ
@given(bodies)
def test_arbitrary_msgpack(body: tuple[bytes, int]) -> None:
    _decodes_or_refuses(body[0])


@settings(FUZZ, max_examples=100)
@given(envelopes())
def test_envelope_shaped_msgpack(body: bytes) -> None:
    _decodes_or_refuses(body)


VALID = [
    encode_envelope(Envelope("mic", 1, 2, 3, AudioFrame(sample_rate_hz=24000, stream_id="s"))),
    encode_envelope(
        Envelope(
            "session",
            9,
            1,
            2,
            ConnectionEvent(
                status="success", ice_servers=[IceServer(urls=["stun:x"], username="u")]
            ),  # type: ignore[arg-type]
        )
    ),
    encode_envelope(
        Envelope(
            "tools",
            2,
            0,
            0,
            ToolCatalog(tools=[ToolSpec(name="t", description="d", parameters_json="{}")]),
        )
    ),
]


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_mutated_valid_bodies(body: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(body)
    for at, byte in flips:
        data[at % len(data)] = byte
    _decodes_or_refuses(bytes(data[: max(cut, 1)]))


@FUZZ
@given(bodies)
def test_the_depth_check_is_exact(case: tuple[bytes, int]) -> None:
    body, depth = case
    try:
        check_msgpack(body, max_depth=MAX_BODY_DEPTH, max_items=MAX_BODY_ITEMS)
    except MsgpackLimitError as exc:
        assert depth > MAX_BODY_DEPTH, (depth, exc)
    else:
        assert depth <= MAX_BODY_DEPTH


def test_every_legal_message_passes_the_check() -> None:
    for body in VALID:
        assert decode_envelope(body).seq in (1, 2, 9)
