"""Whether `apportion bench --workers N` (N processes, a model copy and threads/N threads
each) beats one process on all threads, for a local model on this machine.

Each configuration runs the same bench into a fresh completion cache, in deterministic mode
(so that answers do not depend on which items a process saw before), and reports its wall
time and its summed model time.

    python benchmarks/bench_workers.py --limit 10 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--strategies", default="cot")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workers", default="1,2", help="comma-separated N to try")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    print(f"{args.model}, {args.dataset} --limit {args.limit}, {args.strategies}, "
          f"--max-tokens {args.max_tokens}; {threads} threads in all")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in (int(x) for x in args.workers.split(",")):
            out = work / f"w{n}"
            cmd = [sys.executable, "-m", "apportion.cli", "bench", "--dataset", args.dataset,
                   "--limit", str(args.limit), "--strategies", args.strategies, "--model",
                   args.model, "--max-tokens", str(args.max_tokens), "--deterministic",
                   "--out", str(out), "--cache", str(work / f"w{n}.sqlite"), "--workers",
                   str(n)]  # fmt: skip
            env = {**os.environ, "APPORTION_THREADS": str(threads)}
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
            tokens = sum(r["completion_tokens"] for r in rows)
            correct = sum(bool(r["correct"]) for r in rows)
            print(f"--workers {n} ({max(1, threads // n)} threads each): {wall:.1f} s wall, "
                  f"{tokens} tokens generated, {correct}/{len(rows)} correct")  # fmt: skip


if __name__ == "__main__":
    main()
