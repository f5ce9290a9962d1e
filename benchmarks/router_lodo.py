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

Two fixed baselines: the one strategy best over all held-out questions pooled (what a user
without a router would pick), and the best per held-out set chosen with hindsight (which no
router can know). Where the traces hold plans on an expert or another model (issue 16), the
routers are built twice: with every traced strategy, and from the request's own model's
strategies only (`cells, own model`: auto where no expert is installed). The items an expert
was trained on (its manifest's `data.sources`) are left out of every figure. `--embed` gives
the predictor the question's MiniLM sentence embedding as well (the `embed` extra). Only the
questions traced with every strategy the files hold are scored (a router's plan can only be
replayed where each of its steps was traced); the script says how many it left out.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from apportion.bench.datasets import questions_by_id, restore_questions
from apportion.bench.frontier import complete_items
from apportion.bench.scoring import wilson_interval
from apportion.config import Settings
from apportion.experts.book import ExpertBook
from apportion.router.calibrate import (
    DEFAULT_LAMBDA,
    calibrate,
    evaluate,
    in_training_share,
    on_own_model,
    seen_by_experts,
)
from apportion.router.policy import CalibratedPolicy, Policy
from apportion.router.predictor import fit_predicted_policy
from apportion.tools.store.embed import Embedder, MiniLMEmbedder
from apportion.traces import ItemResult, read_results

ROUTERS = ("cells", "predicted")
OWN = "cells, own model"


class MemoEmbedder:
    """An embedder that embeds each text once: every fold asks again for the same questions."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.seen: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        new = sorted({t for t in texts if t not in self.seen})
        if new:
            self.seen.update(zip(new, self.inner.embed(new), strict=True))
        return np.stack([self.seen[t] for t in texts])


def routers(
    train: Sequence[ItemResult], lam: float, embedder: Embedder | None = None
) -> dict[str, Policy]:
    cells = CalibratedPolicy.from_dict(calibrate(train, lam=lam))
    found: dict[str, Policy] = {}
    if not all(on_own_model(r.strategy) for r in train):
        own = [r for r in train if on_own_model(r.strategy)]
        found[OWN] = CalibratedPolicy.from_dict(calibrate(own, lam=lam))
    predicted = fit_predicted_policy(train, lam, embedder=embedder)
    return {"cells": cells, **found, "predicted": predicted}


def measure(
    results: Sequence[ItemResult], test: Callable[[str, str], bool], lam: float,
    embedder: Embedder | None = None,
) -> tuple[dict[str, tuple[int, float, float]], dict[str, tuple[int, float, float]]]:
    """(name → (n, accuracy, mean FLOPs) of the routers, the hindsight-best fixed strategy and
    the oracle; strategy → the same of every fixed strategy) on the items `test` admits,
    routers built on the rest."""
    train = [r for r in results if not test(r.dataset, r.item_id)]
    ev = evaluate(routers(train, lam, embedder), results, keep=test)
    best = max(ev.fixed, key=lambda s: (ev.fixed[s][0], -ev.fixed[s][1]))
    out = {f"fixed: {best}": (ev.n, *ev.fixed[best])}
    for name, got in ev.policies.items():
        assert got is not None, name
        out[name] = (ev.n, *got)
    out["oracle"] = (ev.n, *ev.oracle)
    return out, {s: (ev.n, *v) for s, v in ev.fixed.items()}


def plot(path: Path, fixed: dict[str, tuple[float, float]],
         routers: dict[str, tuple[float, float]], title: str) -> None:
    """Accuracy against mean FLOPs: the fixed strategies and their Pareto line, the routers
    and the oracle (name → (accuracy, FLOPs)); tool-only strategies (0 FLOPs) on a floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = [f for _, f in [*fixed.values(), *routers.values()] if f > 0]
    floor = min(costs) / 10
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=110)
    ax.set_xscale("log")
    ax.set_xlabel("mean FLOPs per question, as charged (0 FLOPs drawn a decade below the cheapest)")
    ax.set_ylabel("accuracy, %")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(True, which="both", alpha=0.25)
    front: list[tuple[float, float]] = []
    for acc, flops in sorted(fixed.values(), key=lambda v: (v[1], -v[0])):
        if not front or acc * 100 > front[-1][1]:
            front.append((max(flops, floor), acc * 100))
    if front:
        xs = [x for x, _ in front] + [max(costs) * 3]
        ys = [y for _, y in front] + [front[-1][1]]
        ax.plot(xs, ys, drawstyle="steps-post", color="darkorange", lw=2,
                label="Pareto front of the fixed strategies")  # fmt: skip
    styles = {"oracle": ("*", "crimson", 160)}
    for name, (acc, flops) in [*fixed.items(), *routers.items()]:
        marker, color, size = styles.get(
            name, ("o", "tab:blue", 45) if name in fixed else ("D", "darkgreen", 70))
        x, y = max(flops, floor), acc * 100
        ax.scatter([x], [y], marker=marker, color=color, s=size, zorder=3,
                   edgecolors="white", linewidths=0.6)  # fmt: skip
        ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=7.5)
    ax.set_xlim(floor / 2, max(costs) * 3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def best_pooled(fixed: dict[str, list[tuple[int, float, float]]]) -> str:
    """The one fixed strategy most accurate over all held-out parts pooled."""
    return max(fixed, key=lambda s: (sum(n * a for n, a, _ in fixed[s]),
                                     -sum(n * f for n, _, f in fixed[s])))  # fmt: skip


def show(title: str, rows: dict[str, list[tuple[int, float, float]]], oracle_key: str) -> None:
    print(f"\n{title}")
    print(f"{'':<46}{'accuracy [95% CI]':>26}{'mean FLOPs':>12}{'% oracle acc':>14}"
          f"{'× oracle FLOPs':>16}")  # fmt: skip
    n_all = sum(n for n, _, _ in rows[oracle_key])
    o_acc = sum(n * a for n, a, _ in rows[oracle_key]) / n_all
    o_flops = sum(n * f for n, _, f in rows[oracle_key]) / n_all
    for name, parts in rows.items():
        n = sum(p[0] for p in parts)
        right = round(sum(p[0] * p[1] for p in parts))
        flops = sum(p[0] * p[2] for p in parts) / n
        low, high = wilson_interval(right, n)
        print(f"{name:<46}{right / n:>9.1%} [{low:.1%}, {high:.1%}]".ljust(72)
              + f"{flops:>12.3g}{right / n / o_acc:>14.0%}{flops / o_flops:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True)
    parser.add_argument("--lam", type=float, default=DEFAULT_LAMBDA)
    parser.add_argument("--plot", type=Path, help="write the accuracy-FLOPs chart here (PNG)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="only these traced datasets (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--embed", action="store_true",
                        help="give the predictor MiniLM sentence embeddings (the embed extra)")
    args = parser.parse_args()
    embedder = MemoEmbedder(MiniLMEmbedder(threads=1)) if args.embed else None
    rows = (r for path in args.runs for r in read_results(path))
    # archived traces keep no question: it is read back from the shared data
    results = restore_questions(r for r in rows if not args.dataset or r.dataset in args.dataset)
    seen = seen_by_experts(results, ExpertBook(Settings.load().home), questions_of=questions_by_id)
    if seen:
        before = len({(r.dataset, r.item_id) for r in results})
        results = [r for r in results if (r.dataset, r.item_id) not in seen]
        after = len({(r.dataset, r.item_id) for r in results})
        print(f"left out {before - after} traced items an expert was trained on")
    # a router's plan can only be replayed on a question where each of its steps was traced
    traced = len({(r.dataset, r.item_id) for r in results})
    results = complete_items(results)
    if (kept := len({(r.dataset, r.item_id) for r in results})) < traced:
        print(f"left out {traced - kept} of {traced} traced items that lack one of the "
              f"{len({r.strategy for r in results})} strategies")  # fmt: skip
    datasets = sorted({r.dataset for r in results})
    lodo: dict[str, list[tuple[int, float, float]]] = {}
    fixed: dict[str, list[tuple[int, float, float]]] = {}
    print(f"{len(results)} traced rows, {len(datasets)} datasets, λ = {args.lam:g}")
    if len(datasets) < 2:
        print("one dataset: nothing to hold out by dataset; the ordinary split only")
    for held in datasets if len(datasets) > 1 else []:
        def left_out(dataset: str, _item: str, held: str = held) -> bool:
            return dataset == held

        got, every = measure(results, left_out, args.lam, embedder)
        for s, value in every.items():
            fixed.setdefault(s, []).append(value)
        fixed_key = next(k for k in got if k.startswith("fixed"))
        if not lodo:
            names = [k for k in got if k not in (fixed_key, "oracle")]
            print(f"{'held out':<36}{'n':>5}  " + "  ".join(
                f"{k[:16]:>16}" for k in ("best fixed", *names, "oracle")))  # fmt: skip
        for name, value in got.items():
            lodo.setdefault("best fixed (per set, hindsight)" if name == fixed_key else name,
                            []).append(value)  # fmt: skip
        cells = [f"{got[k][1]:>6.0%} {got[k][2]:>9.2g}" for k in got]
        print(f"{held:<36}{got['oracle'][0]:>5}  " + "  ".join(cells)
              + f"   ({fixed_key[7:]})")  # fmt: skip
    if lodo:
        single = best_pooled(fixed)
        show("leave-one-dataset-out, pooled",
             {f"fixed: {single} (best pooled)": fixed[single], **lodo}, "oracle")  # fmt: skip
    if args.plot and lodo:

        def pooled(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
            n = sum(p[0] for p in parts)
            return (sum(p[0] * p[1] for p in parts) / n, sum(p[0] * p[2] for p in parts) / n)

        routed = {f"auto: {k}" if k != "oracle" else k: pooled(v) for k, v in lodo.items()
                  if not k.startswith("best fixed")}  # fmt: skip
        plot(args.plot, {s: pooled(v) for s, v in fixed.items()}, routed,
             f"{sum(p[0] for p in lodo['oracle'])} questions, {len(datasets)} datasets, "
             "each held out in turn (the routers built on the others)")  # fmt: skip
        print(f"wrote {args.plot}")
    split, _ = measure(
        results, lambda d, i: not in_training_share(d, i, 0.5), args.lam, embedder
    )
    show("ordinary split (the held-out half of every dataset)",
         {("best fixed" if k.startswith("fixed") else k): [v] for k, v in split.items()},
         "oracle")  # fmt: skip


if __name__ == "__main__":
    main()
