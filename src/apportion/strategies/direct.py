"""direct: one greedy call, no reasoning. The cheapest route and the baseline for every other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

from apportion.answers import extract_answer
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext, TokenStream
from apportion.strategies.prompts import answer_format, instructed
from apportion.types import Attempt, Message, Query


@dataclass(frozen=True)
class Direct:
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None
    # Record token log-probabilities and use their mean as the confidence (a cheap signal for
    # cascades). Off by default: the direct path should cost what a raw call costs.
    logprobs: bool = False
    # The question before the instructions (prompts.instructed): a plan's later steps on the
    # same model reuse this step's KV cache for the question.
    question_first: bool = False

    # It ends in an answer whenever the model says anything: a plan may end with it.
    always_answers: ClassVar[bool] = True
    # Its one call's tokens are the answer: a client may be shown them as they come.
    token_stream: ClassVar[TokenStream] = "answer"

    @property
    def name(self) -> str:
        return "direct"

    def messages(self, query: Query) -> list[Message]:
        if query.kind is None:
            system = "Answer the user's question directly and concisely."
        else:
            system = (
                "Answer the question directly, with no explanation. "
                f"Reply with only {answer_format(query)}."
            )
        return instructed(system, query, question_first=self.question_first)

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        (completion,) = ctx.generate(
            self.messages(query),
            model=self.model,
            max_tokens=self.max_tokens,
            logprobs=self.logprobs,
            detail="direct",
        )
        text = completion.text.strip()
        answer = text
        if query.kind is not None:
            answer = extract_answer(text, query.kind, query.choices) or text
        mean_lp = completion.mean_logprob
        confidence = math.exp(mean_lp) if mean_lp is not None else 0.5
        if not answer:
            return Attempt(self.name, None, 0.0, rationale=text, error="empty answer")
        return Attempt(self.name, answer, confidence, candidates=(answer,), rationale=text)
