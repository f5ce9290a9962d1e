"""cot: chain-of-thought — reason step by step, then extract the final answer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

from apportion.answers import extract_answer
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext, TokenStream
from apportion.strategies.prompts import FINAL_LINE, answer_format
from apportion.types import Attempt, Message, Query


@dataclass(frozen=True)
class ChainOfThought:
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None
    temperature: Annotated[float, Bounds(0, 2)] = 0.0
    logprobs: bool = False

    # It ends in an answer whenever the model says anything: a plan may end with it.
    always_answers: ClassVar[bool] = True
    # Its one call's tokens are the reasoning that ends in the answer.
    token_stream: ClassVar[TokenStream] = "reasoning"

    @property
    def name(self) -> str:
        return "cot"

    def messages(self, query: Query) -> list[Message]:
        system = (
            "Solve the problem step by step. Be brief. "
            f"End with a final line of the form '{FINAL_LINE} X.' where X is "
            f"{answer_format(query)}."
        )
        return [Message("system", system), *query.history, Message("user", query.text)]

    def parse(self, text: str, query: Query) -> str | None:
        return extract_answer(text, query.kind, query.choices)

    def run(self, query: Query, ctx: RunContext, *, seed: int | None = None) -> Attempt:
        (completion,) = ctx.generate(
            self.messages(query),
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            logprobs=self.logprobs,
            detail="cot",
        )
        answer = self.parse(completion.text, query)
        if answer is None:
            return Attempt(self.name, None, 0.0, rationale=completion.text, error="no final answer")
        mean_lp = completion.mean_logprob
        confidence = math.exp(mean_lp) if mean_lp is not None else 0.6
        return Attempt(
            self.name, answer, confidence, candidates=(answer,), rationale=completion.text
        )
