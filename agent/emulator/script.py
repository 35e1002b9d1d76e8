"""The emulator's conversation script: what it hears, how it answers, and how a tool's output
becomes a spoken sentence.

A script is a TOML file (see ``default_script.toml`` for the format). :meth:`Script.load`
validates it and raises :class:`ScriptError` (a :class:`~agent.errors.ConfigError`) with one
line naming the file and the problem, for a missing file, bad TOML or a field of the wrong
type.

Replies built from a tool's output always speak a sentence, never raw JSON:
:func:`render` fills ``{output.key}`` / ``{args.key}`` placeholders with readable text
(:func:`readable`), and a template whose placeholder the output does not have falls back to
the generic ``"The result is: time 10:42."`` (:func:`generic_result`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

__all__ = [
    "Rule",
    "Script",
    "ScriptError",
    "generic_result",
    "readable",
    "render",
    "render_tool_reply",
]

MAX_SCRIPT_BYTES = 1 << 20
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


class ScriptError(ConfigError):
    """The emulator's script file is missing or invalid (the message is one line)."""


@dataclass(frozen=True, slots=True)
class Rule:
    match: str  # case-insensitive substring of what was heard
    reply: str = ""
    tool: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    regex: str = ""  # optional; named groups fill {name} in `arguments`


_TEXT_KEYS = ("greeting", "fallback", "tool_error_reply", "image_reply", "no_tool_reply")
_RULE_KEYS = {"match": str, "reply": str, "tool": str, "regex": str, "arguments": dict}


@dataclass(frozen=True, slots=True)
class Script:
    greeting: str = ""
    fallback: str = "I did not understand."
    tool_error_reply: str = "Sorry, that did not work: {error.message}"
    image_reply: str = "I can see the picture."
    no_tool_reply: str = "I cannot do that."
    hears: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Script:
        """Read a TOML script; ``None`` or "" = the built-in ``default_script.toml``.

        Raises :class:`ScriptError` (one line) when the file is missing or invalid."""
        where = str(path) if path else "default_script.toml"
        try:
            if path:
                p = Path(path)
                if p.stat().st_size > MAX_SCRIPT_BYTES:
                    raise ScriptError(f"emulator script {where}: larger than {MAX_SCRIPT_BYTES} B")
                raw = p.read_bytes()
            else:
                res = resources.files("agent.emulator").joinpath("default_script.toml")
                raw = res.read_bytes()
        except FileNotFoundError:
            raise ScriptError(f"emulator script {where}: no such file") from None
        except OSError as exc:
            raise ScriptError(f"emulator script {where}: cannot read ({exc.strerror})") from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ScriptError(f"emulator script {where}: not valid TOML ({first})") from exc
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "script") -> Script:
        """Build and validate; raises :class:`ScriptError` naming the offending key."""

        def bad(key: str, what: str) -> ScriptError:
            return ScriptError(f"emulator script {where}: {key} {what}")

        known = {*_TEXT_KEYS, "hears", "rules"}
        for key in d:
            if key not in known:
                raise bad(repr(key), f"is not a script key (known: {', '.join(sorted(known))})")
        base = cls()
        texts: dict[str, str] = {}
        for key in _TEXT_KEYS:
            value = d.get(key, getattr(base, key))
            if not isinstance(value, str):
                raise bad(key, f"must be a string, not {type(value).__name__}")
            texts[key] = value
        hears = d.get("hears", [])
        if not isinstance(hears, list) or not all(isinstance(h, str) for h in hears):
            raise bad("hears", "must be a list of strings")
        raw_rules = d.get("rules", [])
        if not isinstance(raw_rules, list):
            raise bad("rules", "must be an array of tables ([[rules]])")
        rules = []
        for i, r in enumerate(raw_rules):
            name = f"rules[{i}]"
            if not isinstance(r, dict):
                raise bad(name, "must be a table")
            for key, value in r.items():
                if key not in _RULE_KEYS:
                    raise bad(f"{name}.{key}", f"is not a rule key ({', '.join(_RULE_KEYS)})")
                if not isinstance(value, _RULE_KEYS[key]):
                    raise bad(f"{name}.{key}", f"must be a {_RULE_KEYS[key].__name__}")
            if not r.get("reply") and not r.get("tool"):
                raise bad(name, "needs a reply or a tool")
            if r.get("regex"):
                try:
                    re.compile(r["regex"])
                except re.error as exc:
                    why = f"is not a valid regular expression ({exc})"
                    raise bad(f"{name}.regex", why) from exc
            rules.append(
                Rule(
                    match=r.get("match", ""),
                    reply=r.get("reply", ""),
                    tool=r.get("tool", ""),
                    arguments=dict(r.get("arguments", {})),
                    regex=r.get("regex", ""),
                )
            )
        return cls(**texts, hears=tuple(hears), rules=tuple(rules))

    def find(self, text: str) -> tuple[Rule, dict[str, str]] | None:
        lowered = text.lower()
        for rule in self.rules:
            if rule.match and rule.match.lower() not in lowered:
                continue
            groups: dict[str, str] = {}
            if rule.regex:
                m = re.search(rule.regex, text, re.IGNORECASE)
                if m is None:
                    continue
                groups = {k: v.strip() for k, v in m.groupdict().items() if v is not None}
            return rule, groups
        return None


# --- turning values into speech ----------------------------------------------------------------


def readable(value: Any, depth: int = 0) -> str:
    """A value as words: ``{"time": "10:42", "zone": "UTC"}`` -> ``time 10:42, zone UTC``.

    Keys lose their underscores; lists are joined with commas; nesting is bounded."""
    if depth > 4:
        return "…"
    if isinstance(value, Mapping):
        parts = [f"{str(k).replace('_', ' ')} {readable(v, depth + 1)}" for k, v in value.items()]
        return ", ".join(p.strip() for p in parts) or "nothing"
    if isinstance(value, list | tuple):
        return ", ".join(readable(v, depth + 1) for v in value) or "nothing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "nothing"
    return str(value)


def generic_result(output: Any) -> str:
    """The sentence spoken when no template fits: ``The result is: time 10:42.``"""
    text = readable(output).rstrip(" .")
    return f"The result is: {text}."


class _Missing(Exception):
    pass


def _lookup(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            raise _Missing(path)
    return value


def render(template: str, context: Mapping[str, Any], *, strict: bool = False) -> str:
    """Replace ``{a.b.c}`` with ``context["a"]["b"]["c"]`` as readable text.

    An unknown placeholder stays as it is, or with ``strict`` raises :class:`KeyError`
    naming it (the tool-reply path then falls back to :func:`generic_result`)."""

    def sub(m: re.Match[str]) -> str:
        try:
            return readable(_lookup(context, m.group(1)))
        except _Missing:
            if strict:
                raise KeyError(m.group(1)) from None
            return m.group(0)

    return _PLACEHOLDER.sub(sub, template)


def render_tool_reply(template: str, output: Any, arguments: Mapping[str, Any]) -> str:
    """The sentence for a tool's result: the rule's template filled from ``output`` and
    ``args``; the generic sentence when the template is empty or names a missing field."""
    if not template:
        return generic_result(output)
    try:
        return render(template, {"output": output, "args": arguments}, strict=True)
    except KeyError:
        return generic_result(output)
