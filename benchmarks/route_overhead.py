"""Routing overhead per query (issue 14's target: ≤ 5 ms p50 without the sentence embedding,
≤ 30 ms with it): the wall time `auto` spends deciding, before any model call.

Measured per question, over the traced questions (read back from ../shared/data), each stage
on its own and then together:

- features: `extract_features` (math extraction, the intent classifier's n-grams and shares,
  the difficulty counts);
- cells: the shipped calibrated policy's `plan` on those features;
- predictor: the per-query success predictor (router/predictor.py, fitted here on the same
  traces, not timed) predicting every strategy and planning; and the shipped one
  (`--policy predictor`, fitted on the router-v2 traces) as `auto` loads it;
- embedding: all-MiniLM-L6-v2 on the question, one at a time as a request would, on
  `--embed-threads` torch threads (1 by default; only with the `embed` extra installed). For
  reference: routing does not compute it, since as a predictor feature it did not pay
  (`router_lodo.py --embed`).

The figures are p50, p90 and mean in milliseconds after a warm-up pass; run it on an idle
machine (other work on the cores shows up in the tail, not much in the median).

    python benchmarks/route_overhead.py --runs benchmarks/traces/mixed-qwen2.5-coder-0.5b.jsonl.gz
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apportion.bench.datasets import restore_questions
from apportion.router.features import extract_features
from apportion.router.policy import CalibratedPolicy
from apportion.router.policy_file import PREDICTOR, load_policy
from apportion.router.predictor import fit_predicted_policy
from apportion.tools.store.embed import MiniLMEmbedder, minilm_available
from apportion.traces import read_results
from apportion.types import Budget


def timed(work: Callable[[str], Any], questions: Sequence[str]) -> list[float]:
    """Milliseconds per question, after one untimed pass (loads, caches, first-call costs)."""
    for q in questions[:20]:
        work(q)
    out = []
    for q in questions:
        start = time.perf_counter()
        work(q)
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(name: str, ms: Sequence[float]) -> str:
    ordered = sorted(ms)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"{name:<34}{statistics.median(ordered):>8.2f}{p90:>8.2f}"
            f"{statistics.fmean(ordered):>8.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True)
    parser.add_argument("--limit", type=int, default=500, help="questions timed")
    parser.add_argument("--embed-threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    results = restore_questions(r for path in args.runs for r in read_results(path))
    questions = list(dict.fromkeys(r.question for r in results))[: args.limit]
    predicted = fit_predicted_policy(results, 0.2)
    cells = CalibratedPolicy.load()
    shipped = load_policy(Path(PREDICTOR))
    budget = Budget()
    stages: dict[str, Callable[[str], Any]] = {
        "features": extract_features,
        "features + cells (shipped)": lambda q: cells.plan(extract_features(q), budget),
        "features + predictor": lambda q: predicted.plan(extract_features(q), budget),
        "features + predictor (shipped)": lambda q: shipped.plan(extract_features(q), budget),
    }
    if minilm_available():
        embedder = MiniLMEmbedder(threads=args.embed_threads)
        stages["embedding alone"] = lambda q: embedder.embed([q])
        stages["features + predictor + embedding"] = lambda q: (
            embedder.embed([q]), predicted.plan(extract_features(q), budget))
    else:
        print("the embed extra is not installed: no embedding figures")
    print(f"{len(questions)} questions; milliseconds per question")
    print(f"{'stage':<34}{'p50':>8}{'p90':>8}{'mean':>8}")
    for name, work in stages.items():
        print(row(name, timed(work, questions)))


if __name__ == "__main__":
    main()
