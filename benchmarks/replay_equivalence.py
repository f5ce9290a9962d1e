"""Does new code replay a bench exactly as old code ran it? The same bench runs first on
`--old` (a source tree), filling a fresh completion cache, then on `--new` from that cache,
and the rows are compared field by field. Tool calls (SymPy, Z3, the sandbox) are timed afresh
on every run, so their wall and CPU seconds (and the energy and $ computed from them) differ
between any two runs; the script says which fields differed, per strategy.

    python benchmarks/replay_equivalence.py --old /path/to/old/src --new src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

FIELDS = ("answer", "correct", "confidence", "route", "intent", "error", "prompt_tokens",
          "completion_tokens", "flops", "wall_s", "cpu_s", "energy_j", "cost_usd", "calls",
          "stopped_for_budget")  # fmt: skip
BENCH = ["--dataset", "gsm8k", "--dataset", "strategyqa", "--dataset", "bbh:boolean_expressions",
         "--limit", "4", "--model", "smollm2-135m", "--max-tokens", "96", "--strategies",
         "direct,cot,program,symbolic,consistency:n=3,best_of_n:n=2,auto"]  # fmt: skip


def rows(path: Path) -> dict[tuple[str, str, str], dict[str, object]]:
    out = {}
    for line in (path / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[(r["dataset"], r["item_id"], r["strategy"])] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache.sqlite"
        for name, src in (("old", args.old), ("new", args.new)):
            env = {**os.environ, "PYTHONPATH": src, "APPORTION_THREADS": "1"}
            cmd = [sys.executable, "-m", "apportion.cli", "bench", *BENCH, "--cache", str(cache),
                   "--out", str(work / name)]  # fmt: skip
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
        old, new = rows(work / "old"), rows(work / "new")
        if old.keys() != new.keys():
            raise SystemExit(f"different rows: {len(old)} against {len(new)}")
        differing = Counter(
            (key[2], f) for key in old for f in FIELDS if old[key].get(f) != new[key].get(f)
        )
        print(f"{len(old)} rows, {sum(differing.values())} differing fields")
        for (strategy, field), n in sorted(differing.items()):
            print(f"  {strategy}: {field} in {n} rows")


if __name__ == "__main__":
    main()
