"""A pool of replicas of one remote model: each call goes to the healthy replica with the fewest
calls outstanding; a replica that fails is ejected for a cool-down and the call is tried on
another.

An `[[engines]]` entry of the `openai` kind that lists several `base_urls` is served by a
`ReplicaPool` of `OpenAIHttpEngine`s, one per URL, each trying its server once per call: the
pool, not the replica, decides where a failed call goes next. What counts as a failure is what
the replica reports as `EngineUnavailableError` (connection refused, a timeout, HTTP 408, 429
or 5xx); any other error (a bad request, a context overflow) is the caller's and is raised as
it is. A call is tried on every replica once (healthy ones first), then again after the
retry policy's backoff, up to `max_attempts` tries in all. A stream that a replica cuts
mid-way continues on another, which replays the reply from the start: what the caller already
has is checked against it and not sent again (greedy or seeded replicas of one model agree; a
replay that does not is an error).

The ledger names the replica that served each call (`Charge.replica`), and `replica_states`
feeds the server's `/metrics`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

from apportion.config import RemoteEngineConfig
from apportion.engines.base import (
    GenerationCancelled,
    TextEngine,
    takes_think_budget,
    think_option,
)
from apportion.engines.layers import Pieces, finish
from apportion.engines.openai_http import OpenAIHttpEngine, RetryPolicy
from apportion.errors import EngineUnavailableError
from apportion.types import Completion, Message, ModelCost

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class ReplicaState:
    """One replica as the pool sees it (and /metrics shows it)."""

    url: str
    outstanding: int = 0
    served: int = 0
    failed: int = 0
    # time.monotonic() until which the replica is ejected; 0: healthy
    ejected_until: float = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until


class ReplicaPool:
    """A TextEngine over several replicas of one model (see the module docstring)."""

    def __init__(
        self,
        config: RemoteEngineConfig,
        *,
        engines: Sequence[TextEngine] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        urls = config.urls()
        self.config = config
        self.retry = RetryPolicy.from_config(config)
        # each replica tries its server once: where a failed call goes next is the pool's choice
        self._engines = list(engines) if engines is not None else [
            OpenAIHttpEngine(config.model_copy(update={"base_url": url, "base_urls": [],
                                                       "max_attempts": 1}))
            for url in urls
        ]  # fmt: skip
        if len(self._engines) != len(urls):
            raise ValueError(f"{len(urls)} URLs but {len(self._engines)} engines")
        self._states = [ReplicaState(url) for url in urls]
        self._lock = threading.Lock()
        self._next = 0  # where ties start, so that equal replicas take turns
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    @property
    def model_id(self) -> str:
        return self.config.id

    @property
    def cost(self) -> ModelCost:
        return self._engines[0].cost

    @property
    def context_size(self) -> int:
        return self._engines[0].context_size

    @property
    def takes_think_budget(self) -> bool:
        return takes_think_budget(self._engines[0])  # replicas serve one model, one config

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self._engines[0].count_tokens(messages)

    def replica_states(self) -> list[ReplicaState]:
        """A snapshot of every replica: health, calls outstanding, served and failed."""
        with self._lock:
            return [replace(s) for s in self._states]

    # -- choosing -----------------------------------------------------------------------------

    def _pick(self, tried: set[int]) -> int | None:
        """The replica for the next try: among those not tried by this call, the healthy one
        with the fewest calls outstanding (ties taking turns), else the one whose cool-down
        ends first; once every replica is tried, the same choice among all of them. None when
        the pool has no replicas."""
        now = self._clock()
        with self._lock:
            n = len(self._states)
            if n == 0:
                return None
            order = [(self._next + k) % n for k in range(n)]
            fresh = [i for i in order if i not in tried] or order
            healthy = [i for i in fresh if self._states[i].healthy(now)]
            if healthy:
                chosen = min(healthy, key=lambda i: self._states[i].outstanding)
            else:
                chosen = min(fresh, key=lambda i: self._states[i].ejected_until)
            self._next = (chosen + 1) % n
            return chosen

    @contextmanager
    def _outstanding(self, i: int) -> Iterator[None]:
        with self._lock:
            self._states[i].outstanding += 1
        try:
            yield
        finally:
            with self._lock:
                self._states[i].outstanding -= 1

    def _failed(self, i: int) -> None:
        with self._lock:
            state = self._states[i]
            state.failed += 1
            state.ejected_until = self._clock() + self.config.replica_cooldown_s

    def _served(self, i: int) -> None:
        with self._lock:
            state = self._states[i]
            state.served += 1
            state.ejected_until = 0.0

    def _run(self, call: Callable[[int, TextEngine], T]) -> T:
        """Run `call` on one replica after another until one answers: every replica once,
        then (after the retry policy's backoff) again, up to `max_attempts` tries in all;
        then EngineUnavailableError naming each replica's last failure."""
        started = self._clock()
        tried: set[int] = set()
        failures: dict[str, str] = {}
        attempt = 0
        while True:
            i = self._pick(tried)
            if i is None:
                raise EngineUnavailableError(f"engine {self.model_id!r} has no replicas")
            if len(tried) == len(self._states):
                # every replica failed this call once: back off before trying again
                pause = self.retry.pause_s(attempt, self._clock() - started, None, self._rng)
                if pause is None:
                    raise self._unavailable(failures)
                self._sleep(pause)
            attempt += 1
            tried.add(i)
            try:
                with self._outstanding(i):
                    result = call(i, self._engines[i])
            except EngineUnavailableError as e:
                self._failed(i)
                failures[self._states[i].url] = e.message
                continue
            self._served(i)
            return result

    def _unavailable(self, failures: dict[str, str]) -> EngineUnavailableError:
        why = "; ".join(f"{url}: {message}" for url, message in failures.items())
        return EngineUnavailableError(
            f"engine {self.model_id!r}: none of its {len(self._states)} replicas answered ({why})",
            "check the replicas' servers, or name a `fallback` engine for it in the config",
        )

    def _named(self, i: int, completion: Completion) -> Completion:
        return replace(completion, replica=self._states[i].url)

    # -- TextEngine ---------------------------------------------------------------------------

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
        def call(i: int, engine: TextEngine) -> list[Completion]:
            out = engine.generate(
                messages, max_tokens=max_tokens, temperature=temperature, n=n, stop=stop,
                seed=seed, logprobs=logprobs, **think_option(think_budget),
            )  # fmt: skip
            return [self._named(i, c) for c in out]

        return self._run(call)

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
    ) -> Pieces:
        def opened(i: int, engine: TextEngine) -> tuple[int, Pieces, str | None, Completion | None]:
            # the first piece decides whether this replica took the call
            pieces = engine.stream(
                messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed,
                **think_option(think_budget),
            )  # fmt: skip
            try:
                return i, pieces, next(pieces), None
            except StopIteration as done:
                return i, pieces, None, done.value

        sent = ""  # what has gone up to the caller
        while True:
            i, pieces, first, empty = self._run(opened)
            if empty is not None:
                if sent:
                    raise self._diverged()
                return self._named(i, empty)
            assert first is not None
            got = ""  # this replica's reply so far
            piece = first
            with self._outstanding(i):
                try:
                    while True:
                        got += piece
                        if len(got) > len(sent):
                            # after a failover, the new replica's reply must begin with what
                            # was sent (replicas of one model agree, greedy or seeded)
                            if not got.startswith(sent):
                                raise self._diverged()
                            new, sent = got[len(sent):], got
                            try:
                                yield new
                            except GenerationCancelled as e:
                                return self._named(i, finish(pieces, e))
                        elif not sent.startswith(got):
                            raise self._diverged()
                        piece = next(pieces)
                except StopIteration as done:
                    if len(got) < len(sent):
                        raise self._diverged() from None
                    return self._named(i, done.value)
                except _Diverged:
                    raise
                except EngineUnavailableError as e:
                    if not sent:
                        raise
                    # the replica went away mid-stream: the call goes to another, which
                    # replays the reply, and only what the caller has not had is sent on
                    self._failed(i)
                    log.warning("%s; continuing on another replica", e.message)
                finally:
                    pieces.close()

    def _diverged(self) -> _Diverged:
        return _Diverged(
            f"engine {self.model_id!r}: a replica failed mid-stream, and another replica's "
            "reply did not begin with what had been sent",
            "use greedy decoding or a seed, so that replicas of one model agree",
        )

    def close(self) -> None:
        for engine in self._engines:
            engine.close()


class _Diverged(EngineUnavailableError):
    """A stream moved to another replica that did not repeat what had been sent."""
