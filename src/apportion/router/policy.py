"""Plans, and the policies that choose them.

A plan is a ladder: strategies in order, each with the confidence that stops the ladder there.
`stops_here` and `fallback_choice` are the ladder's semantics, shared by the executor
(engine.execute) and by calibration, which replays ladders over bench traces: what calibration
predicts is what the executor does.

Two policies:

- `RulePolicy`, a fixed ladder per intent (the fallback, and the policy before calibration);
- `CalibratedPolicy`, read from a policy.json that `apportion calibrate` wrote from bench
  traces: for each (intent, difficulty) cell, the Pareto-optimal plans with their measured
  accuracy and cost. At run time it picks the plan that maximises
  ``accuracy − λ · flops / max_flops``; when the request has a budget, it picks instead the
  most accurate plan whose expected cost fits it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from apportion.errors import UsageError
from apportion.router.confidence import IsotonicMap
from apportion.router.features import Features
from apportion.strategies.registry import parse_spec
from apportion.types import Budget, Intent

POLICY_FILE = Path(__file__).with_name("policy.json")
POLICY_VERSION = 1
EASY, HARD, ANY = "easy", "hard", "*"
# The intent of the cell that pools every calibration item (key "*/*"): the plan for a query
# of an intent the traces never showed.
POOLED_INTENT = ANY
# Accuracy given up per unit of normalised cost: 0.2 trades 2 points of accuracy for a tenth
# of the dearest fixed strategy's FLOPs. On the mixed dev set's held-out half this gave 10
# points more accuracy than chain-of-thought at 70% of its FLOPs; 0.3 gave about the same
# accuracy as chain-of-thought at half its FLOPs, answering easy word problems directly
# (README, Routing). Accuracy first by default: a user asking a word problem wants it right.
DEFAULT_LAMBDA = 0.2


@dataclass(frozen=True)
class Step:
    strategy: str  # a strategy spec, e.g. "program" or "consistency:n=8"
    stop_at: float  # stop the ladder when this step's confidence reaches this

    @property
    def name(self) -> str:
        """The strategy's name, without its parameters."""
        return parse_spec(self.strategy).name


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    reason: str
    # What calibration measured for this plan in its cell, when a calibrated policy chose it.
    expected: dict[str, float] = field(default_factory=dict)
    difficulty: str | None = None
    # The other plans the policy weighed, with their policy scores (for `ask --explain`).
    alternatives: tuple[tuple[Candidate, float], ...] = ()
    # Per step spec, the map from its raw confidence to the share of its answers that were
    # right in calibration (router/confidence.py), where the policy has one.
    calibration: Mapping[str, IsotonicMap] = field(default_factory=dict)


def stops_here(ok: bool, confidence: float, step: Step) -> bool:
    """Whether the ladder ends at an attempt: it produced an answer confident enough."""
    return ok and confidence >= step.stop_at


def fallback_choice(attempts: Sequence[tuple[bool, float]]) -> int | None:
    """When no step stopped the ladder: the most confident attempt with an answer (the first
    on ties), or None."""
    best: int | None = None
    for i, (ok, confidence) in enumerate(attempts):
        if ok and (best is None or confidence > attempts[best][1]):
            best = i
    return best


def plan_spec(steps: Sequence[Step]) -> str:
    """A ladder as text: ``program@0.5>cot`` (the last step needs no bar)."""
    return ">".join(
        s.strategy if i == len(steps) - 1 else f"{s.strategy}@{s.stop_at:g}"
        for i, s in enumerate(steps)
    )


def parse_plan_spec(text: str) -> tuple[Step, ...]:
    parts = text.split(">")
    steps = []
    for i, part in enumerate(parts):
        name, _, bar = part.rpartition("@") if i < len(parts) - 1 else (part, "", "0")
        steps.append(Step(name, float(bar)))
    return tuple(steps)


class Policy(Protocol):
    def plan(
        self, features: Features, budget: Budget, *, unavailable: frozenset[str] = frozenset()
    ) -> Plan:
        """The plan for a query; `unavailable` names strategies, or whole step specs, that
        cannot run here (rag without a document store, a step on a model not pulled)."""
        ...

    def step_specs(self) -> frozenset[str]:
        """Every step spec a plan of this policy may run (what a runtime checks it can)."""
        ...


# Cheapest route first; escalate only when it fails or is unsure. Solvers and programs come
# before reasoning in text because small models compute badly in prose (a 0.5B model answers
# 17*23+5 directly as 422) but write correct code and expressions.
RULE_LADDERS: dict[Intent, tuple[Step, ...]] = {
    "arithmetic": (Step("symbolic", 0.9), Step("program", 0.5), Step("cot", 0.0)),
    "math_word": (Step("program", 0.5), Step("cot", 0.0)),
    "logic": (Step("symbolic", 0.9), Step("cot", 0.0)),
    "factual": (Step("direct", 0.0),),
    "code": (Step("direct", 0.0),),
    "chat": (Step("direct", 0.0),),
}


@dataclass(frozen=True)
class RulePolicy:
    """A fixed ladder per intent: the fallback where no calibration covers a query."""

    def step_specs(self) -> frozenset[str]:
        return frozenset(s.strategy for ladder in RULE_LADDERS.values() for s in ladder)

    def plan(
        self, features: Features, budget: Budget, *, unavailable: frozenset[str] = frozenset()
    ) -> Plan:
        ladder = RULE_LADDERS[features.intent]
        skipped = [s.strategy for s in ladder if s.name in unavailable]
        steps = tuple(s for s in ladder if s.strategy not in skipped)
        if not steps:
            steps = (Step("direct", 0.0),)
        if steps[-1].stop_at:
            steps = (*steps[:-1], Step(steps[-1].strategy, 0.0))  # the last step always answers
        why = f"rule ladder for intent {features.intent!r}"
        if skipped:
            why += f" (skipped {', '.join(skipped)}: cannot run here)"
        return Plan(steps, why)


@dataclass(frozen=True)
class Candidate:
    """A plan as measured in one cell of the traces."""

    steps: tuple[Step, ...]
    accuracy: float
    flops: float
    wall_s: float
    cost_usd: float

    @property
    def spec(self) -> str:
        return plan_spec(self.steps)

    def strategies(self) -> set[str]:
        return {s.name for s in self.steps}

    def specs(self) -> set[str]:
        """The steps' whole specs (`program:model=qwen2.5-coder-1.5b`), parameters and all."""
        return {s.strategy for s in self.steps}

    def needs(self, unavailable: frozenset[str]) -> set[str]:
        """What of `unavailable` (strategy names or whole specs) the plan would run."""
        return (self.strategies() | self.specs()) & unavailable


@dataclass(frozen=True)
class Cell:
    n: int
    candidates: tuple[Candidate, ...]  # the Pareto set, cheapest first


def trade_off(c: Candidate, lam: float, max_flops: float) -> float:
    """What a calibrated policy maximises: accuracy − λ · FLOPs / max FLOPs."""
    return c.accuracy - lam * c.flops / max_flops


def difficulty_score(features: Features) -> float:
    """The difficulty estimate from the query alone. Calibration sets, per intent, the score
    above which a question counts as hard. In the shipped traces (benchmarks/traces, gsm8k and
    svamp split at the median score) it separates what prose reasoning can do: direct falls
    from 17% to 4% and cot from 50% to 20% on the hard half, while program rises from 23% to
    29%, which is why cells pick different plans for easy and hard."""
    return math.log2(1 + features.n_words) + math.log2(1 + features.n_numbers)


@dataclass(frozen=True)
class CalibratedPolicy:
    """See the module docstring; build with `load` or `from_dict`."""

    lam: float
    max_flops: float
    thresholds: dict[str, float]  # intent -> difficulty score above which a query is hard
    cells: dict[str, Cell]  # "intent/easy", "intent/hard" or "intent/*"
    source: dict[str, Any] = field(default_factory=dict)
    fallback: RulePolicy = field(default_factory=RulePolicy)
    # strategy spec → raw confidence → share right in the traces (absent in older files)
    confidence_maps: dict[str, IsotonicMap] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = POLICY_FILE) -> CalibratedPolicy:
        return cls.from_dict(read_policy_file(path), where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "policy") -> CalibratedPolicy:
        check_version(data, where)
        try:
            cells = {
                key: Cell(
                    int(cell["n"]),
                    tuple(
                        Candidate(
                            parse_plan_spec(c["plan"]),
                            float(c["accuracy"]),
                            float(c["flops"]),
                            float(c["wall_s"]),
                            float(c["cost_usd"]),
                        )
                        for c in cell["candidates"]
                    ),
                )
                for key, cell in data["cells"].items()
            }
            return cls(
                lam=float(data["lambda"]),
                max_flops=float(data["max_flops"]),
                thresholds={k: float(v) for k, v in data["thresholds"].items()},
                cells=cells,
                source=dict(data.get("source", {})),
                confidence_maps=read_confidence_maps(data),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{where} is not a policy file: {e!r}") from e

    def step_specs(self) -> frozenset[str]:
        """Every step spec a plan of this policy may run (what a runtime checks it can)."""
        return frozenset(
            s.strategy for cell in self.cells.values() for c in cell.candidates for s in c.steps
        )

    def difficulty(self, features: Features) -> str:
        threshold = self.thresholds.get(features.intent)
        if threshold is None:
            return ANY
        return HARD if difficulty_score(features) > threshold else EASY

    def score(self, c: Candidate) -> float:
        return trade_off(c, self.lam, self.max_flops)

    def plan(
        self, features: Features, budget: Budget, *, unavailable: frozenset[str] = frozenset()
    ) -> Plan:
        return with_calibration(self._plan(features, budget, unavailable), self.confidence_maps)

    def _plan(self, features: Features, budget: Budget, unavailable: frozenset[str]) -> Plan:
        difficulty = self.difficulty(features)
        key = f"{features.intent}/{difficulty}"
        cell = self.cells.get(key) or self.cells.get(f"{features.intent}/{ANY}")
        if cell is None and f"{POOLED_INTENT}/{ANY}" in self.cells:
            key, cell = f"{POOLED_INTENT}/{ANY}", self.cells[f"{POOLED_INTENT}/{ANY}"]
            difficulty = ANY
        if cell is None:
            rules = self.fallback.plan(features, budget, unavailable=unavailable)
            return replace(rules, reason=f"no calibrated cell for {key}: {rules.reason}")
        usable = [c for c in cell.candidates if not c.needs(unavailable)]
        if not usable:
            rules = self.fallback.plan(features, budget, unavailable=unavailable)
            return replace(rules, reason=f"no plan of cell {key} can run here: {rules.reason}")
        fits = [c for c in usable if _fits(c, budget)]
        capped = (budget.max_flops, budget.max_usd, budget.max_seconds) != (None, None, None)
        if fits and capped:
            # Given a cost cap, the most accurate plan expected to fit it (cheaper on ties).
            best = max(fits, key=lambda c: (c.accuracy, -c.flops))
            why = f"the most accurate of the {len(fits)} plans whose expected cost fits the budget"
        elif fits:
            best = max(fits, key=lambda c: (self.score(c), -c.flops))
            why = f"max accuracy − {self.lam:g}·FLOPs/{self.max_flops:.3g}"
        else:
            best = min(usable, key=lambda c: c.flops)
            why = "no plan's expected cost fits the budget: the cheapest"
        expected = {
            "accuracy": best.accuracy, "flops": best.flops, "wall_s": best.wall_s,
            "cost_usd": best.cost_usd, "n": float(cell.n),
        }  # fmt: skip
        skipped = [c.spec for c in cell.candidates if c not in usable]
        if skipped:
            needs = sorted(set().union(*(c.needs(unavailable) for c in cell.candidates)))
            why += f" (skipped {', '.join(skipped)}: {', '.join(needs)} cannot run here)"
        return Plan(
            best.steps,
            f"cell {key} ({cell.n} calibration items): {best.spec}, {why}; expected accuracy "
            f"{best.accuracy:.0%} at {best.flops:.3g} FLOPs",
            expected=expected,
            difficulty=difficulty,
            alternatives=tuple((c, self.score(c)) for c in usable),
        )


def _fits(c: Candidate, budget: Budget) -> bool:
    """Budgets are soft targets here (the executor enforces them as hard caps)."""
    return (
        (budget.max_flops is None or c.flops <= budget.max_flops)
        and (budget.max_usd is None or c.cost_usd <= budget.max_usd)
        and (budget.max_seconds is None or c.wall_s <= budget.max_seconds)
    )


RULES = "rules"  # `--policy rules`: the fixed rule ladders


def check_version(data: dict[str, Any], where: str) -> None:
    """Refuse a policy file of another format version, saying how to get this one."""
    if data.get("version") != POLICY_VERSION:
        raise UsageError(
            f"{where} has version {data.get('version')!r}; this apportion reads version "
            f"{POLICY_VERSION}",
            "re-run `apportion calibrate` with this version",
        )


def read_confidence_maps(data: dict[str, Any]) -> dict[str, IsotonicMap]:
    """A policy file's confidence maps (absent in older files: none)."""
    return {s: IsotonicMap.from_dict(m) for s, m in data.get("confidence_maps", {}).items()}


def with_calibration(planned: Plan, maps: Mapping[str, IsotonicMap]) -> Plan:
    """The plan with the confidence maps of its steps, where the policy has them."""
    mine = {s.strategy: maps[s.strategy] for s in planned.steps if s.strategy in maps}
    return replace(planned, calibration=mine) if mine else planned


def read_policy_file(path: Path) -> dict[str, Any]:
    """A policy file's JSON, or a UsageError that says what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise UsageError(
            f"policy file not found: {path}", "write one with `apportion calibrate`"
        ) from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a policy file: it holds no JSON object")
    return data


__all__ = [
    "ANY",
    "EASY",
    "HARD",
    "POLICY_FILE",
    "POOLED_INTENT",
    "CalibratedPolicy",
    "Candidate",
    "Cell",
    "Plan",
    "Policy",
    "RulePolicy",
    "Step",
    "check_version",
    "difficulty_score",
    "fallback_choice",
    "parse_plan_spec",
    "plan_spec",
    "read_confidence_maps",
    "read_policy_file",
    "stops_here",
    "trade_off",
    "with_calibration",
]
