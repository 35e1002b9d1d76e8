"""@tool: names, descriptions and the JSON schema of each supported parameter type."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import pytest

from agent.tools import Tool, ToolContext, tool
from agent.tools.schema import (
    ArgumentsError,
    ToolDefinitionError,
    inline_refs,
    parse_docstring,
    validate_arguments,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    """A point on the floor plan."""

    x: int
    y: float = 0.0


class Guest(msgspec.Struct):
    """A guest."""

    name: str
    vip: bool = False


class Box(TypedDict):
    width: int


def _props(t: Tool) -> dict[str, Any]:
    assert t.parameters["type"] == "object"
    assert set(t.parameters) == {"type", "properties", "required"}  # the NavTalk shape
    assert "$defs" not in json.dumps(t.parameters) and "$ref" not in json.dumps(t.parameters)
    props: dict[str, Any] = t.parameters["properties"]
    return props


def _one(annotation: Any, default: Any = dataclasses.MISSING) -> tuple[dict[str, Any], bool]:
    """Schema of a single parameter ``v`` and whether it is required."""
    if default is dataclasses.MISSING:

        def f(v):  # type: ignore[no-untyped-def]
            """Doc."""

    else:

        def f(v=default):  # type: ignore[no-untyped-def]
            """Doc."""

    f.__annotations__ = {"v": annotation}
    t = tool(f)
    return _props(t)["v"], "v" in t.parameters["required"]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (Literal["left", "right"], {"type": "string", "enum": ["left", "right"]}),
        (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
        (Color, {"type": "string", "enum": ["blue", "red"]}),
        (Level, {"type": "integer", "enum": [1, 2]}),
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (
            Annotated[int, msgspec.Meta(ge=0, le=90)],
            {"type": "integer", "minimum": 0, "maximum": 90},
        ),
        (Annotated[str, msgspec.Meta(max_length=5)], {"type": "string", "maxLength": 5}),
    ],
    ids=lambda v: getattr(v, "__name__", None) or str(v)[:30],
)
def test_scalar_and_container_types(annotation: Any, expected: dict[str, Any]) -> None:
    schema, required = _one(annotation)
    assert schema == expected
    assert required


def test_optional_and_default() -> None:
    schema, required = _one(str | None, None)
    assert schema == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    assert not required
    schema, required = _one(int, 30)
    assert schema == {"type": "integer", "default": 30}
    assert not required


def test_dataclass_struct_and_typeddict_are_inlined() -> None:
    schema, _ = _one(Point)
    assert schema == {
        "type": "object",
        "description": "A point on the floor plan.",
        "properties": {"x": {"type": "integer"}, "y": {"type": "number", "default": 0.0}},
        "required": ["x"],
    }
    schema, _ = _one(list[Guest])
    assert schema["items"]["properties"]["name"] == {"type": "string"}
    assert schema["items"]["required"] == ["name"]
    schema, _ = _one(Box)
    assert schema["properties"] == {"width": {"type": "integer"}}


def test_description_args_section_and_context_parameter() -> None:
    @tool
    def turn(ctx: ToolContext, direction: Literal["left", "right"], degrees: int = 30) -> str:
        """Turn the robot's head
        towards the guest.

        A second paragraph the model does not need.

        Args:
            direction: Where to turn.
            degrees (int): How far,
                in degrees.

        Returns:
            A confirmation.
        """
        return "ok"

    assert turn.name == "turn"
    assert turn.description == "Turn the robot's head towards the guest."
    assert turn.context_param == "ctx"
    props = _props(turn)
    assert list(props) == ["direction", "degrees"]  # ctx is not shown to the model
    assert props["direction"]["description"] == "Where to turn."
    assert props["degrees"]["description"] == "How far, in degrees."
    assert turn.parameters["required"] == ["direction"]
    assert turn(None, "left") == "ok"  # a Tool still calls its function


def test_decorator_options_and_spec() -> None:
    @tool(name="open-door", timeout_s=2.5, description="Open the front door.")
    async def door() -> None:
        pass

    assert door.name == "open-door" and door.is_async and door.timeout_s == 2.5
    spec = door.spec(default_timeout_s=10)
    assert spec.timeout_ms == 2500
    assert json.loads(spec.parameters_json) == {"type": "object", "properties": {}, "required": []}
    assert (spec.name, spec.description) == ("open-door", "Open the front door.")

    @tool
    def plain() -> None:
        """Plain."""

    assert plain.spec(default_timeout_s=7).timeout_ms == 7000


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("def f(x):\n    'Doc.'", "needs a type hint"),
        ("def f(*args: int):\n    'Doc.'", "plain named parameter"),
        ("def f(x: int, /):\n    'Doc.'", "plain named parameter"),
        ("def f(x: int): pass", "needs a description"),
        ("def f(x: 'Decimal'):\n    'Doc.'", "cannot resolve type hints"),
        ("def f(x: complex):\n    'Doc.'", "tool 'f'.*complex'> is not supported"),
    ],
)
def test_definition_errors(source: str, needle: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(ToolDefinitionError, match=needle):
        tool(namespace["f"])


def test_bad_names_and_timeouts() -> None:
    def f() -> None:
        """Doc."""

    with pytest.raises(ToolDefinitionError, match="tool name"):
        tool(name="has space")(f)
    with pytest.raises(ToolDefinitionError, match="timeout_s"):
        tool(timeout_s=0)(f)


def test_recursive_type_is_refused() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
    }
    with pytest.raises(ToolDefinitionError, match="recursive"):
        inline_refs(schema)


def test_validation_errors_name_the_field() -> None:
    @tool
    def f(
        direction: Literal["left", "right"],
        p: Point,
        degrees: Annotated[int, msgspec.Meta(ge=0, le=90)] = 30,
    ) -> None:
        """Doc."""

    def err(args: str) -> str:
        with pytest.raises(ArgumentsError) as info:
            validate_arguments(f.params_type, args)
        return str(info.value)

    assert "Invalid enum value 'up' - at `$.direction`" in err('{"direction": "up", "p": {"x": 1}}')
    assert "Expected `int`, got `str` - at `$.p.x`" in err('{"direction": "left", "p": {"x": "1"}}')
    assert "Expected `int` <= 90 - at `$.degrees`" in err(
        '{"direction": "left", "p": {"x": 1}, "degrees": 91}'
    )
    missing = err('{"p": {"x": 1}}')
    assert "missing required field `direction`" in missing and "required: direction, p" in missing
    assert "unknown field `speed`" in err('{"direction": "left", "p": {"x": 1}, "speed": 3}')
    assert "not valid JSON" in err("{direction: left}")
    assert "must be a JSON object" in err("[1, 2]")
    ok = validate_arguments(f.params_type, '{"direction": "left", "p": {"x": 1}}')
    assert ok == {"direction": "left", "p": Point(x=1), "degrees": 30}


def test_empty_arguments_mean_no_arguments() -> None:
    @tool
    def now() -> str:
        """Now."""
        return "now"

    assert validate_arguments(now.params_type, "") == {}
    assert validate_arguments(now.params_type, "  ") == {}


def test_parse_docstring_edge_cases() -> None:
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("One line.") == ("One line.", {})
    desc, params = parse_docstring("Summary.\n\nArgs:\n    a: first\n\n    b: second\n")
    assert desc == "Summary." and params == {"a": "first", "b": "second"}
