"""``make bench``: run every ``benchmarks/bench_*.py`` and print its ratios.

Each benchmark measures its own baseline in the same process and prints ratios against it, so
figures compare across machines; none of them is a unit test.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> int:
    benches = sorted(Path(__file__).parent.glob("bench_*.py"))
    if not benches:
        print("no benchmarks yet")
    for bench in benches:
        print(f"== {bench.stem}", flush=True)
        runpy.run_path(str(bench), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
