"""consistency: self-consistency that stops as soon as the vote is settled.

Samples reasoning chains (`base=cot`) or programs (`base=program`, PAL with self-consistency) at
temperature > 0, one call per sample, normalises each extracted answer (`answers.vote_key`) and
stops by a rule from `stopping.py`: `esc` (an agreeing window), `beta` (Adaptive-Consistency)
or `fixed` (all n). Confidence is the winner's vote share.

Sample i always uses seed `ctx.seed + 1 + i`, so a fixed run and an early-stopping run draw the
same samples, and the completion cache serves one from the other.

Prompt reuse: llama.cpp keeps the KV cache of the previous call and re-evaluates only the tokens
after the longest common prefix, so samples 2..n of one prompt skip almost all prompt
processing. The ledger still charges every sample its full prompt (see ledger.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from apportion.answers import vote_key
from apportion.errors import BudgetExceededError
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext
from apportion.strategies.cot import ChainOfThought
from apportion.strategies.program import Program
from apportion.strategies.stopping import STOP_RULES, StopRule, leader, should_stop
from apportion.types import Attempt, Query

Base = Literal["cot", "program"]


@dataclass(frozen=True)
class SelfConsistency:
    n: Annotated[int, Bounds(1, 64)] = 8
    rule: StopRule = "esc"
    window: Annotated[int, Bounds(1, 64)] = 2
    confidence: Annotated[float, Bounds(0, 1)] = 0.95
    base: Base = "cot"
    temperature: Annotated[float, Bounds(0, 2)] = 0.7
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.rule not in STOP_RULES:
            raise ValueError(f"rule must be one of {', '.join(STOP_RULES)}")
        if self.base not in ("cot", "program"):
            raise ValueError("base must be cot or program")
        if self.window < 1 or not 0 < self.confidence < 1:
            raise ValueError("window must be >= 1 and confidence in (0, 1)")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0: greedy samples would all agree")

    @property
    def name(self) -> str:
        return "consistency"

    @property
    def always_answers(self) -> bool:
        """Votes over chains of thought end in an answer; votes over programs may not."""
        return self.base == "cot"

    def sample(self, query: Query, ctx: RunContext, index: int) -> Attempt:
        seed = ctx.seed + 1 + index
        if self.base == "program":
            program = Program(self.model, self.max_tokens, self.temperature)
            return program.run(query, ctx, seed=seed)
        cot = ChainOfThought(self.model, self.max_tokens, self.temperature)
        return cot.run(query, ctx, seed=seed)

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        votes: list[str | None] = []
        answers: dict[str, str] = {}  # vote key → the first answer text with that key
        rationale: dict[str, str] = {}
        stopped_for_budget = False
        while not should_stop(
            votes, rule=self.rule, max_samples=self.n, window=self.window,
            confidence=self.confidence,
        ):  # fmt: skip
            try:
                attempt = self.sample(query, ctx, len(votes))
            except BudgetExceededError:
                if not votes:
                    raise
                stopped_for_budget = True
                break
            key = vote_key(attempt.answer, query.kind) if attempt.ok else None
            votes.append(key)
            if key is not None and attempt.answer is not None:
                answers.setdefault(key, attempt.answer)
                rationale.setdefault(key, attempt.rationale)
        winner, share = leader(votes)
        summary = f"{len(votes)} of {self.n} samples" + (
            ", stopped for budget" if stopped_for_budget else ""
        )
        if winner is None:
            return Attempt(self.name, None, 0.0, error=f"no sample gave an answer ({summary})")
        return Attempt(
            self.name,
            answers[winner],
            share,
            candidates=tuple(answers.get(v, "") if v else "" for v in votes),
            rationale=f"[{summary}] " + rationale[winner],
        )
