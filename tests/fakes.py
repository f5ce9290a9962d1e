"""Test doubles for pure-logic tests (never a stand-in for a feature test)."""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from apportion.engines.base import GenerationCancelled
from apportion.ledger import ModelCost
from apportion.types import Completion, Message


@dataclass
class FakeClock:
    """A clock that moves only when told to: timing logic tested without timing."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedEngine:
    """Replays fixed completions, for testing ladder and ledger logic without a model."""

    replies: list[str]
    model_id: str = "scripted"
    cost: ModelCost = field(init=False)
    context_size: int = 2048
    calls: list[list[Message]] = field(default_factory=list)
    seconds_per_token: float = 0.0
    # When set, calls that ask for log-probabilities get this one for every generated token.
    token_logprob: float | None = None
    # Streaming advances this clock by seconds_per_token per token (instead of sleeping).
    clock: FakeClock | None = None
    # Time to read the prompt, before the first token (on `clock` if given, else real time).
    prefill_s: float = 0.0

    def __post_init__(self) -> None:
        self.cost = ModelCost(self.model_id, params=1e6)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 3 for m in messages)

    def generate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> list[Completion]:
        out = []
        for _ in range(n):
            self.calls.append(list(messages))
            text = self.replies.pop(0)
            tokens = len(text.split())
            if self.clock is not None:  # the time the call would take, on the fake clock
                self.clock.now += self.prefill_s + tokens * self.seconds_per_token
            lps = (self.token_logprob,) * tokens if logprobs and self.token_logprob else None
            out.append(Completion(text, self.count_tokens(messages), tokens, "stop", lps))
        return out

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generator[str, None, Completion]:
        """Yields the reply word by word, `seconds_per_token` apart (on `clock` if given, else
        real time); a GenerationCancelled
        thrown in ends it with what was produced so far, as the real engines do."""
        self.calls.append(list(messages))
        if self.clock is not None:
            self.clock.now += self.prefill_s
        elif self.prefill_s:
            time.sleep(self.prefill_s)
        # one "token" per word, with the whitespace after it, so code keeps its line breaks
        words = re.findall(r"\S+\s*", self.replies.pop(0))
        produced: list[str] = []
        for word in words[:max_tokens]:
            if self.clock is not None:
                self.clock.now += self.seconds_per_token
            else:
                time.sleep(self.seconds_per_token)
            produced.append(word)
            try:
                yield word
            except GenerationCancelled:
                break
        text = "".join(produced).rstrip()
        finished = "stop" if len(produced) == len(words) else "length"
        return Completion(text, self.count_tokens(messages), len(produced), finished)

    def close(self) -> None:
        pass


def drain(gen: Generator[str, None, Completion]) -> tuple[list[str], Completion]:
    """Every piece a stream yields, and the Completion it returns."""
    pieces: list[str] = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as done:
        return pieces, done.value
