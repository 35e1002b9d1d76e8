"""Write requirements/lock-py311.txt: navtalk-agent's runtime dependencies, transitively,
pinned to the versions installed in the running venv (the one the tests passed with).

    .venv/bin/python scripts/lock.py > requirements/lock-py311.txt

``make setup`` installs with ``-c requirements/lock-py311.txt``; ``scripts/check-wheels.sh``
proves each pin has a binary wheel for x86-64 and aarch64 (Raspberry Pi OS), CPython 3.11.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement


def closure(root: str) -> dict[str, str]:
    env = {"extra": ""}
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            key = re.sub(r"[-_.]+", "-", req.name).lower()
            if key not in seen:
                seen[key] = metadata.distribution(req.name).version
                todo.append(req.name)
    return seen


def main() -> int:
    pins = closure("navtalk-agent")
    print("# Runtime dependencies of navtalk-agent, pinned (written by scripts/lock.py from the")
    print(
        f"# venv the tests passed with, Python {sys.version_info.major}.{sys.version_info.minor})."
    )
    print("# Every pin has a binary wheel for x86-64 and aarch64: scripts/check-wheels.sh.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
