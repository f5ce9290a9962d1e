"""`apportion ask`: one question in, the answer, its route and its cost out."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from apportion.cli.common import (
    ConfigOption,
    DeterministicOption,
    MemoryLimitOption,
    NCtxOption,
    PolicyOption,
    RichPullProgress,
    err,
    fail,
    out,
    warnings_as_lines,
    with_model_options,
)
from apportion.config import Settings
from apportion.errors import ApportionError
from apportion.types import Answer, Budget

if TYPE_CHECKING:
    from apportion.router.features import Features
    from apportion.router.policy import Plan


def ask(
    question: Annotated[
        str,
        typer.Argument(
            help="The question, in quotes; or - to read it from stdin (for long questions, "
            "e.g. apportion ask - < question.txt).",
        ),
    ],
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="auto (the routing policy), or one of: direct, cot, program, symbolic, "
            "consistency, best_of_n, cascade, rag. Parameters go after a colon, e.g. "
            "consistency:n=8,rule=beta",
        ),
    ] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model id (see `apportion models list`) or a .gguf path."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Cap on generated tokens per model call.")
    ] = None,
    budget_flops: Annotated[
        float | None, typer.Option("--budget-flops", help="Hard cap on FLOPs for this question.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="Hard cap on $ for this question.")
    ] = None,
    budget_seconds: Annotated[
        float | None, typer.Option("--budget-seconds", help="Hard cap on model wall seconds.")
    ] = None,
    budget_memory: Annotated[
        str | None,
        typer.Option(
            "--budget-memory",
            help="Most memory this question's local models may keep resident together, "
            "e.g. 700MB (plans that need more are swapped or skipped, as memory_policy says).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="llama.cpp threads (default: free cores).")
    ] = None,
    n_ctx: NCtxOption = None,
    deterministic: DeterministicOption = False,
    memory_limit: MemoryLimitOption = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="APPORTION_STORE",
            help="Document store for --strategy rag (a path, milvus-lite:DIR or a Milvus URL; "
            "default: the one `apportion index add` fills).",
        ),
    ] = None,
    policy: PolicyOption = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Also show the features, the plan, and why the policy chose it."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Answer one question and show the route it took and what it cost.

    Example: apportion ask "What is 17*23+5?" --json
    """
    from apportion.runtime import Request, Runtime

    try:
        if question == "-":
            question = read_stdin()
        settings = with_model_options(
            Settings.load(config), threads=threads, n_ctx=n_ctx, deterministic=deterministic,
            memory_limit=memory_limit,
        )
        if store is not None:
            settings.store = store  # a setting, so sandboxed programs cannot read it
        runtime = Runtime.from_settings(
            settings, policy=policy, pull_progress=RichPullProgress(err)
        )
        from apportion.engines.memory import parse_bytes

        budget = Budget(
            max_flops=budget_flops, max_usd=budget_usd, max_seconds=budget_seconds,
            max_memory=None if budget_memory is None else parse_bytes(budget_memory),
        )  # fmt: skip
        request = Request(
            question, strategy=strategy, model=model, max_tokens=max_tokens, budget=budget
        )
        prepared = runtime.prepare(request)
        with warnings_as_lines():
            answer = runtime.run(prepared)
        runtime.close()  # keeps the speeds it measured (engines/speed.py)
    except ApportionError as e:
        fail(e)
    explanation = explain_plan(prepared.features, prepared.plan) if explain else None
    if as_json:
        payload = answer.to_dict()
        if explanation is not None:
            payload["explain"] = explanation
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print_answer(answer)
        if explanation is not None:
            print_explanation(explanation)
            print_confidence(answer)
    if answer.error:
        if not as_json:
            err.print(f"[bold red]no answer:[/] {answer.error}", highlight=False)
        raise typer.Exit(1)


def read_stdin() -> str:
    """The question from stdin (`ask -`): argv caps one argument at 128 KiB, stdin does not."""
    from apportion.errors import UsageError

    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"stdin is not UTF-8 text (byte {e.start})", "pipe the question as UTF-8"
        ) from e


def explain_plan(features: Features, plan: Plan) -> dict[str, Any]:
    """What `ask --explain` shows: the features, the plan, and why."""
    from apportion.router.policy import difficulty_score, plan_spec

    return {
        "features": {
            "intent": features.intent,
            "intent_probabilities": {k: round(v, 4) for k, v in sorted(
                features.intent_probabilities, key=lambda kv: -kv[1]
            )},
            "has_math_expression": features.has_math_expression,
            "n_words": features.n_words,
            "n_digits": features.n_numbers,
            "difficulty_score": round(difficulty_score(features), 3),
            "difficulty": plan.difficulty,
        },
        "plan": plan_spec(plan.steps),
        "reason": plan.reason,
        "expected": plan.expected,
        "alternatives": [
            {"plan": c.spec, "accuracy": c.accuracy, "flops": c.flops, "score": round(score, 4)}
            for c, score in sorted(plan.alternatives, key=lambda cs: -cs[1])
        ],
        # The policy's prediction for this question, per plan it weighed: the probability of
        # a right answer and the expected FLOPs. The cells give those of the question's cell
        # of the traces (its intent and difficulty); a predictor policy (`calibrate --router
        # predictor`) gives this question's own, per strategy.
        "route": {
            "chosen": plan_spec(plan.steps),
            "plans": [
                {"plan": c.spec, "p_correct": round(c.accuracy, 4), "flops": c.flops}
                for c, _ in sorted(plan.alternatives, key=lambda cs: -cs[1])
            ],
        },
    }  # fmt: skip


def print_explanation(explanation: dict[str, Any]) -> None:
    f = explanation["features"]
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(f["intent_probabilities"].items())[:3])
    err.print(
        f"[bold]features[/]  intent {f['intent']} ({top}); math expression "
        f"{'yes' if f['has_math_expression'] else 'no'}; {f['n_words']} words, "
        f"{f['n_digits']} digits; difficulty score {f['difficulty_score']}"
        + (f" → {f['difficulty']}" if f["difficulty"] else ""),
        highlight=False,
    )
    err.print(f"[bold]plan[/]      {explanation['plan']}", highlight=False)
    err.print(f"[bold]why[/]       {explanation['reason']}", highlight=False)
    if explanation["alternatives"]:
        table = Table("alternative plan", "accuracy", "mean FLOPs", "score", title=None)
        for a in explanation["alternatives"][:6]:
            table.add_row(a["plan"], f"{a['accuracy']:.0%}", f"{a['flops']:.3g}",
                          f"{a['score']:.3f}")  # fmt: skip
        err.print(table)


def print_confidence(answer: Answer) -> None:
    """The answer's raw confidence and, where the policy maps it, what it meant in
    calibration: the share of that strategy's answers so confident that were right."""
    if not answer.answer:
        return
    line = f"[bold]confidence[/] {answer.confidence:.2f} ({answer.strategy}'s own)"
    if answer.calibrated_confidence is not None:
        line += (
            f"; {answer.calibrated_confidence:.0%} of its answers this confident were right "
            "in the policy's calibration traces"
        )
    err.print(line, highlight=False)


def print_answer(answer: Answer) -> None:
    if answer.answer:
        out.print(answer.answer, highlight=False, markup=False)
    t = answer.ledger
    tried = " → ".join(a.strategy for a in answer.attempts)
    route = (
        f"route: {answer.intent or '-'} → {tried}"
        if len(answer.attempts) > 1
        else (f"route: {answer.intent or '-'} → {answer.strategy}")
    )
    experts = sorted({c.expert for c in t.calls if c.expert})
    if experts:
        route += f" (expert {', '.join(experts)})"
    # FLOPs as if uncached (comparable across engines), and what was computed when a prompt
    # prefix came from the KV cache
    tokens_cached = f" ({t.cached_tokens} cached)" if t.cached_tokens else ""
    flops_computed = f" ({t.flops_computed:.3g} computed)" if t.cached_tokens else ""
    err.print(
        f"[dim]{route} | {t.prompt_tokens}+{t.completion_tokens} tok{tokens_cached} | "
        f"{t.flops:.3g} FLOPs{flops_computed} | {t.wall_s:.2f} s | {t.energy_j:.1f} J | "
        f"${t.cost_usd:.2g}"
        + (" | stopped for budget" if answer.stopped_for_budget else "")
        + "[/]",
        highlight=False,
    )
