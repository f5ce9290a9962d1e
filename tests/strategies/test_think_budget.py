"""cot:think_budget=N: reasoning capped at N tokens, then the answer forced by a short second
call (budget forcing), on scripted engines and on a real model."""

from __future__ import annotations

import pytest

from apportion.ledger import Ledger
from apportion.runtime import Engine, Request
from apportion.strategies.base import RunContext
from apportion.strategies.cot import FORCED_ANSWER_TOKENS, ChainOfThought
from apportion.strategies.prompts import FINAL_LINE
from apportion.types import Query
from fakes import ScriptedEngine

Q = Query("Natalia sold 48 clips in April and half as many in May. How many in all?", "number")
LONG = "First, 48 clips in April. Half of 48 is 24, so in May she sold 24 clips and then"


def ctx_over(engine: ScriptedEngine) -> RunContext:
    return RunContext.over(lambda _id: engine, "scripted", Ledger(), max_tokens=256)


def test_reasoning_that_runs_out_is_stopped_and_the_answer_forced() -> None:
    engine = ScriptedEngine([LONG, f"{FINAL_LINE} 72."])
    ctx = ctx_over(engine)
    attempt = ChainOfThought(think_budget=len(LONG.split())).run(Q, ctx)
    assert attempt.answer == "72" and "[thinking budget reached]" in attempt.rationale
    first, forced = ctx.ledger.charges
    assert (first.detail, forced.detail) == ("cot", "cot: answer")
    # the forced call carries the reasoning so far, then asks for the final line alone
    assert engine.calls[1][-2].role == "assistant" and engine.calls[1][-2].content == LONG
    assert "final line" in engine.calls[1][-1].content


def test_reasoning_within_its_budget_is_one_call() -> None:
    engine = ScriptedEngine([f"48 + 24 = 72. {FINAL_LINE} 72."])
    ctx = ctx_over(engine)
    assert ChainOfThought(think_budget=64).run(Q, ctx).answer == "72"
    assert len(ctx.ledger.charges) == 1


def test_a_zero_budget_asks_for_the_final_line_alone() -> None:
    engine = ScriptedEngine([f"{FINAL_LINE} 72."])
    ctx = ctx_over(engine)
    assert ChainOfThought(think_budget=0).run(Q, ctx).answer == "72"
    (charge,) = ctx.ledger.charges
    assert charge.detail == "cot: answer" and engine.calls[0][-2].role == "user"


def test_without_a_budget_a_truncated_chain_is_read_as_before() -> None:
    engine = ScriptedEngine([LONG])
    attempt = ChainOfThought().run(Q, ctx_over(engine))
    assert attempt.answer == "24" and len(engine.calls) == 1  # a guess from the last number


@pytest.mark.model
def test_budget_forcing_on_a_real_model(small_engine: Engine) -> None:
    answer = small_engine.answer(
        Request(Q.text, strategy="cot:think_budget=8", model="smollm2-135m", kind="number")
    )
    calls = [(c.detail, c.completion_tokens) for c in answer.ledger.calls]
    assert calls[0] == ("cot", 8)
    assert calls[1][0] == "cot: answer" and calls[1][1] <= FORCED_ANSWER_TOKENS
