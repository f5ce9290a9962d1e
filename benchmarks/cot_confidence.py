"""How well ways of reading cot's token log-probabilities rank its right answers above its
wrong ones (AUROC; 0.5 is chance), on the same completions (issue 14, item 1).

cot's confidence with `logprobs=true` is exp(mean log-probability of the whole reply). The
issue sketched the answer span instead: the tokens after the answer's marker ("The answer is",
"####", \\boxed{…}; answers.answer_start). This runs `cot:logprobs=true` on a seeded sample of
named datasets, keeps every completion with its tokens, and scores each reading:

- whole: the mean over the reply (what cot reports);
- answer span: the mean over the tokens after the last marker (answers without one left out
  of this row only);
- min: the least likely token;
- lowest 10%: the mean of the least likely tenth of the tokens.

    python benchmarks/cot_confidence.py --limit 8 --dataset gsm8k --dataset svamp \\
        --dataset mawps --dataset mmlu --dataset commonsenseqa --dataset strategyqa \\
        --dataset bbh:date_understanding --dataset bbh:logical_deduction_three_objects

Completions are generated afresh (no completion cache), greedy, with the model's default
thread count; `--seed` picks the sample (1 by default, so not the router-v2 traces' own).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from apportion.answers import answer_start
from apportion.bench.runner import run_one
from apportion.bench.session import load_bench_items
from apportion.config import Settings
from apportion.router.confidence import auroc
from apportion.runtime import Runtime
from apportion.types import Completion


class Recorder:
    """A completion cache that never replays and keeps the last completion written."""

    def __init__(self) -> None:
        self.last: Completion | None = None

    def get(self, key: str) -> list[tuple[Completion, float]] | None:
        return None

    def put(self, key: str, value: list[tuple[Completion, float]]) -> None:
        self.last = value[-1][0]


def lowest_tenth(logprobs: Sequence[float]) -> float:
    ordered = sorted(logprobs)
    k = max(1, len(ordered) // 10)
    return sum(ordered[:k]) / k


READINGS: dict[str, Callable[[Completion], float | None]] = {
    "whole (cot's confidence)": lambda c: c.mean_logprob,
    "answer span": lambda c: c.mean_logprob_from(answer_start),
    "min": lambda c: min(c.token_logprobs) if c.token_logprobs else None,
    "lowest 10%": lambda c: lowest_tenth(c.token_logprobs) if c.token_logprobs else None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True)
    parser.add_argument("--limit", type=int, default=8, help="items per dataset")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sample")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    args = parser.parse_args()
    engine = Runtime.from_settings(Settings.load())
    items, _ = load_bench_items([], args.dataset, args.limit, args.seed, None)
    scored: dict[str, list[tuple[float, bool]]] = {name: [] for name in READINGS}
    answered = 0
    for n, item in enumerate(items, 1):
        recorder = Recorder()
        row = run_one(engine, item, "cot:logprobs=true", model=args.model, seed=0,
                      max_tokens=None, cache=recorder)  # fmt: skip
        print(f"{n}/{len(items)} {item.dataset} {'right' if row.correct else 'wrong'}",
              flush=True)  # fmt: skip
        if row.answer is None or recorder.last is None:
            continue
        answered += 1
        for name, read in READINGS.items():
            value = read(recorder.last)
            if value is not None:
                scored[name].append((value, row.correct))
    print(f"\n{answered} answers of {len(items)} questions; AUROC of each reading")
    for name, pairs in scored.items():
        value = auroc([s for s, _ in pairs], [ok for _, ok in pairs])
        right = sum(ok for _, ok in pairs)
        shown = "-" if value is None else f"{value:.3f}"
        print(f"{name:<26}{shown:>7}   ({len(pairs)} answers, {right} right)")


if __name__ == "__main__":
    main()
