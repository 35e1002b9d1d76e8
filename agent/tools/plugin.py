"""The plugin API: ``@tool`` turns a typed function into a tool the model can call.

.. code-block:: python

    from typing import Literal
    from agent.tools import ToolContext, tool

    @tool
    def lookup_reservation(name: str) -> dict[str, str]:
        \"\"\"Find a guest's reservation by family name.

        Args:
            name: The guest's family name, as they said it.
        \"\"\"
        ...

    @tool(timeout_s=5)
    async def turn_head(ctx: ToolContext, direction: Literal["left", "right"]) -> str:
        \"\"\"Turn the robot's head.\"\"\"
        ctx.publish("robot.command", RobotCommand(action="turn_head", ...))
        return "done"

- name: the function's name (or ``@tool(name=...)``); description: the docstring's
  first paragraph; parameter descriptions: its ``Args:`` section.
- parameters: from the type hints (see :mod:`agent.tools.schema`); a parameter
  annotated :class:`ToolContext` is not shown to the model: it receives the context.
- sync handlers run in a thread pool, async ones on the tools service's loop
  (an async handler must not block: use ``await``, or write it sync).
- the return value is sent to the model as JSON (anything msgspec can encode:
  dicts, lists, str, numbers, dataclasses, Structs, datetimes ...).
- raise :class:`agent.errors.ToolError` (with a category) for a clean failure
  message; any other exception becomes a ``handler_error`` result.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

import msgspec

from agent.errors import ErrorCategory, ToolError
from agent.messages import Message, ToolSpec
from agent.tools.schema import (
    Param,
    ToolDefinitionError,
    make_params_type,
    parameters_schema,
    parse_docstring,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from agent.config import Settings

__all__ = [
    "Camera",
    "LazyCamera",
    "Publish",
    "Tool",
    "ToolContext",
    "tool",
]

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # whole name: use fullmatch


class Publish(Protocol):
    """Publish a message on the bus (thread-safe in the tools service)."""

    def __call__(self, topic: str, msg: Message, *payload: bytes) -> None: ...


class Camera(Protocol):
    """What a tool sees of the camera (``hardware.camera.Camera`` satisfies it)."""

    def read(self) -> npt.NDArray[np.uint8]: ...  # one BGR frame, H x W x 3

    def close(self) -> None: ...


class LazyCamera:
    """The camera shared by every tool: opened on first read, one reader at a time.

    ``opener`` is called (once, under a lock) when a frame is first wanted; it raises
    :class:`DeviceError` when the camera cannot be opened (``ToolError`` with category
    ``device`` when there is none at all). Safe to use from handler threads.
    """

    def __init__(self, opener: Callable[[], Camera] | None):
        self._opener = opener
        self._camera: Camera | None = None
        self._lock = threading.Lock()

    def read(self) -> npt.NDArray[np.uint8]:
        with self._lock:
            if self._camera is None:
                if self._opener is None:
                    raise ToolError("no camera is configured on this device", ErrorCategory.DEVICE)
                self._camera = self._opener()
            return self._camera.read()

    def close(self) -> None:
        with self._lock:
            camera, self._camera = self._camera, None
        if camera is not None:
            camera.close()


@dataclass(frozen=True)
class ToolContext:
    """What a handler can use besides its arguments. Ask for it by annotation:
    ``def my_tool(ctx: ToolContext, ...)``."""

    call_id: str  # the model's call id (for logs and correlation)
    tool_name: str
    settings: Settings  # the whole configuration tree
    logger: logging.Logger  # "navtalk_agent.tools.<tool name>"
    _publish: Publish = field(repr=False)
    _camera: LazyCamera = field(repr=False)

    def publish(self, topic: str, msg: Message, *payload: bytes) -> None:
        """Publish ``msg`` on ``topic`` (see :mod:`agent.topics`); callable from any thread."""
        self._publish(topic, msg, *payload)

    @property
    def camera(self) -> Camera:
        """The device camera (opened on first read; DeviceError or ToolError when there is none)."""
        return self._camera


Handler = Callable[..., Any]


@dataclass(frozen=True, eq=False)
class Tool:
    """A function the model can call. Made by :func:`tool`; calling it calls the function."""

    name: str
    description: str
    fn: Handler = field(repr=False)
    params_type: type[msgspec.Struct] = field(repr=False)
    parameters: dict[str, Any] = field(repr=False)  # JSON schema, NavTalk shape
    timeout_s: float | None = None  # None: the configured default
    context_param: str | None = None  # the parameter that receives the ToolContext
    is_async: bool = False
    origin: str = ""  # where it was loaded from (module, entry point), for messages

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def spec(self, default_timeout_s: float) -> ToolSpec:
        """The catalog entry for this tool."""
        timeout_s = self.timeout_s if self.timeout_s is not None else default_timeout_s
        return ToolSpec(
            name=self.name,
            description=self.description,
            parameters_json=msgspec.json.encode(self.parameters).decode(),
            timeout_ms=max(1, round(timeout_s * 1000)),
        )


@overload
def tool(fn: Handler, /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, timeout_s: float | None = None, description: str | None = None
) -> Callable[[Handler], Tool]: ...


def tool(
    fn: Handler | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    description: str | None = None,
) -> Tool | Callable[[Handler], Tool]:
    """Make a tool of a typed function: ``@tool`` or ``@tool(name=..., timeout_s=...)``.

    Raises :class:`~agent.tools.schema.ToolDefinitionError` (a ConfigError) when the
    function cannot be declared: missing or unsupported type hints, ``*args``, a bad name.
    """

    def wrap(f: Handler) -> Tool:
        return make_tool(f, name=name, timeout_s=timeout_s, description=description)

    return wrap(fn) if fn is not None else wrap


def make_tool(
    fn: Handler,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    description: str | None = None,
) -> Tool:
    """The function behind :func:`tool`."""
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not NAME_RE.fullmatch(tool_name):
        raise ToolDefinitionError(
            f"tool name {tool_name!r} must be 1-64 letters, digits, '_' or '-'"
        )
    if timeout_s is not None and not timeout_s > 0:
        raise ToolDefinitionError(f"tool {tool_name!r}: timeout_s must be > 0, not {timeout_s}")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # NameError for a hint imported only under TYPE_CHECKING, ...
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot resolve type hints: {exc}") from exc
    summary, arg_docs = parse_docstring(inspect.getdoc(fn))
    params: list[Param] = []
    context_param: str | None = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"tool {tool_name!r}: parameter {p.name!r} must be a plain named parameter "
                "(no *args, **kwargs or positional-only)"
            )
        annotation = hints.get(p.name, _NO_HINT)
        if annotation is ToolContext:
            context_param = p.name
            continue
        if annotation is _NO_HINT:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: parameter {p.name!r} needs a type hint "
                "(the model is told the type)"
            )
        params.append(Param(p.name, annotation, p.default, arg_docs.get(p.name, "")))
    params_type = make_params_type(tool_name, params)
    schema = parameters_schema(params_type, tool_name)
    text = description if description is not None else summary
    if not text:
        raise ToolDefinitionError(
            f"tool {tool_name!r} needs a description: write a docstring (the model reads it)"
        )
    return Tool(
        name=tool_name,
        description=text,
        fn=fn,
        params_type=params_type,
        parameters=schema,
        timeout_s=timeout_s,
        context_param=context_param,
        is_async=_is_async(fn),
        origin=getattr(fn, "__module__", "") or "",
    )


_NO_HINT = object()


def _is_async(fn: Handler) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    return call is not None and inspect.iscoroutinefunction(call)
