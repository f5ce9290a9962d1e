"""Strategies of one bench run compared on the same items: those every strategy of the run
has finished (so a run still under way compares like with like). Per strategy: accuracy with
a Wilson 95% interval, mean FLOPs as charged (prompts counted in full, as if uncached) and as
computed (less the prompt tokens read from the KV cache), mean completion tokens, and how many
replies an error matching --error names (e.g. "no solve()": a program strategy got no
program). Then, item by item against one strategy (`--against`, default the run's first),
how many questions each other strategy gets right that it gets wrong, and the other way round:

    python benchmarks/paired_summary.py runs/question-first-0.5b --against cot

    python benchmarks/paired_summary.py runs/gsm8k-pal-math --error "no solve()"

`--dataset NAME` (repeatable) compares on those datasets' items only, e.g. the thinking-budget
levels on gsm8k and on svamp apart:

    python benchmarks/paired_summary.py runs/think-budget-0.5b --dataset gsm8k

Several runs or archived trace files are read as one: strategies traced in separate runs on
the same items (a tier traced after the rest) are then compared on the items they share.

`--unlike NAME` keeps only the items whose question is not one of the named dataset's
(compared as `experts distil` compares them): mawps repeats multiarith's 600 questions, so an
expert trained on multiarith is measured on the rest of mawps with `--unlike multiarith`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from apportion.bench.datasets import load_named, restore_questions
from apportion.bench.scoring import wilson_interval
from apportion.traces import RESULTS, ItemResult, question_key, read_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders or results files")
    parser.add_argument("--error", default="no solve()")
    parser.add_argument("--dataset", action="append", default=[],
                        help="only this dataset's items (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--unlike", action="append", default=[],
                        help="leave out items whose question is this dataset's (repeatable)")
    parser.add_argument("--against", default=None,
                        help="the strategy the others are paired with (default: the first)")
    args = parser.parse_args()
    rows = [r for run in args.runs for r in read_results(run / RESULTS if run.is_dir() else run)]
    shown = " + ".join(map(str, args.runs))
    if args.dataset:
        rows = [r for r in rows if r.dataset in args.dataset]
    if args.unlike:
        taken = {question_key(i.question) for name in args.unlike for i in load_named(name)}
        rows = [r for r in restore_questions(rows) if question_key(r.question) not in taken]
    strategies = list(dict.fromkeys(r.strategy for r in rows))
    by_item: dict[tuple[str, str], dict[str, ItemResult]] = {}
    for r in rows:
        by_item.setdefault((r.dataset, r.item_id), {})[r.strategy] = r
    done = [v for v in by_item.values() if len(v) == len(strategies)]
    n = len(done)
    if n == 0:
        raise SystemExit(f"{shown}: no item is finished by every strategy (of these datasets)")
    print(f"{shown}: {n} items finished by all of {', '.join(strategies)}")
    print(f"{'strategy':<32}{'accuracy [95% CI]':>26}{'mean FLOPs':>12}{'computed':>10}"
          f"{'compl. tok':>11}{'errors':>8}")  # fmt: skip
    for s in strategies:
        right = sum(v[s].correct for v in done)
        low, high = wilson_interval(right, n)
        flops = sum(v[s].flops for v in done) / n
        computed = sum(v[s].flops_computed for v in done) / n
        tokens = sum(v[s].completion_tokens for v in done) / n
        errors = sum(args.error in (v[s].error or "") for v in done)
        print(f"{s:<32}{right:>4}/{n} = {right / n:>6.1%} [{low:.1%}, {high:.1%}]"
              f"{flops:>12.3g}{computed:>10.3g}{tokens:>11.0f}{errors:>8}")  # fmt: skip
    base = args.against or strategies[0]
    if base not in strategies:
        raise SystemExit(f"--against {base!r}: the run has {', '.join(strategies)}")
    print(f"paired with {base}: right only with the strategy / only with {base}")
    for s in strategies:
        if s != base:
            gained = sum(v[s].correct and not v[base].correct for v in done)
            lost = sum(v[base].correct and not v[s].correct for v in done)
            print(f"{s:<32}{gained:>6} / {lost}")


if __name__ == "__main__":
    main()
