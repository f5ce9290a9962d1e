"""Choosing `cascade`'s threshold on gsm8k questions the README's table does not use.

The tuning set is 100 gsm8k questions drawn with seed 1 that are not among the 100 the
README reports (`--dataset gsm8k --limit 100`, seed 0). On it, this runs (through `apportion
bench`, so its completion cache makes reruns and the later dev run cheap):

- the small model's greedy program with log-probabilities (`program:logprobs=true`): the
  cascade's probe, whose confidence is the program's geometric-mean token probability;
- the large model's greedy program (the cascade's escalation) and chain of thought (the
  reference the cascade is held to).

Then it replays the cascade for each threshold from the traces, with `Cascade.run`'s rules
(keep the probe's answer when it ran and its confidence reaches the threshold; else the large
model's answer, or the probe's if the large model gave none), and prints accuracy, mean FLOPs,
the escalated share, and the probe's AUROC (how well its confidence ranks right answers above
wrong ones, a failed program counting as confidence 0). The recommended threshold is the most
accurate one whose mean FLOPs stay within a budget: `--max-flops` per question, or by default
`--flops-share` of the large model's chain of thought on these same questions.

    python benchmarks/cascade_threshold.py --out runs/cascade-threshold --max-flops 5.65e11
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from apportion.bench.datasets import BenchItem, load_named, write_jsonl
from apportion.bench.runner import RESULTS, ItemResult, read_results
from apportion.bench.session import load_bench_items

THRESHOLDS = (0.7, 0.75, 0.78, 0.8, 0.81, 0.82, 0.83, 0.85, 0.88, 0.9)


def tuning_items(data_dir: Path | None, n: int) -> list[BenchItem]:
    """`n` gsm8k items of a seed-1 sample, none of them in the seed-0 sample of 100."""
    dev, _ = load_bench_items([], ["gsm8k"], 100, 0, data_dir)
    pool, _ = load_bench_items([], ["gsm8k"], 3 * n, 1, data_dir)
    taken = {item.id for item in dev}
    items = [item for item in pool if item.id not in taken][:n]
    if len(items) < n:
        sys.exit(f"only {len(items)} tuning items; gsm8k has {len(load_named('gsm8k'))}")
    return items


def bench(data: Path, model: str, strategy: str, out: Path) -> list[ItemResult]:
    command = [
        sys.executable, "-m", "apportion.cli", "bench", "--data", str(data), "--model", model,
        "--strategies", strategy, "--out", str(out), "--resume",
    ]  # fmt: skip
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return read_results(out / RESULTS)


def auroc(scores: list[float], right: list[bool]) -> float:
    pos = [s for s, r in zip(scores, right, strict=True) if r]
    neg = [s for s, r in zip(scores, right, strict=True) if not r]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def answered(r: ItemResult) -> bool:
    return r.answer is not None and r.error is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cascade-threshold"))
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--large", default="qwen2.5-coder-1.5b")
    parser.add_argument("--n", type=int, default=100, help="tuning questions")
    parser.add_argument("--flops-share", type=float, default=0.6)
    parser.add_argument("--max-flops", type=float, default=None, help="an absolute budget")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()

    data = args.out / "tune.jsonl"
    write_jsonl(tuning_items(args.data_dir, args.n), data)
    probe = {r.item_id: r for r in bench(data, args.small, "program:logprobs=true",
                                         args.out / "small-program")}  # fmt: skip
    large = {r.item_id: r for r in bench(data, args.large, "program", args.out / "large-program")}
    cot = list(bench(data, args.large, "cot", args.out / "large-cot"))
    ids = sorted(probe)
    n = len(ids)

    cot_accuracy = sum(r.correct for r in cot) / n
    cot_flops = sum(r.flops for r in cot) / n
    confidence = [probe[i].confidence if answered(probe[i]) else 0.0 for i in ids]
    print(f"\n{n} tuning questions")
    print(f"large cot: {cot_accuracy:.1%} at {cot_flops:.3g} FLOPs")
    print(f"large program: {sum(large[i].correct for i in ids) / n:.1%} at "
          f"{sum(large[i].flops for i in ids) / n:.3g} FLOPs")  # fmt: skip
    print(f"small program: {sum(probe[i].correct for i in ids) / n:.1%} at "
          f"{sum(probe[i].flops for i in ids) / n:.3g} FLOPs")  # fmt: skip
    right = [probe[i].correct for i in ids]
    ran = [k for k, i in enumerate(ids) if answered(probe[i])]
    print(f"probe AUROC {auroc(confidence, right):.2f} (failed programs at 0); "
          f"{auroc([confidence[k] for k in ran], [right[k] for k in ran]):.2f} among programs "
          "that ran\n")  # fmt: skip
    print(f"{'threshold':>9}  {'accuracy':>8}  {'mean FLOPs':>10}  {'/ cot':>6}  escalated")
    budget = args.max_flops if args.max_flops is not None else args.flops_share * cot_flops
    best: float | None = None
    best_accuracy = -1.0
    for t in THRESHOLDS:
        correct = flops = escalated = 0.0
        for i, c in zip(ids, confidence, strict=True):
            small, big = probe[i], large[i]
            flops += small.flops
            if answered(small) and c >= t:
                correct += small.correct
                continue
            escalated += 1
            flops += big.flops
            correct += big.correct if answered(big) else small.correct
        accuracy, mean = correct / n, flops / n
        print(f"{t:>9g}  {accuracy:>8.1%}  {mean:>10.3g}  {mean / cot_flops:>6.0%}  "
              f"{escalated / n:.0%}")  # fmt: skip
        if mean <= budget and accuracy > best_accuracy:
            best, best_accuracy = t, accuracy
    print(f"\nmost accurate within {budget:.3g} FLOPs per question: {best}")


if __name__ == "__main__":
    main()
