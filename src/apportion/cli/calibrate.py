"""`apportion calibrate`: bench traces in, a routing policy (policy.json) out."""

from __future__ import annotations

import json
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from apportion.cli.common import ConfigOption, err, fail, out
from apportion.errors import ApportionError, UsageError
from apportion.router.policy import DEFAULT_LAMBDA


class Router(StrEnum):
    """What `auto` reads a calibrated policy file with."""

    cells = "cells"
    predictor = "predictor"


def calibrate(
    runs: Annotated[
        list[Path],
        typer.Option(
            "--runs",
            help="A bench output folder (its results.jsonl), a results.jsonl, or a gzipped one. "
            "Repeatable; the runs should use the same model.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the policy.", show_default=False)
    ],
    lam: Annotated[
        float,
        typer.Option(
            "--lambda",
            min=0.0,
            help="Accuracy given up per unit of cost: the policy maximises accuracy − λ·FLOPs/"
            "max FLOPs, where max FLOPs is the dearest fixed strategy's mean. 0 buys accuracy "
            "at any price; 0.2 gives up 2 points of accuracy to save a tenth of the dearest "
            "strategy's FLOPs.",
        ),
    ] = DEFAULT_LAMBDA,
    min_cell: Annotated[
        int,
        typer.Option(
            "--min-cell",
            min=1,
            help="Least items in a difficulty cell; an intent with fewer than twice this is "
            "not split into easy and hard.",
        ),
    ] = 20,
    train_share: Annotated[
        float,
        typer.Option(
            "--train-share",
            min=0.01,
            max=1.0,
            help="Learn from this share of the items (a stable hash of their ids) and report "
            "the policy, replayed, on the rest: an honest out-of-sample check.",
        ),
    ] = 1.0,
    router: Annotated[
        Router,
        typer.Option(
            "--router",
            help="cells: a plan per intent × difficulty cell (the shipped kind). predictor: a "
            "plan per question, from a success predictor per strategy over the question's "
            "n-grams and intent (router/predictor.py); the file holds the cells too.",
        ),
    ] = Router.cells,
    config: ConfigOption = None,
) -> None:
    """Learn the `auto` policy from bench traces of fixed strategies.

    For each (intent, difficulty) cell it measures every strategy and every two-step ladder
    (cheap first, escalating below a confidence bar) by replaying the traces, keeps the
    Pareto-optimal plans among those that answer at least 90% of the cell's questions, and
    marks the one that maximises accuracy − λ·cost; a cell `*/*` pooling every item plans
    questions of intents the traces do not hold. Use the result with `ask --policy FILE`
    or `bench --policy FILE`. It also prints how far each strategy's confidence can be
    trusted: AUROC and ECE, raw and after an isotonic map (held out with --train-share); the
    maps go into the policy, and `auto`'s answers report their confidence through them.
    Traces of expert plans (`program:expert=pal-math`) may be given beside the rest; the
    items an expert was trained on (its manifest's data sources) are left out. With
    `--router predictor` the file also holds a success predictor per strategy, and `auto`
    plans each question from its predictions instead of its cell (`ask --explain` shows them).

    Example: apportion calibrate --runs runs/mixed -o policy.json
    """
    from apportion.bench.datasets import questions_by_id, restore_questions
    from apportion.bench.runner import RESULTS, read_results
    from apportion.config import Settings
    from apportion.experts.book import ExpertBook
    from apportion.router.calibrate import calibrate as fit
    from apportion.router.calibrate import (
        evaluate,
        in_training_share,
        partly_traced,
        seen_by_experts,
    )
    from apportion.router.confidence import confidence_report
    from apportion.router.policy import CalibratedPolicy, Policy, RulePolicy
    from apportion.router.predictor import fit_predicted_policy

    try:
        results = []
        for run in runs:
            path = run / RESULTS if run.is_dir() else run
            if not path.is_file():
                raise UsageError(
                    f"no results at {path}", "give a folder that `apportion bench --out` wrote"
                )
            results += read_results(path)
        # archived traces (benchmarks/traces) keep no question: read back from the shared data
        results = restore_questions(results)
        seen = seen_by_experts(
            results, ExpertBook(Settings.load(config).home), questions_of=questions_by_id
        )
        if seen:
            kept = [r for r in results if (r.dataset, r.item_id) not in seen]
            left_out = len({(r.dataset, r.item_id) for r in results}) - len(
                {(r.dataset, r.item_id) for r in kept})  # fmt: skip
            err.print(f"left out {left_out} traced items an expert was trained on")
            results = kept
        for strategy, share in sorted(partly_traced(results).items()):
            err.print(
                f"warning: {strategy} was traced on {share:.0%} of the items, so calibration "
                "leaves it out (it keeps strategies traced on at least 90%): bench it on the "
                "same items as the others",
                highlight=False,
            )
        command = "apportion calibrate " + shlex.join(sys.argv[2:])
        policy = fit(
            results,
            lam=lam,
            min_cell=min_cell,
            train_share=train_share,
            source={"runs": [str(r) for r in runs], "command": command},
        )
        cells = CalibratedPolicy.from_dict(policy)
        routed: Policy = cells
        if router is Router.predictor:
            routed = fit_predicted_policy(
                [r for r in results if in_training_share(r.dataset, r.item_id, train_share)],
                lam, confidence_maps=cells.confidence_maps,
            )  # fmt: skip
            policy.update(routed.to_dict())
        held_out = None
        if train_share < 1:
            compared: dict[str, Policy] = {"auto": routed, "rules": RulePolicy()}
            if routed is not cells:
                compared["cells"] = cells
            held_out = evaluate(
                compared, results, keep=lambda d, i: not in_training_share(d, i, train_share)
            )
            policy["held_out"] = {
                "n": held_out.n,
                "fixed": {k: list(v) for k, v in held_out.fixed.items()},
                "auto": list(held_out.policies["auto"] or ()),
                "rule_ladders": (
                    None if held_out.policies["rules"] is None else list(held_out.policies["rules"])
                ),
                "oracle": list(held_out.oracle),
                "cheapest_answer": list(held_out.cheapest_answer),
            }
        confidences = confidence_report(
            results,
            None if train_share >= 1 else (lambda d, i: in_training_share(d, i, train_share)),
        )
    except ApportionError as e:
        fail(e)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(policy, indent=1, sort_keys=True) + "\n")
    table = Table("cell", "n", "plan", "accuracy", "mean FLOPs")
    for key, cell in policy["cells"].items():
        chosen = next(c for c in cell["candidates"] if c["plan"] == cell["chosen"])
        table.add_row(
            key, str(cell["n"]), cell["chosen"], f"{chosen['accuracy']:.0%}",
            f"{chosen['flops']:.3g}",
        )  # fmt: skip
    out.print(table)
    if held_out is not None:
        check = Table(
            "strategy", "accuracy", "mean FLOPs",
            title=f"held out: {held_out.n} items calibration never saw",
        )  # fmt: skip
        rows = [*held_out.fixed.items()]
        labels = (("auto", f"auto (this policy: {router.value})"), ("cells", "auto (its cells)"),
                  ("rules", "auto (rule ladders)"))  # fmt: skip
        for name, label in labels:
            if name not in held_out.policies:
                continue
            replayed = held_out.policies[name]
            if replayed is not None:
                rows.append((label, replayed))
        rows.append(("oracle", held_out.oracle))
        rows.append(("cheapest answer (hindsight)", held_out.cheapest_answer))
        for name, (accuracy, flops) in rows:
            check.add_row(name, f"{accuracy:.1%}", f"{flops:.3g}")
        out.print(check)
    trust = Table(
        "strategy", "answers", "accuracy", "AUROC", "ECE", "ECE (isotonic)",
        title="confidence: how far each strategy's can be trusted"
        + (" (held out)" if held_out is not None else " (in sample)"),
    )  # fmt: skip
    for row in confidences:
        trust.add_row(
            row.strategy, str(row.n), f"{row.accuracy:.1%}",
            "-" if row.auroc is None else f"{row.auroc:.3f}", f"{row.ece_raw:.3f}",
            f"{row.ece_calibrated:.3f}",
        )  # fmt: skip
    out.print(trust)
    err.print(
        f"wrote {output}: {policy['n_items']} items, strategies "
        f"{', '.join(policy['strategies'])}, λ = {lam:g}, router {router.value}",
        highlight=False,
    )
