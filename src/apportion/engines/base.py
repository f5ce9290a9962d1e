"""The engine protocol: anything that turns chat messages into sampled completions."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Protocol, runtime_checkable

from apportion.ledger import ModelCost
from apportion.types import Completion, Message


class GenerationCancelled(Exception):
    """Stops a streamed generation at the next token (the caller went away, or timed out).

    Raised by a token callback and thrown into an engine's `stream` generator. Deliberately not
    an ApportionError: strategies and the executor must not swallow it on its way up.
    """

    # What the engine had generated when it stopped, once it has (engines/layers.py sets it
    # on the way up, so the layer that charges can charge it).
    partial: Completion | None = None


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
        reuse_prefix: bool = True,
    ) -> list[Completion]:
        """`n` independent samples; with `logprobs`, each carries per-token log-probabilities.

        `reuse_prefix=False` evaluates the whole prompt afresh instead of reusing a cached
        prefix of an earlier call: a reused prefix is evaluated in other batch shapes, which
        can change the low bits of the logits and so a greedy token (`deterministic` mode).
        Engines that keep no prompt cache of their own ignore it.

        An engine whose `takes_think_budget` is true (a reasoning model whose server is told
        how long to think) also takes `think_budget: int | None`, in `generate` and `stream`:
        the tokens its thinking may take, 0 for none. It is passed only to such engines and
        only when set (`think_option`), so engines without it need not know it."""
        ...

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
        """One sample, yielded piece by piece as it is generated; the generator's return value
        is the whole Completion, whose token counts are what the ledger charges.

        When GenerationCancelled is thrown in at a yield, stop generating at once and return
        the partial Completion with finish_reason "cancelled" (its tokens were spent).
        """
        ...

    def close(self) -> None: ...


def takes_think_budget(engine: object) -> bool:
    """Whether `engine` (through any wrappers that forward it) tells its model how long to
    think: see TextEngine.generate."""
    return bool(getattr(engine, "takes_think_budget", False))


def think_option(think_budget: int | None) -> dict[str, Any]:
    """The `think_budget` keyword for an engine call: present only when set (Any-typed, as
    it is spread into calls whose other keywords have other types)."""
    return {} if think_budget is None else {"think_budget": think_budget}
