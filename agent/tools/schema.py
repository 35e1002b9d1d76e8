"""JSON schemas and argument validation for tool parameters, built from type hints.

A tool's parameters become one msgspec Struct (made with :func:`msgspec.defstruct`).
That one type gives both halves of the contract:

- the schema the model sees (:func:`parameters_schema`), in the NavTalk shape
  ``{"type": "object", "properties": {...}, "required": [...]}`` with every
  ``$ref`` inlined, so the declaration is self-contained;
- the validator (:func:`validate_arguments`), whose errors name the field and
  the problem (``Expected `int`, got `str` - at `$.degrees```) so the model can
  correct itself.

Arguments come from the model (or from anyone on the bus): :func:`validate_arguments`
bounds their size (:data:`MAX_ARGUMENTS_CHARS`) and nesting depth
(:data:`MAX_ARGUMENTS_DEPTH`) *before* decoding them, so no input can make the
decoder recurse until ``RecursionError``; whatever the input, it returns keyword
arguments or raises :class:`ArgumentsError`, nothing else.

Supported parameter types: ``str``, ``int``, ``float``, ``bool``, ``Enum``,
``Literal[...]``, ``list[...]`` / ``tuple[...]`` / ``dict[str, ...]``,
``X | None`` and defaults, dataclasses, msgspec Structs, TypedDicts, and
``Annotated[T, msgspec.Meta(...)]`` constraints (``ge``, ``max_length``, ...).
Recursive types cannot be inlined and are refused.
"""

from __future__ import annotations

import array
import copy
import inspect
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from agent.errors import ConfigError

__all__ = [
    "MAX_ARGUMENTS_CHARS",
    "MAX_ARGUMENTS_DEPTH",
    "ArgumentsError",
    "Param",
    "ToolDefinitionError",
    "inline_refs",
    "make_params_type",
    "parameters_schema",
    "parse_docstring",
    "validate_arguments",
]

_MISSING = inspect.Parameter.empty

MAX_ARGUMENTS_CHARS = 65_536  # the longest arguments_json a call may carry
MAX_ARGUMENTS_DEPTH = 32  # the deepest nesting of arrays and objects in it
MAX_ERROR_CHARS = 400  # an ArgumentsError's message is cut here (the model reads it)


class ToolDefinitionError(ConfigError):
    """A function cannot be turned into a tool (unsupported type, bad name, *args, ...)."""


class ArgumentsError(ValueError):
    """The arguments of a call do not match the tool's parameters (message names the field)."""


@dataclass(frozen=True)
class Param:
    """One parameter the model fills in."""

    name: str
    annotation: Any
    default: Any = _MISSING  # inspect.Parameter.empty when required
    doc: str = ""


def make_params_type(tool_name: str, params: Sequence[Param]) -> type[msgspec.Struct]:
    """One frozen Struct whose fields are the parameters (unknown fields are refused)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p in params:
        annotation = p.annotation
        if p.doc:
            annotation = Annotated[annotation, msgspec.Meta(description=p.doc)]
        if p.default is _MISSING:
            fields.append((p.name, annotation))
        else:
            fields.append((p.name, annotation, p.default))
    struct_name = "".join(part.capitalize() for part in re.split(r"[_-]+", tool_name)) + "Params"
    try:
        return msgspec.defstruct(
            struct_name or "Params",
            fields,
            kw_only=True,
            frozen=True,
            forbid_unknown_fields=True,
        )
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: bad parameters: {exc}") from exc


def parameters_schema(params_type: type[msgspec.Struct], tool_name: str = "") -> dict[str, Any]:
    """The NavTalk parameter schema of ``params_type``: an object, ``$ref``s inlined."""
    try:
        raw = msgspec.json.schema(params_type)
    except (TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1]  # "type <class 'complex'> is not supported"
        raise ToolDefinitionError(
            f"tool {tool_name or params_type.__name__!r}: a parameter type cannot be described "
            f"to the model in JSON schema: {reason}"
        ) from exc
    resolved = inline_refs(raw)
    return {
        "type": "object",
        "properties": resolved.get("properties", {}),
        "required": list(resolved.get("required", [])),
    }


def inline_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Replace every ``{"$ref": "#/$defs/X"}`` by a copy of ``$defs[X]`` and drop ``$defs``.

    Also drops ``title`` from inlined definitions (class names mean nothing to the model)
    and gives ``enum`` schemas a ``type`` when all their values share one.
    """
    defs: Mapping[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in stack:
                raise ToolDefinitionError(
                    f"recursive type {name!r} cannot be declared to the model; "
                    "flatten it or pass it as a JSON string"
                )
            target = copy.deepcopy(defs[name])
            target.pop("title", None)
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return resolve(merged, (*stack, name))
        out = {k: resolve(v, stack) for k, v in node.items() if k != "$defs"}
        if "enum" in out and "type" not in out:
            kinds = {_json_type(v) for v in out["enum"]}
            if len(kinds) == 1 and None not in kinds:
                out["type"] = kinds.pop()
        return out

    result = resolve(schema, ())
    assert isinstance(result, dict)
    return result


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def validate_arguments(
    params_type: type[msgspec.Struct],
    arguments_json: str | bytes,
    *,
    max_chars: int = MAX_ARGUMENTS_CHARS,
    max_depth: int = MAX_ARGUMENTS_DEPTH,
) -> dict[str, Any]:
    """Parse and check a call's JSON arguments; return keyword arguments for the handler.

    An empty string means no arguments (NavTalk sends ``""`` for parameterless calls).
    Raises :class:`ArgumentsError` with a message meant for the model, and nothing else,
    whatever ``arguments_json`` holds: its size and depth are checked before it is decoded.
    """
    if len(arguments_json) > max_chars:
        raise ArgumentsError(
            f"arguments are {len(arguments_json)} characters long; the limit is {max_chars}"
        )
    if isinstance(arguments_json, bytes):
        try:
            text = arguments_json.decode()
        except UnicodeDecodeError as exc:
            raise ArgumentsError(f"arguments are not valid UTF-8: {exc.reason}") from None
    else:
        text = arguments_json
    text = text.strip() or "{}"
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ArgumentsError(f"arguments are nested {depth} levels deep; the limit is {max_depth}")
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:  # ValidationError too (numbers out of range)
        raise ArgumentsError(_cut(f"arguments are not valid JSON: {exc}")) from None
    except UnicodeEncodeError:  # a lone surrogate in a str (never from the bus: UTF-8 only)
        raise ArgumentsError("arguments are not valid JSON: not encodable as UTF-8") from None
    if not isinstance(raw, dict):
        raise ArgumentsError(
            _cut(f"arguments must be a JSON object, got {type(raw).__name__}: {text[:80]}")
        )
    try:
        value = msgspec.convert(raw, params_type, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        top_level = " - at `$." not in message
        if top_level and message.startswith(("Object missing required", "Object contains unknown")):
            fields = params_type.__struct_fields__
            required = [f for f, d in zip(fields, _required_flags(params_type), strict=True) if d]
            message += f" (parameters: {', '.join(fields) or 'none'}; required: "
            message += f"{', '.join(required) or 'none'})"
        raise ArgumentsError(_cut(f"invalid arguments: {message}")) from None
    return {f: getattr(value, f) for f in value.__struct_fields__}


# Strings first (brackets inside them do not count), then every bracket. The string
# pattern is possessive and accepts an unterminated string up to the end, so the scan
# is linear for any input; what is not JSON is the decoder's to report.
_STRING_RE = re.compile(r'"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)')
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]++")
_BRACKET_STEP = bytes.maketrans(b"[]{}", bytes([1, 255, 1, 255]))  # 255 = -1 as a signed byte


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, in linear time, without decoding."""
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    if not brackets:
        return 0
    steps = array.array("b", brackets.encode("ascii").translate(_BRACKET_STEP))
    return max(0, max(itertools.accumulate(steps)))


def _cut(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "\u2026"


def _required_flags(params_type: type[msgspec.Struct]) -> list[bool]:
    """For each field, whether it is required."""
    fields = params_type.__struct_fields__
    defaults = params_type.__struct_defaults__
    return [True] * (len(fields) - len(defaults)) + [False] * len(defaults)


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_OTHER_SECTION_RE = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring.

    The description is the first paragraph, on one line. Parameter texts come from an
    ``Args:`` section (``name: text`` or ``name (type): text``, continuation lines indented).
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        first.append(line.strip())
    params: dict[str, str] = {}
    in_args = False
    base_indent = 0
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION_RE.match(stripped) and indent == 0:
            in_args, current, base_indent = True, None, -1
            continue
        if not in_args:
            continue
        if not stripped:
            current = None
            continue
        if indent == 0 and _OTHER_SECTION_RE.match(stripped):
            break  # "Returns:", "Raises:" ...
        if base_indent < 0:
            base_indent = indent
        match = _ARG_RE.match(stripped)
        if indent == base_indent and match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current is not None and indent > base_indent:
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(first), params
