"""Does the question tell how far an answer can be trusted (issue 14, AUROC ≥ 0.75)? For each
strategy, over the held-out items where it answered, the AUROC of three scores for "this
answer is right":

- `own`: the strategy's own confidence (what its answers report and ladders stop on);
- `prior`: the per-query predictor's P(right) for that strategy, read from the question before
  anything ran (router/predictor.py, fitted on the training items only);
- `both`: a two-input logistic regression on logit(prior) and own, fitted on the training
  items' answers (their prior is in-sample there, so this leans on it more than it should).

Held out: the stable half of every dataset that calibration's `--train-share 0.5` leaves out;
with `--lodo`, each dataset in turn, the predictor fitted on the others (the AUROC is over the
pooled held-out answers).

    python benchmarks/confidence_prior.py \
        --runs benchmarks/traces/router-v2-new-sets-qwen2.5-coder-0.5b.jsonl.gz
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from apportion.bench.datasets import restore_questions
from apportion.router.calibrate import in_training_share, traced_items
from apportion.router.confidence import auroc
from apportion.router.predictor import fit_predictor
from apportion.strategies.registry import default_registry
from apportion.traces import ItemResult, read_results

# (prior, own confidence, right) per answer, by strategy
Answers = dict[str, list[tuple[float, float, bool]]]


def _answers(rows: Sequence[ItemResult], predict: Callable[..., dict[str, float]]) -> Answers:
    items, strategies = traced_items(rows)
    out: Answers = {}
    for features, outcomes in items:
        prior = predict(features)
        for s in strategies:
            r = outcomes[s]
            if r.ok and not r.abstained:
                out.setdefault(s, []).append((prior[s], r.confidence, r.correct))
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _fit_both(answers: Sequence[tuple[float, float, bool]]) -> np.ndarray:
    """Weights of logit(prior), own and a bias: full-batch gradient descent on log-loss."""
    x = np.array([[_logit(p), c, 1.0] for p, c, _ in answers])
    y = np.array([float(right) for *_, right in answers])
    w = np.zeros(3)
    for _ in range(3000):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w)
    return w


def held_out_scores(
    rows: Sequence[ItemResult], held: Callable[[str, str], bool]
) -> dict[str, list[tuple[float, float, float, bool]]]:
    """Per strategy, each held-out answer's (own, prior, both, right)."""
    train = [r for r in rows if not held(r.dataset, r.item_id)]
    test = [r for r in rows if held(r.dataset, r.item_id)]
    items, strategies = traced_items(train)
    predictor = fit_predictor(
        [(f, {s: (o[s].correct, o[s].flops) for s in strategies}) for f, o in items],
        strategies, closes=default_registry().always_answers,
    )  # fmt: skip
    fitted = _answers(train, predictor.predict)
    out: dict[str, list[tuple[float, float, float, bool]]] = {}
    for s, answers in _answers(test, predictor.predict).items():
        w = _fit_both(fitted.get(s, []) or answers)
        out[s] = [
            (c, p, float(w[0] * _logit(p) + w[1] * c + w[2]), right) for p, c, right in answers
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True)
    parser.add_argument("--lodo", action="store_true", help="hold out each dataset in turn")
    args = parser.parse_args()
    rows = restore_questions(r for path in args.runs for r in read_results(path))
    scores: dict[str, list[tuple[float, float, float, bool]]] = {}
    if args.lodo:
        for dataset in sorted({r.dataset for r in rows}):

            def left_out(d: str, _item: str, held: str = dataset) -> bool:
                return d == held

            for s, got in held_out_scores(rows, left_out).items():
                scores.setdefault(s, []).extend(got)
    else:
        scores = held_out_scores(rows, lambda d, i: not in_training_share(d, i, 0.5))
    held = "each dataset held out in turn" if args.lodo else "the held-out half"
    print(f"AUROC on {held}")
    print(f"{'strategy':<46}{'answers':>8}{'right':>7}{'own':>8}{'prior':>8}{'both':>8}")
    for s, got in sorted(scores.items()):
        right = [y for *_, y in got]
        cells = [auroc([g[k] for g in got], right) for k in range(3)]
        shown = "".join("       -" if a is None else f"{a:>8.3f}" for a in cells)
        print(f"{s:<46}{len(got):>8}{sum(right) / len(got):>7.0%}{shown}")


if __name__ == "__main__":
    main()
