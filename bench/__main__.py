"""``python -m bench [NAME...]``: run the benchmarks (all by default), each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sys.argv[1:] or sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        r = subprocess.run([sys.executable, "-m", f"bench.bench_{name}"], cwd=HERE.parent)
        if r.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    print(f"\nresults in {HERE / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
