"""The `echo` engine kind: answers with the last user message reversed, character by character.

An engine for trying apportion's plumbing without a model: "abc def" comes back as "fed cba".
It counts one token per character, so its token counts are exact, and it declares a parameter
count, so the ledger charges FLOPs for it (2 x params per token) like any model. An
`[[engines]]` entry of this kind::

    [[engines]]
    id = "e"
    kind = "echo"
    params = 1e6      # optional: the parameter count the ledger charges (default 1e6)
    context = 4096    # optional: the context window, in characters
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

from pydantic import Field

from apportion.config import EngineConfig
from apportion.engines.base import GenerationCancelled
from apportion.engines.registry import EngineKind, EngineServices
from apportion.errors import ContextOverflowError
from apportion.ledger import ModelCost
from apportion.types import Completion, Message


class EchoConfig(EngineConfig):
    """The fields of an `echo` entry, beside `id` and `kind`."""

    kind: str = "echo"
    params: float = Field(default=1e6, gt=0, description="parameter count, for FLOPs")
    context: int = Field(default=4096, ge=16, description="context window, in characters")

    def describe(self) -> str:
        return f"echo: the last user message reversed ({self.params:g} parameters charged)"


class EchoEngine:
    """A `TextEngine` (apportion/engines/base.py) that reverses the last user message."""

    def __init__(self, config: EchoConfig) -> None:
        self._config = config
        self._cost = ModelCost(config.id, params=config.params, local=True)

    @property
    def model_id(self) -> str:
        return self._config.id

    @property
    def cost(self) -> ModelCost:
        return self._cost

    @property
    def context_size(self) -> int:
        return self._config.context

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """One token per character of every message."""
        return sum(len(m.content) for m in messages)

    def _reply(
        self, messages: Sequence[Message], max_tokens: int, stop: Sequence[str] | None
    ) -> tuple[str, int, str]:
        """(the reply, the prompt's tokens, the finish reason)."""
        prompt_tokens = self.count_tokens(messages)
        if prompt_tokens >= self.context_size:
            raise ContextOverflowError(
                f"the prompt takes {prompt_tokens} tokens; {self.model_id} has a "
                f"{self.context_size}-token context",
                "shorten the question, or raise `context` in its [[engines]] entry",
            )
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        text, finish = last[::-1], "stop"
        cut = min((i for s in stop or () if s and (i := text.find(s)) >= 0), default=None)
        if cut is not None:
            text = text[:cut]
        room = min(max_tokens, self.context_size - prompt_tokens)
        if len(text) > room:
            text, finish = text[:room], "length"
        return text, prompt_tokens, finish

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
        reuse_prefix: bool = True,
    ) -> list[Completion]:
        """`n` samples, all the same: the echo never varies, whatever the temperature or
        seed. Each token's log-probability is 0: it is certain of every character."""
        text, prompt_tokens, finish = self._reply(messages, max_tokens, stop)
        lps = (0.0,) * len(text) if logprobs else None
        return [Completion(text, prompt_tokens, len(text), finish, lps) for _ in range(n)]

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        reuse_prefix: bool = True,
    ) -> Generator[str, None, Completion]:
        """The reply one character (one token) at a time; a cancellation thrown in at a
        yield stops it there, and the characters sent so far are the completion."""
        text, prompt_tokens, finish = self._reply(messages, max_tokens, stop)
        for i, piece in enumerate(text):
            try:
                yield piece
            except GenerationCancelled:
                return Completion(text[: i + 1], prompt_tokens, i + 1, "cancelled")
        return Completion(text, prompt_tokens, len(text), finish)

    def close(self) -> None:
        """Nothing to release."""


def build_echo(config: EchoConfig, services: EngineServices) -> EchoEngine:
    """The factory apportion calls once per Engine for each `echo` entry."""
    return EchoEngine(config)


# What the `apportion.engines` entry point `echo` names. No fingerprint function: apportion
# identifies an echo engine's outputs (in its caches) by the kind and the entry's fields.
ECHO = EngineKind(config=EchoConfig, build=build_echo)
