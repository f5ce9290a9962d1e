"""cot: chain-of-thought — reason step by step, then extract the final answer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

from apportion.answers import extract_answer
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext, TokenStream
from apportion.strategies.prompts import FINAL_LINE, answer_format, instructed
from apportion.types import Attempt, Completion, Message, Query


@dataclass(frozen=True)
class ChainOfThought:
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None
    temperature: Annotated[float, Bounds(0, 2)] = 0.0
    logprobs: bool = False
    # The question before the instructions (prompts.instructed): a plan's later steps on the
    # same model reuse this step's KV cache for the question.
    question_first: bool = False
    # Tokens the reasoning may take (None: up to max_tokens). When they run out before the
    # final line, the reasoning is stopped and the answer forced with a short second call
    # (budget forcing, as in s1) instead of a truncated chain the extractor cannot read;
    # 0 asks for the final line alone. On a reasoning model whose engine config names how
    # its server takes a budget (`thinking`), the server is told instead (see _run_native).
    think_budget: Annotated[int | None, Bounds(0, MAX_TOKENS_BOUND)] = None

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
        return instructed(system, query, question_first=self.question_first)

    def parse(self, text: str, query: Query) -> str | None:
        return extract_answer(text, query.kind, query.choices)

    def run(self, query: Query, ctx: RunContext, *, seed: int | None = None) -> Attempt:
        messages = self.messages(query)
        if self.think_budget is not None and ctx.takes_think_budget(self.model):
            return self._run_native(query, ctx, messages, self.think_budget, seed)
        if self.think_budget == 0:
            return self._answer_now(query, ctx, messages, "", seed)
        budget = self.think_budget
        (completion,) = ctx.generate(
            messages,
            model=self.model,
            max_tokens=min(budget, self.max_tokens or budget) if budget else self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            logprobs=self.logprobs,
            detail="cot",
        )
        cut = completion.finish_reason == "length" or (
            budget is not None and completion.completion_tokens >= budget
        )
        if budget is not None and cut and FINAL_LINE.lower() not in completion.text.lower():
            # the reasoning ran out before its final line: whatever number the extractor
            # would pick from it is a guess, so the answer is asked for
            return self._answer_now(query, ctx, messages, completion.text, seed)
        answer = self.parse(completion.text, query)
        if answer is None:
            return Attempt(self.name, None, 0.0, rationale=_rationale(completion),
                           error="no final answer")  # fmt: skip
        return self._attempt(answer, completion.mean_logprob, _rationale(completion))

    def _run_native(
        self, query: Query, ctx: RunContext, messages: list[Message], budget: int,
        seed: int | None,
    ) -> Attempt:  # fmt: skip
        """A reasoning model whose server takes the budget (engines/openai_http.py): it
        thinks apart (`reasoning_content`) for at most `budget` tokens, then answers; the reply
        may take the budget and `max_tokens` more. Where thinking used the whole reply and no
        answer came, the answer is forced with thinking off."""
        room = self.max_tokens or ctx.max_tokens
        (completion,) = ctx.generate(
            messages, model=self.model, max_tokens=budget + room if budget else room,
            temperature=self.temperature, seed=seed, logprobs=self.logprobs, detail="cot",
            think_budget=budget,
        )  # fmt: skip
        answer = self.parse(completion.text, query)
        if answer is None and budget and completion.finish_reason == "length":
            return self._answer_now(query, ctx, messages, completion.reasoning, seed, native=True)
        if answer is None:
            return Attempt(self.name, None, 0.0, rationale=_rationale(completion),
                           error="no final answer")  # fmt: skip
        return self._attempt(answer, completion.mean_logprob, _rationale(completion))

    def _answer_now(
        self,
        query: Query,
        ctx: RunContext,
        messages: list[Message],
        reasoning: str,
        seed: int | None,
        *,
        native: bool = False,
    ) -> Attempt:
        """Budget forcing: the reasoning so far, then a request for the final line alone (of
        a reasoning model whose server takes a budget, with its thinking off: `native`)."""
        forced = [*messages]
        if reasoning:
            forced.append(Message("assistant", reasoning))
        forced.append(Message("user", f"Stop thinking now. Reply with only the final line: "
                                      f"'{FINAL_LINE} X.'"))  # fmt: skip
        (completion,) = ctx.generate(
            forced, model=self.model, max_tokens=FORCED_ANSWER_TOKENS, temperature=0.0,
            seed=seed, logprobs=self.logprobs, detail="cot: answer",
            think_budget=0 if native else None,
        )  # fmt: skip
        answer = self.parse(completion.text, query)
        rationale = f"{reasoning}\n[thinking budget reached]\n{completion.text}".strip()
        if answer is None:
            return Attempt(self.name, None, 0.0, rationale=rationale, error="no final answer")
        return self._attempt(answer, completion.mean_logprob, rationale)

    def _attempt(self, answer: str, mean_logprob: float | None, rationale: str) -> Attempt:
        confidence = math.exp(mean_logprob) if mean_logprob is not None else 0.6
        return Attempt(self.name, answer, confidence, candidates=(answer,), rationale=rationale)


# Enough for a final line ("The answer is 1,234.") and no more.
FORCED_ANSWER_TOKENS = 24


def _rationale(completion: Completion) -> str:
    """What the model wrote: a reasoning model's separate thinking, then its reply."""
    if not completion.reasoning:
        return completion.text
    return f"{completion.reasoning}\n{completion.text}".strip()
