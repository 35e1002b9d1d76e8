"""Writes ``config/default.toml`` from the settings classes themselves.

Every setting, its default value and the comment next to its declaration in
the source (the line's trailing ``# ...`` and the comment lines just above
it) become one commented TOML entry, so the reference profile cannot drift
from the code: ``tests/test_config.py`` checks that the committed file is
what this module writes. Run ``python -m agent.configdoc > config/default.toml``.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any

import msgspec

from agent.config import Settings

HEADER = """\
# navtalk-agent: every setting, with its default value and what it means.
# Generated from the code by `python -m agent.configdoc`; do not edit by hand.
# A profile (kiosk.toml, robot.toml, emulator.toml) lists only what it changes.
# Secrets are not settings: the NavTalk license comes from NAVTALK_LICENSE.
"""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _comments(cls: type) -> dict[str, list[str]]:
    """Field name -> comment lines, read from the class source."""
    out: dict[str, list[str]] = {}
    pending: list[str] = []
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return out
    for i, line in enumerate(lines[1:], start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not re.fullmatch(r"-*\s*[A-Za-z /&-]*-+", text):  # skip "--- device ---" rulers
                pending.append(text)
            else:
                pending = []
            continue
        m = re.match(r"\s+([a-z_][a-z0-9_]*)\s*:", line)
        if m:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            if not trailing and line.rstrip().endswith(("(", "[", "{")):
                # a value wrapped by the formatter: its comment sits on a continuation line
                for cont in lines[i + 1 : i + 6]:
                    if "  # " in cont:
                        trailing = cont.split("  # ", 1)[1].strip()
                        break
                    if cont.strip() in (")", "]", "}"):
                        break
            out[m.group(1)] = [*pending, *([trailing] if trailing else [])]
            pending = []
        elif not stripped or stripped.startswith(("def ", '"""', "@")):
            pending = []
    return out


def _struct_fields(obj: msgspec.Struct) -> list[str]:
    return [f for f in obj.__struct_fields__ if f != "source"]


def _emit(obj: msgspec.Struct, path: str, out: list[str]) -> None:
    notes = _comments(type(obj))
    scalars = [f for f in _struct_fields(obj) if not isinstance(getattr(obj, f), msgspec.Struct)]
    tables = [f for f in _struct_fields(obj) if isinstance(getattr(obj, f), msgspec.Struct)]
    if scalars and path:
        doc = (type(obj).__doc__ or "").strip().splitlines()
        out.append("")
        if doc:
            out.append(f"# {doc[0]}")
        out.append(f"[{path}]")
    for name in scalars:
        value = msgspec.to_builtins(getattr(obj, name))
        for line in notes.get(name, []):
            out.append(f"# {line}")
        out.append(f"{name} = {_toml_value(value)}")
    for name in tables:
        _emit(getattr(obj, name), f"{path}.{name}" if path else name, out)


def undocumented() -> list[str]:
    """Dotted names of settings that have no comment in the source."""
    missing: list[str] = []

    def walk(obj: msgspec.Struct, path: str) -> None:
        notes = _comments(type(obj))
        for name in _struct_fields(obj):
            value = getattr(obj, name)
            if isinstance(value, msgspec.Struct):
                walk(value, f"{path}{name}.")
            elif not notes.get(name):
                missing.append(f"{path}{name}")

    walk(Settings(), "")
    return missing


def render() -> str:
    out: list[str] = []
    _emit(Settings(), "", out)
    return HEADER + "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
