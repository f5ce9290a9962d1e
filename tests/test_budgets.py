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
from pathlib import Path

import pytest

from apportion.engines.speed import SpeedBook
from apportion.errors import BudgetExceededError
from apportion.ledger import HardwareProfile, Ledger, ModelCost, model_flops
from apportion.router.policy import Plan, Step
from apportion.runtime import execute
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.types import Budget, Message, Query
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
    ctx = RunContext.over(
        engine_for=lambda _id: engine, default_model=engine.model_id, ledger=ledger, max_tokens=24
    )
    if engine.clock is not None:
        ctx.calls.clock = engine.clock
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
    ctx = RunContext.over(
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


def _timed_ctx(engine: ScriptedEngine, budget: Budget, speeds: SpeedBook) -> RunContext:
    assert engine.clock is not None
    return RunContext.over(
        engine_for=lambda _id: engine, default_model=engine.model_id,
        ledger=Ledger(budget=budget), max_tokens=64, clock=engine.clock, speeds=speeds,
    )  # fmt: skip


def test_a_prompt_the_time_left_cannot_cover_is_refused_before_the_call() -> None:
    """A model cannot stop while it reads its prompt (`--budget-seconds 0.5` once used 1.13 s):
    once the book has measured the model, a budget shorter than the prompt's reading time is
    refused without a call, as a FLOPs budget too small for the prompt is."""
    speeds = SpeedBook()
    clock = FakeClock()
    engine = ScriptedEngine([REPLY, REPLY], seconds_per_token=0.01, clock=clock, prefill_s=0.3)
    # a first call, with room to spare, measures the model
    first = execute(
        Plan((Step("cot", 0.0),), "t"), Query("q?"),
        _timed_ctx(engine, Budget(max_seconds=5.0), speeds), default_registry(), intent=None,
    )  # fmt: skip
    assert first.answer and len(engine.calls) == 1
    ctx = _timed_ctx(engine, Budget(max_seconds=0.2), speeds)
    plan = Plan((Step("cot", 0.0),), "t")
    refused = execute(plan, Query("q?"), ctx, default_registry(), intent=None)
    assert refused.stopped_for_budget and refused.error is not None
    assert "prompt takes scripted about 0.31 s here (measured)" in refused.error
    assert len(engine.calls) == 1 and ctx.ledger.totals().calls == ()  # never called


@pytest.mark.parametrize("cap", [0.7, 1.0, 1.3, 2.0])
def test_a_running_call_stops_within_a_tenth_of_the_cap(cap: float) -> None:
    """Slow tokens (0.3 s each) after a slow prompt (0.3 s): a call stops before the token
    that would cross the cap, using the token time measured on earlier calls from its first
    token on (it once waited for a second token to learn it, and overran)."""
    speeds = SpeedBook()
    clock = FakeClock()
    engine = ScriptedEngine([REPLY] * 3, seconds_per_token=0.3, clock=clock, prefill_s=0.3)
    execute(
        Plan((Step("direct", 0.0),), "t"), Query("q?"),
        _timed_ctx(engine, Budget(max_seconds=30.0), speeds), default_registry(), intent=None,
    )  # fmt: skip
    ctx = _timed_ctx(engine, Budget(max_seconds=cap), speeds)
    execute(Plan((Step("cot", 0.0),), "t"), Query("q?"), ctx, default_registry(), intent=None)
    spent = ctx.ledger.totals().wall_s
    assert spent <= max(cap * 1.1, cap + 0.1), (cap, spent)


def test_a_time_capped_call_of_n_samples_is_drawn_one_by_one_within_the_cap() -> None:
    clock = FakeClock()
    engine = ScriptedEngine([REPLY] * 4, seconds_per_token=0.01, clock=clock)
    ctx = _timed_ctx(engine, Budget(max_seconds=0.25), SpeedBook())
    with pytest.raises(BudgetExceededError):
        ctx.generate([Message("user", "q?")], n=4, temperature=0.7, max_tokens=16)
    assert ctx.ledger.totals().wall_s <= 0.25
    assert 1 < len(engine.calls) < 4  # some samples fitted, then the cap stopped the rest


def test_speeds_are_kept_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "speeds.json"
    book = SpeedBook(path)
    book.record("m|threads=1", prompt_tokens=100, first_token_s=0.5, steps=10, decode_s=0.2)
    book.save()
    assert path.stat().st_mode & 0o777 == 0o600
    again = SpeedBook(path)
    assert again.prefill_s("m|threads=1", 50, params=1e9, threads=1) == pytest.approx(0.25)
    assert again.step_s("m|threads=1") == pytest.approx(0.02)
    path.write_text("not json")
    assert SpeedBook(path).get("m|threads=1") is None  # a damaged file is measured afresh


def test_a_stale_speed_is_measured_again() -> None:
    """A speed taken on a busy machine must not refuse every tight budget forever."""
    now = [1000.0]
    book = SpeedBook(now=lambda: now[0])
    book.record("m", prompt_tokens=10, first_token_s=5.0, steps=1, decode_s=1.0)
    assert book.get("m") is not None
    now[0] += 601
    assert book.get("m") is None and book.step_s("m") is None  # stale: probed or assumed again
    book.record("m", prompt_tokens=10, first_token_s=0.1, steps=1, decode_s=0.01)
    fresh = book.get("m")
    assert fresh is not None and fresh.prompt_s_per_token == pytest.approx(0.01)  # not averaged


def test_an_unmeasured_model_is_probed_before_a_tight_budget_decides() -> None:
    """A one-shot `ask --budget-seconds` on a model this machine never measured: a one-token
    probe (charged) measures it, and the measurement, not a guess, decides."""
    clock = FakeClock()
    # 1e9 parameters: at the prior speed a 33-token prompt reads in 1.3 s, a good share of a
    # 5 s budget, which leaves room to measure first; really it reads in 0.3 s.
    engine = ScriptedEngine(["OK", REPLY], seconds_per_token=0.01, clock=clock, prefill_s=0.3)
    engine.cost = ModelCost("scripted", params=1e9)
    speeds = SpeedBook()
    ctx = _timed_ctx(engine, Budget(max_seconds=5.0), speeds)
    plan = Plan((Step("cot", 0.0),), "t")
    answer = execute(plan, Query("q?"), ctx, default_registry(), intent=None)
    assert answer.answer == "72" and not answer.stopped_for_budget
    probe, call = ctx.ledger.totals().calls
    assert probe.detail == "speed probe" and probe.completion_tokens == 1
    assert call.detail == "cot" and speeds.get(ctx.calls.speed_key(engine)) is not None
    # measured, a budget below the prompt's reading time is refused without a call
    refused = _timed_ctx(engine, Budget(max_seconds=0.2), speeds)
    engine.replies.append(REPLY)
    out = execute(plan, Query("q?"), refused, default_registry(), intent=None)
    assert out.stopped_for_budget and "(measured)" in (out.error or "")
    assert refused.ledger.totals().calls == ()


def test_without_room_to_measure_an_unmeasured_model_is_judged_at_a_modest_speed() -> None:
    clock = FakeClock()
    engine = ScriptedEngine([REPLY], seconds_per_token=0.01, clock=clock, prefill_s=0.3)
    engine.cost = ModelCost("scripted", params=3e9)  # a 33-token prompt: ~4 s at the prior
    ctx = _timed_ctx(engine, Budget(max_seconds=2.0), SpeedBook())
    plan = Plan((Step("cot", 0.0),), "t")
    out = execute(plan, Query("q?"), ctx, default_registry(), intent=None)
    assert out.stopped_for_budget and "not been measured on this machine" in (out.error or "")
    assert engine.calls == []
