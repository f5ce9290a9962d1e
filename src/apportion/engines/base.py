"""The engine protocol: anything that turns chat messages into sampled completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from apportion.ledger import ModelCost
from apportion.types import Completion, Message


@runtime_checkable
class TextEngine(Protocol):
    """A text generator. It knows its size (for FLOPs) and its context window."""

    @property
    def model_id(self) -> str: ...

    @property
    def cost(self) -> ModelCost: ...

    @property
    def context_size(self) -> int: ...

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens these messages take once the chat template is applied."""
        ...

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
        """`n` independent samples; with `logprobs`, each carries per-token log-probabilities."""
        ...

    def close(self) -> None: ...
