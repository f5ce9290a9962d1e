"""Summaries and the Pareto frontier: pure functions over bench results (apportion.traces,
which also holds the oracle they compare against)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apportion.bench.scoring import wilson_interval
from apportion.traces import ORACLE, ItemResult, is_adaptive, oracle


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
    }


def summarize_group(results: Sequence[ItemResult]) -> dict[str, Any]:
    n = len(results)
    k = sum(r.correct for r in results)
    lo, hi = wilson_interval(k, n)
    tokens = [r.prompt_tokens + r.completion_tokens for r in results]
    text = [r.f1 for r in results if r.kind == "text"]
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "mean_f1": float(np.mean([r.f1 for r in results])) if n else 0.0,
        # Token F1 over the text answers alone (SQuAD-style); None when there are none.
        "text_f1": float(np.mean(text)) if text else None,
        "flops": _stats([r.flops for r in results]),
        "tokens": _stats(tokens),
        "prompt_tokens_mean": float(np.mean([r.prompt_tokens for r in results])),
        "completion_tokens_mean": float(np.mean([r.completion_tokens for r in results])),
        "wall_s": _stats([r.wall_s for r in results]),
        "energy_j": _stats([r.energy_j for r in results]),
        "cost_usd": _stats([r.cost_usd for r in results]),
        # Items with no answer: the strategy declined, or the item raised (an error row).
        "errors": sum(r.error is not None for r in results),
        "raised": sum(r.error_type is not None for r in results),
    }


def strategies_in(results: Iterable[ItemResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(r.strategy, None)
    return list(seen)


def summarize(results: Sequence[ItemResult]) -> dict[str, Any]:
    """summary.json: per strategy and for the oracle, overall and by dataset.

    Only items that every strategy finished are compared, so a partial run stays fair."""
    results = complete_items(results)
    with_oracle = [*results, *oracle(results)]
    names = strategies_in(with_oracle)
    by_strategy = {s: [r for r in with_oracle if r.strategy == s] for s in names}
    datasets = sorted({r.dataset for r in results})
    oracle_routes: dict[str, int] = defaultdict(int)
    for r in by_strategy.get(ORACLE, []):
        if r.correct:
            oracle_routes[r.route] += 1
    return {
        "n_items": len({(r.dataset, r.item_id) for r in results}),
        "strategies": {s: summarize_group(rs) for s, rs in by_strategy.items()},
        "by_dataset": {
            d: {
                s: summarize_group([r for r in rs if r.dataset == d])
                for s, rs in by_strategy.items()
            }
            for d in datasets
        },
        "oracle_routes": dict(oracle_routes),
        "pareto_flops": [p.name for p in pareto_front(fixed_points(by_strategy, "flops"))],
        "pareto_energy": [p.name for p in pareto_front(fixed_points(by_strategy, "energy_j"))],
    }


def complete_items(results: Sequence[ItemResult]) -> list[ItemResult]:
    names = set(strategies_in(results)) - {ORACLE}
    per_item: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in results:
        per_item[(r.dataset, r.item_id)].add(r.strategy)
    full = {k for k, v in per_item.items() if names <= v}
    return [r for r in results if (r.dataset, r.item_id) in full and r.strategy != ORACLE]


@dataclass(frozen=True)
class Point:
    name: str
    cost: float
    accuracy: float


def points(by_strategy: dict[str, list[ItemResult]], metric: str) -> list[Point]:
    return [
        Point(
            s,
            float(np.mean([getattr(r, metric) for r in rs])),
            sum(r.correct for r in rs) / len(rs),
        )
        for s, rs in by_strategy.items()
        if rs
    ]


def fixed_points(by_strategy: dict[str, list[ItemResult]], metric: str) -> list[Point]:
    """The fixed strategies' points: the line an adaptive policy has to beat."""
    return [p for p in points(by_strategy, metric) if not is_adaptive(p.name)]


def pareto_front(pts: Iterable[Point]) -> list[Point]:
    """Points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front: list[Point] = []
    for p in sorted(pts, key=lambda p: (p.cost, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front
