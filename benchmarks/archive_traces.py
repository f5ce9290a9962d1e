"""Archive bench traces for the repository: the rows of one or more runs (folders or results
files), each item × strategy once, gzipped, without the benchmark's own text (question and
gold answer), which stays in the shared data folder. Readers put it back from there by item
id (`apportion.bench.datasets.restore_questions`; `apportion calibrate` does so itself).

    python benchmarks/archive_traces.py runs/router-v2-0.5b-l25 \\
        -o benchmarks/traces/router-v2-qwen2.5-coder-0.5b.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import replace
from pathlib import Path

from apportion.bench.datasets import archive_row, restore_questions
from apportion.traces import RESULTS, read_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    seen: set[tuple[str, str, str]] = set()
    rows = []
    for run in args.runs:
        for row in read_results(run / RESULTS if run.is_dir() else run):
            key = (row.dataset, row.item_id, row.strategy)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    # a row's text is dropped only once it is known to come back whole from the shared data
    back = restore_questions([replace(r, question="", gold="") for r in rows])
    lost = [
        r for r, b in zip(rows, back, strict=True) if (r.question, r.gold) != (b.question, b.gold)
    ]
    if lost:
        raise SystemExit(f"{len(lost)} rows do not come back from the shared data, e.g. {lost[0]}")
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(archive_row(row)) + "\n")
    print(f"{len(rows)} rows → {args.out}")


if __name__ == "__main__":
    main()
