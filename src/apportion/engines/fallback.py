"""An engine that hands its requests to another while it is down.

`FallbackEngine` serves the primary engine's model id. A request the primary fails with
EngineUnavailableError (after its own retries: unreachable, 429, 5xx) goes to the fallback at
once, and the primary then counts as down for `cooldown_s`: requests in that time go straight
to the fallback instead of waiting through retries again. After that the primary is tried
again, and serves again as soon as it answers.

Completions the fallback produced carry its cost model in `served_by`, so the ledger charges
the engine that did the work, under its own name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

from apportion.engines.base import TextEngine, takes_think_budget, think_option
from apportion.errors import EngineUnavailableError, UsageError
from apportion.ledger import ModelCost
from apportion.types import Completion, Message

__all__ = ["FallbackEngine", "fallback_chain"]


class FallbackEngine:
    """`primary`, with `fallback` (built on first need) taking its requests while it is down.

    The fallback engine belongs to whoever built it (it is usually served under its own id
    too), so `close` closes only the primary.
    """

    def __init__(
        self,
        primary: TextEngine,
        fallback: Callable[[], TextEngine],
        *,
        fallback_id: str,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback_id = fallback_id
        self.cooldown_s = cooldown_s
        self._build_fallback = fallback
        self._fallback: TextEngine | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None

    def replica_states(self) -> list[Any]:
        """The primary's replicas, when it is a pool (engines/pool.py); else none."""
        states = getattr(self.primary, "replica_states", None)
        return list(states()) if callable(states) else []

    # -- what the primary is -------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.primary.model_id

    @property
    def cost(self) -> ModelCost:
        return self.primary.cost

    @property
    def context_size(self) -> int:
        return self.primary.context_size

    @property
    def takes_think_budget(self) -> bool:
        return takes_think_budget(self.primary)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self.primary.count_tokens(messages)

    # -- up or down ------------------------------------------------------------------------------

    def is_down(self) -> bool:
        """Whether requests now go straight to the fallback."""
        with self._lock:
            return self._down_until is not None and self._clock() < self._down_until

    def _went_down(self) -> None:
        with self._lock:
            self._down_until = self._clock() + self.cooldown_s

    def _came_back(self) -> None:
        with self._lock:
            self._down_until = None

    def _the_fallback(self) -> TextEngine:
        with self._lock:
            if self._fallback is None:
                self._fallback = self._build_fallback()
            return self._fallback

    def _served_by_fallback(self, completion: Completion, engine: TextEngine) -> Completion:
        # a fallback with a fallback of its own already named the engine that served
        return (
            completion
            if completion.served_by is not None
            else replace(completion, served_by=engine.cost)
        )

    def _fallback_failed(
        self, primary_error: EngineUnavailableError | None, error: EngineUnavailableError
    ) -> EngineUnavailableError:
        why = f"{primary_error.message}; " if primary_error else f"{self.model_id!r} is down; "
        return EngineUnavailableError(
            f"{why}its fallback {self.fallback_id!r} failed too: {error.message}", error.hint
        )

    # -- generation ----------------------------------------------------------------------------

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
        think_budget: int | None = None,
    ) -> list[Completion]:
        options: dict[str, Any] = dict(
            max_tokens=max_tokens, temperature=temperature, n=n, stop=stop, seed=seed,
            logprobs=logprobs,
        )  # fmt: skip
        if not reuse_prefix:  # passed only when set, for engines written before the option
            options["reuse_prefix"] = False
        primary_error: EngineUnavailableError | None = None
        if not self.is_down():
            try:
                out = self.primary.generate(
                    messages, **options, **_thinking(self.primary, think_budget)
                )
            except EngineUnavailableError as e:
                primary_error = e
                self._went_down()
            else:
                self._came_back()
                return out
        engine = self._the_fallback()
        try:
            out = engine.generate(messages, **options, **_thinking(engine, think_budget))
        except EngineUnavailableError as e:
            raise self._fallback_failed(primary_error, e) from e
        return [self._served_by_fallback(c, engine) for c in out]

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        reuse_prefix: bool = True,
        think_budget: int | None = None,
    ) -> Generator[str, None, Completion]:
        """The primary's stream; if it fails before its first piece, the fallback's. A failure
        after pieces went out ends the stream (they cannot be taken back), and marks the
        primary down for the requests that follow."""
        options: dict[str, Any] = dict(
            max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed
        )
        if not reuse_prefix:
            options["reuse_prefix"] = False
        primary_error: EngineUnavailableError | None = None
        if not self.is_down():
            pieces = self.primary.stream(
                messages, **options, **_thinking(self.primary, think_budget)
            )
            try:
                first = next(pieces)
            except StopIteration as done:
                self._came_back()
                completion: Completion = done.value
                return completion
            except EngineUnavailableError as e:
                primary_error = e
                self._went_down()
            else:
                self._came_back()
                try:
                    return (yield from _resume(pieces, first))
                except EngineUnavailableError:
                    self._went_down()
                    raise
        engine = self._the_fallback()
        try:
            completion = yield from engine.stream(
                messages, **options, **_thinking(engine, think_budget)
            )
        except EngineUnavailableError as e:
            raise self._fallback_failed(primary_error, e) from e
        return self._served_by_fallback(completion, engine)

    def close(self) -> None:
        self.primary.close()


def _thinking(engine: TextEngine, think_budget: int | None) -> dict[str, Any]:
    """The think budget for `engine` when it takes one: a fallback of another kind is asked
    as cot asks any engine, its reasoning capped by max_tokens alone."""
    return think_option(think_budget) if takes_think_budget(engine) else {}


def _resume(
    pieces: Generator[str, None, Completion], first: str
) -> Generator[str, None, Completion]:
    """Yield `first`, then the rest of `pieces`, passing in what the caller throws (a
    GenerationCancelled) and returning its Completion."""
    piece = first
    while True:
        try:
            yield piece
        except GeneratorExit:
            pieces.close()
            raise
        except BaseException as e:
            try:
                piece = pieces.throw(e)
            except StopIteration as done:
                thrown_out: Completion = done.value
                return thrown_out
            continue
        try:
            piece = next(pieces)
        except StopIteration as done:
            finished: Completion = done.value
            return finished


def fallback_chain(fallbacks: dict[str, str | None], engine_id: str) -> list[str]:
    """`engine_id`, its fallback, that one's fallback, ...; a loop is a configuration error."""
    chain = [engine_id]
    while (following := fallbacks.get(chain[-1])) is not None:
        if following in chain:
            loop = " -> ".join([*chain[chain.index(following) :], following])
            raise UsageError(
                f"the [[engines]] fallbacks form a loop: {loop}",
                "end the chain with an engine that has no fallback",
            )
        chain.append(following)
    return chain
