"""Plans: an ordered ladder of strategies, each with the confidence that stops the ladder there."""

from __future__ import annotations

from dataclasses import dataclass

from apportion.router.features import Features, Intent
from apportion.types import Budget


@dataclass(frozen=True)
class Step:
    strategy: str  # a strategy spec, e.g. "program" or "consistency:n=8"
    stop_at: float  # stop the ladder when this step's confidence reaches this


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    reason: str


# Cheapest route first; escalate only when it fails or is unsure. Solvers and programs come
# before reasoning in text because small models compute badly in prose (a 0.5B model answers
# 17*23+5 directly as 422) but write correct code and expressions.
RULE_LADDERS: dict[Intent, tuple[Step, ...]] = {
    "arithmetic": (Step("symbolic", 0.9), Step("program", 0.5), Step("cot", 0.0)),
    "math_word": (Step("program", 0.5), Step("cot", 0.0)),
    "logic": (Step("cot", 0.0),),
    "factual": (Step("direct", 0.0),),
    "code": (Step("direct", 0.0),),
    "chat": (Step("direct", 0.0),),
}


@dataclass(frozen=True)
class RulePolicy:
    """The first `auto`: a fixed ladder per intent. A calibrated policy replaces it later."""

    def plan(self, features: Features, budget: Budget) -> Plan:
        steps = RULE_LADDERS[features.intent]
        return Plan(steps, f"rule ladder for intent {features.intent!r}")
