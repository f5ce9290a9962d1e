"""cascade: answer on a small model; escalate to a large one only when the small one is unsure.

The small model's confidence comes from a cheap self-consistency probe (`probe`, `probe_n`
samples with the Beta stopping rule: two agreeing samples usually settle it). Below
`threshold`, the large model answers with `final` (greedy). Both models' calls are charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from apportion.config import DEFAULT_MODEL, LARGE_MODEL
from apportion.strategies.base import RunContext
from apportion.strategies.consistency import SelfConsistency
from apportion.strategies.cot import ChainOfThought
from apportion.strategies.program import Program
from apportion.types import Attempt, Query

Method = Literal["cot", "program"]


@dataclass(frozen=True)
class Cascade:
    small: str = DEFAULT_MODEL
    large: str = LARGE_MODEL
    threshold: float = 0.6
    probe: Method = "program"
    probe_n: int = 3
    probe_confidence: float = 0.8
    final: Method = "cot"

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ValueError("threshold must be in [0, 1]")
        if self.probe not in ("cot", "program") or self.final not in ("cot", "program"):
            raise ValueError("probe and final must be cot or program")
        if self.probe_n < 1:
            raise ValueError("probe_n must be at least 1")

    @property
    def name(self) -> str:
        return "cascade"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        probe = SelfConsistency(
            n=self.probe_n, rule="beta", confidence=self.probe_confidence, base=self.probe,
            model=self.small,
        )  # fmt: skip
        first = probe.run(query, ctx)
        if first.ok and first.confidence >= self.threshold:
            return Attempt(
                self.name, first.answer, first.confidence, first.candidates,
                f"[{self.small}, confidence {first.confidence:.2f}] {first.rationale}",
            )  # fmt: skip
        final = Program(model=self.large) if self.final == "program" else ChainOfThought(self.large)
        second = final.run(query, ctx)
        if not second.ok:
            # the large model failed outright: the small model's answer beats none
            return first if first.ok else second
        return Attempt(
            self.name, second.answer, max(second.confidence, first.confidence),
            (*first.candidates, *second.candidates),
            f"[escalated to {self.large}: small confidence {first.confidence:.2f}] "
            + second.rationale,
        )  # fmt: skip
