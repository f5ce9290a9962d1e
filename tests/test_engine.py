"""The executor's ladder and budget logic, on a scripted engine (no model needed)."""

from __future__ import annotations

import pytest

from apportion.engine import Engine, execute
from apportion.errors import UnknownNameError, UsageError
from apportion.ledger import Ledger
from apportion.router.policy import Plan, Step
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.types import Budget, Query
from fakes import ScriptedEngine


def _ctx(engine: ScriptedEngine, budget: Budget | None = None) -> RunContext:
    return RunContext(
        engine_for=lambda _id: engine,
        default_model="scripted",
        ledger=Ledger(budget=budget or Budget()),
        max_tokens=64,
    )


def test_ladder_escalates_past_a_failing_program_and_charges_both() -> None:
    engine = ScriptedEngine(["no code here", "48 + 24 = 72. The answer is 72."])
    plan = Plan((Step("program", 0.5), Step("cot", 0.0)), "test")
    answer = execute(
        plan, Query("q?", kind="number"), _ctx(engine), default_registry(), intent=None
    )
    assert answer.answer == "72"
    assert answer.strategy == "cot"
    assert [a.strategy for a in answer.attempts] == ["program", "cot"]
    assert answer.attempts[0].error == "no solve() in reply"
    assert len(answer.ledger.calls) == 2
    assert answer.ledger.flops > 0


def test_budget_stops_before_a_call_it_cannot_cover() -> None:
    engine = ScriptedEngine(["The answer is 1."])
    plan = Plan((Step("cot", 0.0),), "test")
    answer = execute(
        plan, Query("q?"), _ctx(engine, Budget(max_flops=1.0)), default_registry(), intent=None
    )
    assert answer.stopped_for_budget
    assert answer.error and "budget" in answer.error
    assert answer.ledger.flops == 0
    assert engine.calls == []  # the model was never called


def test_engine_rejects_bad_input_before_work() -> None:
    engine = Engine()
    with pytest.raises(UsageError, match="empty"):
        engine.ask("   ")
    with pytest.raises(UsageError, match="characters"):
        engine.ask("x" * 300_000)
    with pytest.raises(UnknownNameError, match="qwen2.5-coder-0.5b"):
        engine.ask("hi", model="no-such-model")
    with pytest.raises(UnknownNameError, match="symbolic"):
        engine.ask("hi", strategy="nope")


def test_symbolic_evaluates_a_boolean_formula_with_z3() -> None:
    answer = Engine().ask("not ( True ) and ( True ) or not False is", strategy="symbolic")
    assert answer.answer == "True"
    (call,) = answer.ledger.calls
    assert (call.kind, call.name, call.flops) == ("tool", "z3", 0)


def test_symbolic_declines_what_no_solver_reads() -> None:
    answer = Engine().ask("Is the sky blue and the grass green?", strategy="symbolic")
    assert answer.answer == "" and answer.error == "solver: no_math"
    assert [c.name for c in answer.ledger.calls] == ["sympy"]


def test_symbolic_route_needs_no_model() -> None:
    answer = Engine().ask("What is 17*23+5?")
    assert (answer.answer, answer.strategy, answer.intent) == ("396", "symbolic", "arithmetic")
    assert answer.ledger.calls[0].kind == "tool"
    assert answer.ledger.cpu_s >= 0 and answer.ledger.energy_j >= 0
    (call,) = answer.ledger.calls
    assert call.name == "sympy" and call.wall_s > 0 and call.flops == 0
    # tool energy is the profile's watts per core times the CPU it burned
    assert call.energy_j == pytest.approx(Engine().settings.hardware.watts_per_core * call.cpu_s)
