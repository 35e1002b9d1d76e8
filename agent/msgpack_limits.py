"""Bounds on MessagePack from the bus, checked before any decoder recurses into it.

msgspec decodes (and skips unknown fields) recursively: a body nested a thousand levels deep
raises RecursionError, and a body that announces millions of items costs time to refuse.
:func:`check_msgpack` walks the structure iteratively, with an explicit stack, and refuses
anything nested deeper than ``max_depth`` or holding more than ``max_items`` objects. It does
not validate: the typed decoder does that afterwards.

Fast path: each level of nesting needs its own container header byte (0x80-0x9f,
0xdc-0xdf), so a body with no more such bytes than ``max_depth`` cannot be too deep or
hold more containers than that; it still gets the walk when it is long enough to hold
more than ``max_items`` objects.
"""

from __future__ import annotations

__all__ = ["MsgpackLimitError", "check_msgpack"]

_CONTAINER_BYTES = bytes(range(0x80, 0xA0)) + bytes((0xDC, 0xDD, 0xDE, 0xDF))

# bytes after the head byte, for scalars of fixed size
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float32, float64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int8..64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1..16 (+ type byte)
}  # fmt: skip
# width of the length field of length-prefixed raw data (str, bin), and of ext (+ type byte)
_RAW = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


class MsgpackLimitError(ValueError):
    """The body is nested too deep, holds too many objects, or is cut short."""


def check_msgpack(data: bytes, *, max_depth: int, max_items: int) -> None:
    """Raise MsgpackLimitError unless the first object in ``data`` stays within the bounds.

    Runs in at most O(max_items) steps whatever the input.
    """
    containers = len(data) - len(data.translate(None, _CONTAINER_BYTES))
    if containers <= max_depth and len(data) <= max_items:
        return
    _walk(data, max_depth, max_items)


def _walk(data: bytes, max_depth: int, max_items: int) -> None:
    end = len(data)
    pos = 0
    items = 0
    stack: list[int] = []  # items left in each enclosing container
    left = 1  # the top-level object
    while True:
        while left == 0:
            if not stack:
                return
            left = stack.pop()
        if pos >= end:
            raise MsgpackLimitError("body cut short")
        head = data[pos]
        pos += 1
        left -= 1
        items += 1
        if items > max_items:
            raise MsgpackLimitError(f"more than {max_items} objects")
        if head <= 0x7F or head >= 0xE0:  # fixint
            continue
        if head <= 0x8F:
            count = (head & 0x0F) * 2
        elif head <= 0x9F:
            count = head & 0x0F
        elif head <= 0xBF:
            pos += head & 0x1F
            continue
        elif head in _FIXED:
            pos += _FIXED[head]
            continue
        elif head in _RAW or head in _EXT:
            width = _RAW.get(head) or _EXT[head]
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width + size + (head in _EXT)
            continue
        elif head in _ARRAY:
            width = _ARRAY[head]
            count = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif head in _MAP:
            width = _MAP[head]
            count = int.from_bytes(data[pos : pos + width], "big") * 2
            pos += width
        else:  # 0xc1: never used
            raise MsgpackLimitError(f"invalid byte 0x{head:02x}")
        if count:
            if len(stack) >= max_depth:
                raise MsgpackLimitError(f"nested deeper than {max_depth}")
            stack.append(left)
            left = count
