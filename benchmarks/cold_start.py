"""Cold start of `apportion ask "What is 17*23+5?"` (the solver route) for two source trees,
interleaved, the first run of each dropped: the median wall time of the console script.

    python benchmarks/cold_start.py --tree before=/path/to/old/src --tree after=src --runs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    times: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(args.runs + 1):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": src}
            started = time.perf_counter()
            proc = subprocess.run(["apportion", "ask", "What is 17*23+5?"], env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            wall = time.perf_counter() - started
            if proc.returncode != 0 or proc.stdout.strip() != "396":
                raise SystemExit(f"{name}: {proc.stdout}{proc.stderr}")
            if i:  # the first run of each warms the page cache
                times[name].append(wall)
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.3f} s over {len(ts)} runs "
              f"(min {min(ts):.3f}, max {max(ts):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
