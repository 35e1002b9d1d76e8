"""agent/ reads as libraries plus entry points: the applications live in agent/apps/, and no
library, service or device backend imports them (imports inside functions count). Only
``python -m agent`` (agent/__main__.py) reaches into the applications."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "agent" / "apps"
ENTRY_POINTS = {ROOT / "agent" / "__main__.py"}


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_library_imports_an_application() -> None:
    libraries = [
        p
        for top in ("agent", "services", "hardware")
        for p in (ROOT / top).rglob("*.py")
        if APPS not in p.parents and p not in ENTRY_POINTS
    ]
    assert len(libraries) > 20, libraries  # the walk found the code
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imported(p) if n.startswith("agent.apps"))
        for p in libraries
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_entry_point_calls_the_cli_app() -> None:
    assert "agent.apps.cli" in _imported(ROOT / "agent" / "__main__.py")


def test_applications_are_in_apps_and_small() -> None:
    for name in ("cli", "supervisor", "demo", "tap", "recording", "console"):
        assert (APPS / f"{name}.py").is_file(), name
        assert not (ROOT / "agent" / f"{name}.py").exists(), name
    sizes = {p.name: len(p.read_text().splitlines()) for p in APPS.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes
