"""best_of_n: sample N chains of thought, keep the one a verifier scores highest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext
from apportion.strategies.cot import ChainOfThought
from apportion.strategies.verifiers import VERIFIERS, Candidate, make_verifier
from apportion.types import Attempt, Query


@dataclass(frozen=True)
class BestOfN:
    n: Annotated[int, Bounds(1, 32)] = 4
    verifier: str = "logprob"
    temperature: Annotated[float, Bounds(0, 2)] = 0.7
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}")

    # It ends in an answer whenever the model says anything: a plan may end with it.
    always_answers: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "best_of_n"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        verifier = make_verifier(self.verifier, model=self.model)
        cot = ChainOfThought(self.model, self.max_tokens, self.temperature)
        candidates: list[Candidate] = []
        for i in range(self.n):
            # same seeds as consistency's samples, so the completion cache serves both
            (completion,) = ctx.generate(
                cot.messages(query),
                model=self.model,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                seed=ctx.seed + 1 + i,
                logprobs=verifier.needs_logprobs,
                detail=f"best_of_n: sample {i + 1}",
            )
            answer = cot.parse(completion.text, query)
            if answer is not None:
                candidates.append(Candidate(answer, completion.text, completion.mean_logprob))
        if not candidates:
            return Attempt(self.name, None, 0.0, error=f"none of {self.n} samples gave an answer")
        scores = verifier.score(query, candidates, ctx)
        best = max(range(len(candidates)), key=lambda i: scores[i])
        return Attempt(
            self.name,
            candidates[best].answer,
            scores[best],
            candidates=tuple(c.answer for c in candidates),
            rationale=candidates[best].text,
        )
