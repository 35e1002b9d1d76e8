"""Find the tools: built-ins, installed plugins (entry points) and modules named in config.

Sources, in order:

1. the built-in tools (:mod:`agent.tools.builtin`) minus ``tools.disabled_builtins``;
2. every entry point in the group ``navtalk_agent.tools`` (``tools.entry_points``);
   an entry point may name a module, a :class:`Tool`, or a list of Tools;
3. every item of ``tools.modules``: ``package.module``, ``package.module:attr``,
   or a path to a ``.py`` file (``/opt/site/tools.py``, optionally ``:attr``).

Every :class:`Tool` found in a module is loaded. Two different tools with one
name are refused (:class:`ToolDefinitionError`), as is a module from the config
that cannot be imported. An installed plugin that fails to import is logged
and skipped, so one broken package does not take every tool down.

``tools.allow`` (empty = everything) decides which loaded tools are declared
to NavTalk and may run; calls to any other name get ``unknown_tool``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.errors import ConfigError
from agent.messages import ToolCatalog
from agent.tools.plugin import Tool
from agent.tools.schema import ToolDefinitionError
from agent.tools.settings import ToolsSettings

__all__ = [
    "ENTRY_POINT_GROUP",
    "ToolRegistry",
    "discover",
    "load_object",
    "tools_in",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "navtalk_agent.tools"


class ToolRegistry:
    """Loaded tools by name, and the subset that is declared (the allow-list)."""

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        allow: Iterable[str] = (),
        default_timeout_s: float = 10.0,
    ):
        self._tools: dict[str, Tool] = {}
        self._allow = tuple(allow)
        self.default_timeout_s = default_timeout_s
        self.problems: list[str] = []  # plugins that were skipped, for logs and health
        for t in tools:
            self.add(t)

    def add(self, tool: Tool, origin: str = "") -> None:
        """Add a tool; the same object twice is fine, two tools with one name are not."""
        have = self._tools.get(tool.name)
        if have is tool:
            return
        if have is not None:
            raise ToolDefinitionError(
                f"two tools are named {tool.name!r}: one from {have.origin or '?'}, one from "
                f"{origin or tool.origin or '?'}; rename one (@tool(name=...)) or, for a "
                "built-in, list it in tools.disabled_builtins"
            )
        if origin and origin != tool.origin:
            tool = _with_origin(tool, origin)
        self._tools[tool.name] = tool

    @property
    def loaded(self) -> Mapping[str, Tool]:
        """Every loaded tool, allowed or not."""
        return dict(self._tools)

    @property
    def declared(self) -> dict[str, Tool]:
        """The tools that are declared to the model and may run."""
        if not self._allow:
            return dict(self._tools)
        return {name: self._tools[name] for name in self._allow if name in self._tools}

    def missing_allowed(self) -> list[str]:
        """Names in the allow-list that no source provides (probably typos)."""
        return [name for name in self._allow if name not in self._tools]

    def catalog(self) -> ToolCatalog:
        """The ``tool.catalog`` message for the declared tools, sorted by name."""
        declared = self.declared
        return ToolCatalog(
            tools=[declared[name].spec(self.default_timeout_s) for name in sorted(declared)]
        )


def _with_origin(tool: Tool, origin: str) -> Tool:
    import dataclasses

    return dataclasses.replace(tool, origin=origin)


def tools_in(obj: object) -> list[Tool]:
    """The tools an entry point or config item names: a Tool, a module, or an iterable."""
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, types.ModuleType):
        names = getattr(obj, "__all__", None) or list(vars(obj))
        found: list[Tool] = []
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, Tool) and value not in found:
                found.append(value)
        return found
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        items = list(obj)
        bad = [type(i).__name__ for i in items if not isinstance(i, Tool)]
        if bad:
            raise ToolDefinitionError(f"not tools (use @tool): {', '.join(bad)}")
        return items
    raise ToolDefinitionError(
        f"expected a module, a Tool or a list of Tools, got {type(obj).__name__}"
    )


def load_object(spec: str) -> object:
    """Import ``package.module[:attr]`` or ``/path/file.py[:attr]``; ConfigError if impossible."""
    target, _, attr = spec.partition(":")
    if spec.count(":") > 1 or not target:
        raise ConfigError(f"tools.modules: {spec!r} is not 'package.module[:attr]' or 'file.py'")
    try:
        if target.endswith(".py") or "/" in target:
            module = _import_file(Path(target).expanduser())
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"tools.modules: cannot import {target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"tools.modules: {target!r} has no attribute {attr!r}") from exc


def _import_file(path: Path) -> types.ModuleType:
    if not path.is_file():
        raise ConfigError(f"tools.modules: no such file {str(path)!r}")
    name = f"navtalk_agent_tools_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"tools.modules: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)


def discover(
    settings: ToolsSettings, *, extra: Iterable[Tool] = (), group: str = ENTRY_POINT_GROUP
) -> ToolRegistry:
    """Build the registry from built-ins, entry points, config modules and ``extra`` tools."""
    from agent.tools.builtin import BUILTIN_TOOLS  # late: builtin imports this package

    registry = ToolRegistry(allow=settings.allow, default_timeout_s=settings.default_timeout_s)
    for t in BUILTIN_TOOLS:
        if t.name not in settings.disabled_builtins:
            registry.add(t, origin="built-in")
    if settings.entry_points:
        for ep in _entry_points(group):
            origin = f"entry point {ep.name} = {ep.value}" + (
                f" ({ep.dist.name})" if ep.dist is not None else ""
            )
            try:
                found = tools_in(ep.load())
            except Exception as exc:
                problem = f"{origin}: skipped: {type(exc).__name__}: {exc}"
                log.error("%s", problem, exc_info=not isinstance(exc, ToolDefinitionError))
                registry.problems.append(problem)
                continue
            for t in found:
                registry.add(t, origin=origin)
            log.info("= loaded %d tool(s) from %s", len(found), origin)
    for spec in settings.modules:
        obj = load_object(spec)
        try:
            found = tools_in(obj)
        except ToolDefinitionError as exc:
            raise ToolDefinitionError(f"tools.modules: {spec!r}: {exc}") from exc
        if not found:
            log.warning("tools.modules: %r defines no tool (decorate functions with @tool)", spec)
        for t in found:
            registry.add(t, origin=f"module {spec}")
        log.info("= loaded %d tool(s) from module %s", len(found), spec)
    for t in extra:
        registry.add(t)
    for name in registry.missing_allowed():
        log.warning("tools.allow names %r, but no tool has that name", name)
    log.info(
        "= tools declared: %s (loaded: %d)",
        ", ".join(sorted(registry.declared)) or "none",
        len(registry.loaded),
    )
    return registry
