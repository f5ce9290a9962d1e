"""The executor's ladder and budget logic, on a scripted engine (no model needed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apportion.errors import EngineError, UnknownNameError, UsageError
from apportion.ledger import Ledger
from apportion.router.features import Features
from apportion.router.policy import Plan, Step
from apportion.runtime import Engine, Request, execute
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.types import Budget, Query
from fakes import ScriptedEngine


def _ctx(engine: ScriptedEngine, budget: Budget | None = None) -> RunContext:
    return RunContext.over(
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


class _RaisingEngine(ScriptedEngine):
    """Fails every call, as an unreachable server or a broken model does."""

    def generate(self, messages, **kwargs):  # type: ignore[no-untyped-def, override]
        self.calls.append(list(messages))
        raise EngineError("the model server refused the connection")


def test_a_step_that_raises_is_a_failed_attempt_and_the_next_step_runs() -> None:
    broken = _RaisingEngine([], model_id="broken")
    working = ScriptedEngine(["48 + 24 = 72. The answer is 72."])
    ctx = RunContext.over(
        engine_for=lambda model_id: broken if model_id == "broken" else working,
        default_model="scripted",
        ledger=Ledger(),
        max_tokens=64,
    )
    plan = Plan((Step("direct:model=broken", 0.9), Step("cot", 0.0)), "test")
    answer = execute(plan, Query("q?", kind="number"), ctx, default_registry(), intent=None)
    assert answer.answer == "72" and answer.strategy == "cot"
    failed, answered = answer.attempts
    assert failed.strategy == "direct:model=broken" and failed.answer is None
    assert failed.error == "the model server refused the connection"
    assert answered.ok
    assert len(broken.calls) == 1 and len(working.calls) == 1
    assert [c.name for c in answer.ledger.calls] == ["scripted"]  # the failed call spent nothing


def test_a_plan_whose_every_step_raises_raises_the_last_typed_error() -> None:
    broken = _RaisingEngine([], model_id="broken")
    ctx = RunContext.over(
        engine_for=lambda _id: broken, default_model="broken", ledger=Ledger(), max_tokens=64
    )
    plan = Plan((Step("direct", 0.9), Step("cot", 0.0)), "test")
    with pytest.raises(EngineError, match="refused"):
        execute(plan, Query("q?"), ctx, default_registry(), intent=None)
    assert len(broken.calls) == 2  # both steps were tried


def test_an_auto_plan_that_can_decline_is_closed_by_a_step_that_answers() -> None:
    engine = Engine(policy=_FixedPolicy((Step("symbolic", 0.0),)))
    engine.register(ScriptedEngine(["Step by step. The answer is 17."], model_id="scripted"))
    # the policy's plan alone would decline this (no math the solver reads)
    question = "Who wrote the number seventeen on the wall?"
    prepared = engine.prepare(Request(question, model="scripted"))
    assert [s.strategy for s in prepared.plan.steps] == ["symbolic", "direct"]
    assert "can end without an answer" in prepared.plan.reason
    answer = engine.run(prepared)
    assert answer.answer and answer.strategy == "direct"
    # a plan ending in a step that always answers is left as it is
    engine = Engine(policy=_FixedPolicy((Step("symbolic", 0.9), Step("cot", 0.0))))
    engine.register(ScriptedEngine([], model_id="scripted"))
    prepared = engine.prepare(Request("What is 2+2?", model="scripted"))
    assert [s.strategy for s in prepared.plan.steps] == ["symbolic", "cot"]


def test_the_shipped_policy_answers_an_equation_it_was_not_calibrated_on() -> None:
    """Held out: the arithmetic cell's plan once was `symbolic` alone, which declined
    `6x + 72 = 174` and left the question unanswered."""
    engine = Engine()
    plan = engine.prepare(Request("If 6x + 72 = 174, what is x?")).plan
    assert engine.registry.always_answers(plan.steps[-1].strategy)


@dataclass(frozen=True)
class _FixedPolicy:
    steps: tuple[Step, ...]

    def plan(
        self, features: Features, budget: Budget, *, unavailable: frozenset[str] = frozenset()
    ) -> Plan:
        return Plan(self.steps, "fixed for the test")

    def step_specs(self) -> frozenset[str]:
        return frozenset(s.strategy for s in self.steps)
