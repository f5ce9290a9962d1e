"""Agreement between two cheap answers as an acceptance signal (issue 14): when a program's
result equals the chain-of-thought's answer, or a direct answer's, how often is it right, and
does agreement rank right answers above wrong ones better than the strategy's own confidence?

For each ordered pair (a, b) of traced strategies, over the items where a gave an answer:

- `a acc`: a's accuracy there; `AUROC conf`: a's own confidence as a score for a being right;
- `agree`: the share of them where b's answer is the same (`answers.vote_key`, the key
  majority votes use: numbers canonical, text normalised, letters, yes/no);
- `acc | agree`, `acc | differ`: a's accuracy when b agrees and when it does not;
- `AUROC agree`: agreement (1 or 0) as the score; `AUROC both`: agreement first, a's own
  confidence breaking ties.

    python benchmarks/agreement.py \
        --runs benchmarks/traces/router-v2-qwen2.5-coder-0.5b.jsonl.gz

With `--ladder PLAN` (repeatable; plan text as `ask --plan` takes it, e.g.
`symbolic@0.3>direct:logprobs=true@0.9>cot:logprobs=true`), agreement as a stop rule: each
ladder replayed over the items traced with all its steps, as the executor runs it (a step
stops the ladder when its confidence reaches its bar; else the most confident answer), and
again with one more way to stop: a step whose answer equals an earlier step's answer. Printed:
accuracy and mean FLOPs of each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from itertools import permutations
from pathlib import Path

from apportion.answers import vote_key
from apportion.router.confidence import auroc
from apportion.router.policy import Step, fallback_choice, parse_plan_spec, stops_here
from apportion.traces import ItemResult, read_results


def _answered(r: ItemResult) -> bool:
    return r.ok and not r.abstained


def _share(hits: Sequence[bool]) -> str:
    return f"{sum(hits) / len(hits):.0%}" if hits else "-"


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _key(r: ItemResult) -> str | None:
    return vote_key(r.answer, r.kind) if _answered(r) else None  # type: ignore[arg-type]


def _ladder(
    steps: Sequence[Step], outcomes: dict[str, ItemResult], *, on_agreement: bool
) -> tuple[bool, float]:
    """(right, FLOPs) of a ladder on one item; `on_agreement`: a step whose answer equals an
    earlier step's also stops it."""
    ran: list[ItemResult] = []
    for step in steps:
        r = outcomes[step.strategy]
        key = _key(r)
        agrees = on_agreement and key is not None and any(_key(x) == key for x in ran)
        ran.append(r)
        if stops_here(r.ok, r.confidence, step) or agrees:
            return r.correct, sum(x.flops for x in ran)
    best = fallback_choice([(r.ok, r.confidence) for r in ran])
    return best is not None and ran[best].correct, sum(x.flops for x in ran)


def _ladders(grouped: dict[tuple[str, str], dict[str, ItemResult]], plans: list[str]) -> None:
    width = max(len("ladder"), *(len(p) for p in plans)) + 2
    print(f"\n{'ladder':<{width}}{'n':>6}{'acc':>8}{'FLOPs':>10}{'acc agree':>11}{'FLOPs':>10}")
    for text in plans:
        steps = parse_plan_spec(text)
        items = [o for o in grouped.values() if all(s.strategy in o for s in steps)]
        if not items:
            print(f"{text:<{width}}{0:>6}")
            continue
        cells = []
        for on_agreement in (False, True):
            runs = [_ladder(steps, o, on_agreement=on_agreement) for o in items]
            cells.append(f"{sum(r for r, _ in runs) / len(runs):>8.1%}"
                         f"{sum(f for _, f in runs) / len(runs):>10.3g}")  # fmt: skip
        print(f"{text:<{width}}{len(items):>6}{cells[0]}{cells[1]:>21}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True)
    parser.add_argument("--min-items", type=int, default=20, help="pairs with fewer are not shown")
    parser.add_argument(
        "--ladder", action="append", default=[],
        help="a plan to replay with and without agreement as a stop rule",
    )  # fmt: skip
    args = parser.parse_args()
    grouped: dict[tuple[str, str], dict[str, ItemResult]] = {}
    for path in args.runs:
        for r in read_results(path):
            grouped.setdefault((r.dataset, r.item_id), {})[r.strategy] = r
    strategies = sorted({s for outcomes in grouped.values() for s in outcomes})
    print(f"{len(grouped)} traced items; strategies: {', '.join(strategies)}")
    print(f"{'a':<26}{'b':<26}{'n':>5}{'a acc':>7}{'agree':>7}{'acc|agree':>10}"
          f"{'acc|differ':>11}{'AUROC conf':>11}{'AUROC agree':>12}{'AUROC both':>11}")  # fmt: skip
    for a, b in permutations(strategies, 2):
        rows = [(o[a], o[b]) for o in grouped.values() if a in o and b in o and _answered(o[a])]
        if len(rows) < args.min_items:
            continue
        right = [ra.correct for ra, _ in rows]
        agree = [_key(ra) is not None and _key(ra) == _key(rb) for ra, rb in rows]
        own = [ra.confidence for ra, _ in rows]
        both = [float(g) + c / 2 for g, c in zip(agree, own, strict=True)]
        print(
            f"{a[:25]:<26}{b[:25]:<26}{len(rows):>5}{_share(right):>7}{_share(agree):>7}"
            f"{_share([y for y, g in zip(right, agree, strict=True) if g]):>10}"
            f"{_share([y for y, g in zip(right, agree, strict=True) if not g]):>11}"
            f"{_auc(auroc(own, right)):>11}{_auc(auroc([float(g) for g in agree], right)):>12}"
            f"{_auc(auroc(both, right)):>11}"
        )  # fmt: skip
    if args.ladder:
        _ladders(grouped, args.ladder)


if __name__ == "__main__":
    main()
