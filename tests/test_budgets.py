"""Hard budgets, over many questions: the ledger never ends above a cap.

FLOPs (and a remote model's $) are checked before each call against its worst case (every
max token generated), so they can never be exceeded. Time (and a local model's $, which bills
by the second) is unknown in advance; generation is cut off when the next token would cross
the cap, so the ledger stays within the cap as long as tokens arrive at a steady pace (the
tests drive a fake clock; on real hardware a token slower than all before it can overrun by
the difference).
"""

from __future__ import annotations

import random

import pytest

from apportion.engine import execute
from apportion.ledger import HardwareProfile, Ledger, model_flops
from apportion.router.policy import Plan, Step
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.types import Budget, Query
from fakes import FakeClock, ScriptedEngine

REPLY = "Let me think step by step about this. 48 + 24 = 72. The answer is 72."
PLANS = [
    (Step("direct", 0.0),),
    (Step("cot", 0.0),),
    (Step("program", 0.5), Step("cot", 0.0)),
    (Step("consistency:n=4,rule=fixed", 0.0),),
    (Step("best_of_n:n=3,verifier=agreement", 0.0),),
]


def run(plan: tuple[Step, ...], budget: Budget, engine: ScriptedEngine) -> Ledger:
    ledger = Ledger(budget=budget, hardware=HardwareProfile(usd_per_hour=3600.0))  # $1 per s
    ctx = RunContext(
        engine_for=lambda _id: engine, default_model=engine.model_id, ledger=ledger, max_tokens=24
    )
    if engine.clock is not None:
        ctx.clock = engine.clock
    answer = execute(
        Plan(plan, "test"), Query("How many clips?", kind="number"), ctx, default_registry(),
        intent=None,
    )  # fmt: skip
    # Stopping for budget is reported, never silent.
    if any(a.error and a.error.startswith("budget") for a in answer.attempts):
        assert answer.stopped_for_budget
    return ledger


def test_flops_caps_hold_over_many_questions() -> None:
    rng = random.Random(0)
    one_call = model_flops(1e6, 20, 24)
    stopped = 0
    for i in range(200):
        cap = rng.uniform(0.2, 6.0) * one_call
        engine = ScriptedEngine([REPLY] * 20)
        ledger = run(PLANS[i % len(PLANS)], Budget(max_flops=cap), engine)
        spent = ledger.totals().flops
        assert spent <= cap, (i, spent, cap)
        stopped += spent < one_call
    assert stopped > 0  # some caps were too small for even one call: those stopped at once


@pytest.mark.parametrize("kind", ["seconds", "usd"])
def test_time_and_local_money_caps_cut_generation_off(kind: str) -> None:
    rng = random.Random(1)
    per_token = 0.002
    cut = 0
    for i in range(30):
        cap = rng.uniform(0.005, 0.06)  # seconds, or $ at $1 per second
        budget = Budget(max_seconds=cap) if kind == "seconds" else Budget(max_usd=cap)
        engine = ScriptedEngine([REPLY] * 20, seconds_per_token=per_token, clock=FakeClock())
        ledger = run(PLANS[i % len(PLANS)], budget, engine)
        totals = ledger.totals()
        spent = totals.wall_s if kind == "seconds" else totals.cost_usd
        assert spent <= cap, (i, spent, cap)
        cut += any(c.completion_tokens < len(REPLY.split()) for c in totals.calls)
    assert cut > 0  # the cap really did stop generation part-way


def test_a_cut_call_is_charged_and_reported() -> None:
    clock = FakeClock()
    engine = ScriptedEngine([REPLY], seconds_per_token=0.01, clock=clock)
    ledger = Ledger(budget=Budget(max_seconds=0.05))
    ctx = RunContext(
        engine_for=lambda _id: engine,
        default_model="scripted",
        ledger=ledger,
        max_tokens=64,
        clock=clock,
    )
    answer = execute(
        Plan((Step("cot", 0.0),), "test"), Query("q?"), ctx, default_registry(), intent=None
    )
    assert answer.stopped_for_budget and answer.error is not None
    assert "cut off after" in answer.error
    (call,) = ledger.totals().calls
    assert 0 < call.completion_tokens < len(REPLY.split())
    assert call.wall_s <= 0.05
