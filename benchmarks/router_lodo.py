"""Leave-one-dataset-out evaluation of the routers on bench traces (issue 14): for each
dataset, the routers are built from the others' traces and replayed on it; then the ordinary
split (a stable half of every dataset) beside it.

Routers: `cells`, the calibrated policy (a plan per intent × difficulty cell,
router/calibrate.py), and `predicted`, the per-query success predictor (router/predictor.py).
Beside them: the best fixed strategy on the held-out data (chosen with hindsight) and the
oracle (each question's cheapest right strategy). Accuracy pooled over the held-out questions
with a Wilson 95% interval; FLOPs are mean FLOPs per question as charged (prompt tokens
counted in full, as if uncached).

    python benchmarks/router_lodo.py --runs benchmarks/traces/mixed-qwen2.5-coder-0.5b.jsonl.gz
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from apportion.bench.datasets import restore_questions
from apportion.bench.scoring import wilson_interval
from apportion.router.calibrate import DEFAULT_LAMBDA, calibrate, evaluate, traced_items
from apportion.router.policy import CalibratedPolicy, Policy
from apportion.router.predictor import PredictedPolicy, fit_predictor
from apportion.strategies.registry import default_registry
from apportion.traces import ItemResult, read_results

ROUTERS = ("cells", "predicted")


def routers(train: Sequence[ItemResult], lam: float) -> dict[str, Policy]:
    cells = CalibratedPolicy.from_dict(calibrate(train, lam=lam))
    items, strategies = traced_items(train)
    examples = [
        (features, {s: (outcomes[s].correct, outcomes[s].flops) for s in strategies})
        for features, outcomes in items
    ]
    predictor = fit_predictor(examples, strategies, closes=default_registry().always_answers)
    max_flops = max(predictor.expected_flops(s, "*") for s in strategies) or 1.0
    return {"cells": cells, "predicted": PredictedPolicy(predictor, lam, max_flops)}


def measure(
    results: Sequence[ItemResult], test: Callable[[str, str], bool], lam: float
) -> dict[str, tuple[int, float, float]]:
    """name → (n, accuracy, mean FLOPs) on the items `test` admits, routers built on the rest."""
    train = [r for r in results if not test(r.dataset, r.item_id)]
    ev = evaluate(routers(train, lam), results, keep=test)
    best = max(ev.fixed, key=lambda s: (ev.fixed[s][0], -ev.fixed[s][1]))
    out = {f"fixed: {best}": (ev.n, *ev.fixed[best])}
    for name in ROUTERS:
        got = ev.policies[name]
        assert got is not None, name
        out[name] = (ev.n, *got)
    out["oracle"] = (ev.n, *ev.oracle)
    return out


def show(title: str, rows: dict[str, list[tuple[int, float, float]]], oracle_key: str) -> None:
    print(f"\n{title}")
    print(f"{'':<24}{'accuracy [95% CI]':>26}{'mean FLOPs':>12}{'% oracle acc':>14}"
          f"{'× oracle FLOPs':>16}")  # fmt: skip
    n_all = sum(n for n, _, _ in rows[oracle_key])
    o_acc = sum(n * a for n, a, _ in rows[oracle_key]) / n_all
    o_flops = sum(n * f for n, _, f in rows[oracle_key]) / n_all
    for name, parts in rows.items():
        n = sum(p[0] for p in parts)
        right = round(sum(p[0] * p[1] for p in parts))
        flops = sum(p[0] * p[2] for p in parts) / n
        low, high = wilson_interval(right, n)
        print(f"{name:<24}{right / n:>9.1%} [{low:.1%}, {high:.1%}]".ljust(50)
              + f"{flops:>12.3g}{right / n / o_acc:>14.0%}{flops / o_flops:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True)
    parser.add_argument("--lam", type=float, default=DEFAULT_LAMBDA)
    args = parser.parse_args()
    # archived traces keep no question: it is read back from the shared data
    results = restore_questions(r for path in args.runs for r in read_results(path))
    datasets = sorted({r.dataset for r in results})
    lodo: dict[str, list[tuple[int, float, float]]] = {}
    print(f"{len(results)} traced rows, {len(datasets)} datasets, λ = {args.lam:g}")
    print(f"{'held out':<36}{'n':>5}  " + "  ".join(f"{k:>16}" for k in ("best fixed",
          *ROUTERS, "oracle")))  # fmt: skip
    for held in datasets:
        got = measure(results, lambda d, i, held=held: d == held, args.lam)
        fixed_key = next(k for k in got if k.startswith("fixed"))
        for name, value in got.items():
            lodo.setdefault("best fixed (per set)" if name == fixed_key else name, []).append(value)
        cells = [f"{got[k][1]:>6.0%} {got[k][2]:>9.2g}" for k in (fixed_key, *ROUTERS, "oracle")]
        print(f"{held:<36}{got['oracle'][0]:>5}  " + "  ".join(cells)
              + f"   ({fixed_key[7:]})")  # fmt: skip
    show("leave-one-dataset-out, pooled", lodo, "oracle")
    from apportion.router.calibrate import in_training_share

    split = measure(results, lambda d, i: not in_training_share(d, i, 0.5), args.lam)
    show("ordinary split (the held-out half of every dataset)",
         {("best fixed" if k.startswith("fixed") else k): [v] for k, v in split.items()},
         "oracle")  # fmt: skip


if __name__ == "__main__":
    main()
