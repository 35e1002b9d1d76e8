"""Discovery: built-ins, entry points (the example package, installed) and config modules."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.errors import ConfigError
from agent.tools.registry import ENTRY_POINT_GROUP, ToolRegistry, discover, load_object
from agent.tools.schema import ToolDefinitionError
from agent.tools.settings import ToolsSettings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "reception-tools"
BUILTINS = {"end_conversation", "get_current_time", "set_volume", "take_photo"}


@pytest.fixture(scope="session")
def reception_installed() -> None:
    """The example plugin package, installed in the test venv (the Makefile does it too)."""
    try:
        importlib.metadata.distribution("navtalk-reception-tools")
    except importlib.metadata.PackageNotFoundError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "-e", str(EXAMPLE)],
            check=True,
            timeout=300,
        )
        # An editable install works through a .pth file, read at interpreter start: read it now.
        site.addsitedir(sysconfig.get_paths()["purelib"])
        importlib.invalidate_caches()
    importlib.metadata.distribution("navtalk-reception-tools")


SITE_TOOLS = '''
from typing import Literal
from agent.tools import tool

@tool
def open_door(door: Literal["front", "garage"]) -> str:
    """Open a door of the building."""
    return f"{door} door open"

@tool(name="ring-bell")
def ring() -> str:
    """Ring the bell."""
    return "ding"

NOT_A_TOOL = 3
GROUP = [open_door]
'''


@pytest.fixture
def site_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "site_tools_for_test.py"
    path.write_text(SITE_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("site_tools_for_test", None)


def test_builtins_alone() -> None:
    reg = discover(ToolsSettings(entry_points=False))
    assert set(reg.declared) == BUILTINS
    assert all(t.origin == "built-in" for t in reg.declared.values())
    reg = discover(ToolsSettings(entry_points=False, disabled_builtins=("take_photo",)))
    assert set(reg.declared) == BUILTINS - {"take_photo"}


def test_entry_point_discovery(reception_installed: None) -> None:
    reg = discover(ToolsSettings())
    assert {"lookup_reservation", "turn_head"} <= set(reg.declared)
    assert "entry point reception = reception_tools" in reg.declared["turn_head"].origin
    # only the plugin under test: the venv may hold other plugins, even broken ones
    assert [p for p in reg.problems if "reception" in p] == []
    catalog = {s.name: s for s in reg.catalog().tools}
    params = json.loads(catalog["turn_head"].parameters_json)
    assert params["properties"]["direction"] == {
        "type": "string",
        "enum": ["center", "left", "right"],  # msgspec sorts enum values
        "description": "Where to turn: left, right, or back to center.",
    }
    assert params["required"] == ["direction"]
    assert catalog["turn_head"].timeout_ms == 5000
    assert set(discover(ToolsSettings(entry_points=False)).declared) == BUILTINS


def test_config_modules_by_name_path_and_attribute(site_tools: Path) -> None:
    for spec in ("site_tools_for_test", str(site_tools)):
        reg = discover(ToolsSettings(entry_points=False, modules=(spec,)))
        assert set(reg.declared) == BUILTINS | {"open_door", "ring-bell"}
        assert reg.declared["open_door"].origin == f"module {spec}"
    reg = discover(ToolsSettings(entry_points=False, modules=("site_tools_for_test:GROUP",)))
    assert set(reg.declared) == BUILTINS | {"open_door"}


def test_allow_list_decides_what_is_declared(site_tools: Path) -> None:
    settings = ToolsSettings(
        entry_points=False,
        modules=("site_tools_for_test",),
        allow=("open_door", "get_current_time", "typo_tool"),
    )
    reg = discover(settings)
    assert set(reg.declared) == {"open_door", "get_current_time"}
    assert [s.name for s in reg.catalog().tools] == ["get_current_time", "open_door"]
    assert "ring-bell" in reg.loaded
    assert reg.missing_allowed() == ["typo_tool"]


def test_config_module_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        discover(ToolsSettings(entry_points=False, modules=("no_such_module_xyz",)))
    with pytest.raises(ConfigError, match="no such file"):
        discover(ToolsSettings(entry_points=False, modules=(str(tmp_path / "nope.py"),)))
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        load_object("json:missing")
    with pytest.raises(ConfigError, match="is not"):
        load_object("a:b:c")
    with pytest.raises(ToolDefinitionError, match="expected a module"):
        discover(ToolsSettings(entry_points=False, modules=("json:dumps",)))
    broken = tmp_path / "broken_tools.py"
    broken.write_text("raise RuntimeError('half-written plugin')\n")
    with pytest.raises(ConfigError, match="half-written plugin"):
        discover(ToolsSettings(entry_points=False, modules=(str(broken),)))


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    clash = tmp_path / "clash_tools.py"
    clash.write_text(
        textwrap.dedent(
            '''
            from agent.tools import tool

            @tool
            def get_current_time() -> str:
                """The time, our way."""
                return "noon"
            '''
        )
    )
    with pytest.raises(ToolDefinitionError, match="disabled_builtins"):
        discover(ToolsSettings(entry_points=False, modules=(str(clash),)))
    reg = discover(
        ToolsSettings(
            entry_points=False, modules=(str(clash),), disabled_builtins=("get_current_time",)
        )
    )
    assert reg.declared["get_current_time"].description == "The time, our way."
    same = reg.declared["get_current_time"]
    reg.add(same)  # the same tool twice (entry point and config) is not a clash


def test_broken_installed_plugin_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake installed distribution whose entry point fails to import."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbroken = broken_plugin_mod_xyz\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg = discover(ToolsSettings())
    assert BUILTINS <= set(reg.declared)
    # only the plugin under test: the venv may hold other plugins, even broken ones
    mine = [p for p in reg.problems if "broken_plugin_mod_xyz" in p]
    assert len(mine) == 1 and "entry point broken = broken_plugin_mod_xyz" in mine[0]


def test_settings_from_toml() -> None:
    from agent.config import loads

    s = loads(
        '[tools]\nmodules = ["a.b"]\nallow = ["x"]\ndisabled_builtins = ["take_photo"]\n'
        'timezone = "Europe/Paris"\npool_size = 2\n'
    ).tools
    assert s.modules == ("a.b",) and s.disabled_builtins == ("take_photo",) and s.pool_size == 2
    for bad in ('timezone = "Mars/Base"', 'disabled_builtins = ["nope"]', "pool_size = 0"):
        with pytest.raises(ConfigError, match="tools"):
            loads(f"[tools]\n{bad}\n")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"allow": ["bad name"]}, ToolsSettings)


def test_empty_registry_catalog() -> None:
    assert ToolRegistry().catalog().tools == []


INTEGRATOR_TOOLS = '''
from agent.tools import tool

@tool
def integrator_ping() -> str:
    """An integrator's own tool, installed beside navtalk-agent."""
    return "pong"
'''


@pytest.mark.timeout(240)
def test_suite_passes_with_other_plugins_installed(tmp_path: Path) -> None:
    """The registry and service tests pass in a venv that also holds an integrator's
    plugins, a working one and a broken one. Nothing is installed: a distribution made of
    a ``*.dist-info`` directory on ``sys.path`` (PYTHONPATH) of a subprocess."""
    site_dir = tmp_path / "site"
    dist = site_dir / "integrator_tools-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: integrator-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "integrator = integrator_tools_mod\n"
        "integrator_broken = integrator_missing_mod\n"
    )
    (site_dir / "integrator_tools_mod.py").write_text(INTEGRATOR_TOOLS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site_dir), str(ROOT)])}
    # the extra plugins are seen (else this test would prove nothing)
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            "from agent.tools.registry import discover\n"
            "from agent.tools.settings import ToolsSettings\n"
            "reg = discover(ToolsSettings())\n"
            "print(sorted(reg.declared)); print(reg.problems)\n",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert seen.returncode == 0, seen.stderr
    assert "'integrator_ping'" in seen.stdout and "integrator_missing_mod" in seen.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_tools_registry.py",
            "tests/test_tools_service.py",
            "-k",
            "not test_suite_passes_with_other_plugins_installed and not sigkill",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
