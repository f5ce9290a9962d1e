"""A request's model calls, layer by layer: each per-request hook is an engine wrapper.

`ModelCalls.engine(model_id, detail)` composes, around the engine serving `model_id` (outermost
first; each layer is a `TextEngine` and knows one concern):

- `Budgeted` (budget): refuses a call the budget cannot cover. Under a time cap it draws n > 1
  samples one at a time, drops log-probabilities (the streamed path has none), and refuses a
  prompt the time left cannot read, measuring an unmeasured local model first.
- `Cached` (cache): replays a reply from the completion cache, charged as it was measured
  (under a time cap, only one that fits the time left), or stores a new whole reply.
- `Deadline` (deadline): under a time cap, streams and stops the engine before the token that
  would cross it; the partial reply is charged, then BudgetExceededError is raised.
- `Metered` (on_charge): times the call, reads the energy meter and charges the ledger, whose
  `on_charge` hook sees each charge; a streamed call's speeds go into the speed book.
- `Listened` (on_token): passes each generated piece to the listener; a GenerationCancelled it
  raises stops the engine at the next token (what was generated is still charged).
- `Cancellable` (cancel): a set cancel flag stops a call before it starts, and a streamed one
  at its next token.
- the caller's own wrapper, if its `engine_for` gives one (the server's key holds and local
  queue), then the engine.

A stream is only started where it is needed: by `Deadline` under a time cap, by `Metered` when
a listener wants the tokens of a single-sample call; anything else is one batch call.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from apportion.engines.base import (
    GenerationCancelled,
    TextEngine,
    takes_think_budget,
    think_option,
)
from apportion.errors import BudgetExceededError
from apportion.ledger import Ledger, RaplMeter
from apportion.types import Completion, Message, ModelCost

if TYPE_CHECKING:
    from apportion.engines.speed import SpeedBook

# An unmeasured local model is probed for its speed before a call whose prompt, at the prior
# speed, would take at least this share of the time left (engines/speed.py).
PROBE_SHARE = 0.25
# What the probe reads: about 50 tokens, the size of a short question with its template.
PROBE_TOKENS = 50
SPEED_PROBE = (
    "This is a short calibration text, read once to measure how fast this machine reads a "
    "prompt. It asks nothing and needs no answer beyond a single word. Reply with the word OK "
    "and nothing else, please, so that the measurement stays short."
)

Pieces = Generator[str, None, Completion]


class CompletionCache(Protocol):
    """Replays completions keyed by (model, prompt, params, seed); bench supplies one."""

    def get(self, key: str) -> list[tuple[Completion, float]] | None: ...
    def put(self, key: str, value: list[tuple[Completion, float]]) -> None: ...


@dataclass
class ModelCalls:
    """How one request calls models: the engines (by id) and the request's hooks around them.

    `engine_for` gives the engine serving a model id (a caller may give its own wrapper of
    it); `namespace` what identifies a model's outputs (its weights' sha256) for cache keys and
    speeds; `clock` times calls and keeps time budgets (tests substitute one)."""

    engine_for: Callable[[str], TextEngine]
    ledger: Ledger
    namespace: Callable[[str], str] = field(default=lambda model_id: model_id)
    meter: RaplMeter = field(default_factory=RaplMeter)
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    speeds: SpeedBook | None = None
    cache: CompletionCache | None = None
    # Same request, same tokens, whatever ran before: every call evaluates its whole prompt
    # instead of reusing a prefix cached by an earlier call (see TextEngine.generate).
    deterministic: bool = False
    # Sees each generated piece of single-sample calls (n == 1, no logprobs), which are then
    # streamed; a replayed reply arrives in one piece.
    on_token: Callable[[str], None] | None = None
    cancel: threading.Event | None = None

    def engine(self, model_id: str, detail: str = "") -> TextEngine:
        """The engine serving `model_id` inside this request's layers; its calls are charged
        with `detail` (which strategy step made them)."""
        base = self.engine_for(model_id)
        key = self.speed_key(base)
        core: TextEngine = base if self.cancel is None else Cancellable(base, self.cancel)
        heard = core if self.on_token is None else Listened(core, self.on_token)
        cached: TextEngine = Deadline(Metered(heard, self, detail, key), self, key)
        if self.cache is not None:
            cached = Cached(cached, self, detail)
        # the probe is neither heard (it is no part of the answer) nor cached
        probe = Metered(core, self, "speed probe", key, listen=False)
        return Budgeted(cached, self, key, probe)

    def speed_key(self, engine: TextEngine) -> str:
        """Speeds are per model weights and thread count."""
        threads = getattr(innermost(engine), "threads", None)
        return f"{self.namespace(engine.model_id)}|threads={threads}"

    def prefix_option(self) -> dict[str, bool]:
        """`reuse_prefix=False` in deterministic mode; nothing otherwise, so an engine written
        before the option existed keeps working outside that mode."""
        return {"reuse_prefix": False} if self.deterministic else {}

    def charge(
        self,
        engine: TextEngine,
        completion: Completion,
        wall_s: float,
        measured_j: float | None,
        detail: str,
    ) -> None:
        self.ledger.charge_model(
            completion.served_by or engine.cost,  # a fallback that took the call, if one did
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            wall_s=wall_s,
            measured_energy_j=measured_j,
            detail=detail,
            replica=completion.replica,
            cached_tokens=completion.cached_tokens,
        )


def _prefix(reuse_prefix: bool) -> dict[str, bool]:
    """Pass `reuse_prefix` on only when it is not the default."""
    return {} if reuse_prefix else {"reuse_prefix": False}


def relay(pieces: Pieces, on_piece: Callable[[str], None] | None = None) -> Pieces:
    """Yield `pieces`, showing each to `on_piece` first. A GenerationCancelled thrown in at a
    yield is thrown into `pieces`, and the engine's partial completion is returned; one that
    `on_piece` raises stops `pieces` the same way and is raised, carrying the partial."""
    try:
        piece = next(pieces)
        while True:
            if on_piece is not None:
                try:
                    on_piece(piece)
                except GenerationCancelled as e:
                    e.partial = finish(pieces, e)
                    raise
            try:
                yield piece
            except GenerationCancelled as e:
                return finish(pieces, e)
            piece = next(pieces)
    except StopIteration as done:
        completion: Completion = done.value
        return completion
    finally:
        pieces.close()


def finish(pieces: Pieces, cancel: GenerationCancelled) -> Completion:
    """Throw `cancel` into a stream and run it to its end: the partial completion."""
    try:
        pieces.throw(cancel)
        while True:
            next(pieces)
    except StopIteration as done:
        completion: Completion = done.value
        return completion


def consume(pieces: Pieces) -> Completion:
    """Run a stream to its end: the completion."""
    try:
        while True:
            next(pieces)
    except StopIteration as done:
        completion: Completion = done.value
        return completion


@dataclass(frozen=True)
class Call:
    """One model call's arguments, as `TextEngine.generate` takes them (a stream is a call of
    one sample without log-probabilities)."""

    messages: Sequence[Message]
    max_tokens: int
    temperature: float = 0.0
    n: int = 1
    stop: Sequence[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    reuse_prefix: bool = True
    think_budget: int | None = None  # only for engines that take it (engines/base.py)

    def generate_on(self, engine: TextEngine, **options: Any) -> list[Completion]:
        """The call on `engine`, with `options` its own keyword arguments take beside these
        (an adapter, for llama.cpp's)."""
        return engine.generate(
            self.messages, max_tokens=self.max_tokens, temperature=self.temperature, n=self.n,
            stop=self.stop, seed=self.seed, logprobs=self.logprobs, **_prefix(self.reuse_prefix),
            **think_option(self.think_budget), **options,
        )  # fmt: skip

    def stream_on(self, engine: TextEngine, **options: Any) -> Pieces:
        return engine.stream(
            self.messages, max_tokens=self.max_tokens, temperature=self.temperature,
            stop=self.stop, seed=self.seed, **_prefix(self.reuse_prefix),
            **think_option(self.think_budget), **options,
        )  # fmt: skip


class Layer:
    """A TextEngine around another: `generate` and `stream` become a `Call`, which a layer
    handles in `call` (batch) and `open` (stream); by default both pass it through."""

    def __init__(self, inner: TextEngine) -> None:
        self.inner = inner

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def cost(self) -> ModelCost:
        return self.inner.cost

    @property
    def context_size(self) -> int:
        return self.inner.context_size

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_tokens(messages)

    @property
    def takes_think_budget(self) -> bool:
        return takes_think_budget(self.inner)

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
        return self.call(Call(
            messages, max_tokens, temperature, n, stop, seed, logprobs, reuse_prefix,
            think_budget,
        ))  # fmt: skip

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
        return self.open(
            Call(messages, max_tokens, temperature, 1, stop, seed, False, reuse_prefix,
                 think_budget)
        )  # fmt: skip

    def call(self, c: Call) -> list[Completion]:
        return c.generate_on(self.inner)

    def open(self, c: Call) -> Pieces:
        return c.stream_on(self.inner)

    def close(self) -> None:
        """The Runtime owns the engine and closes it; a request's layers never do."""


def innermost(engine: TextEngine) -> TextEngine:
    """The engine inside any layers (what knows its thread count)."""
    while isinstance(engine, Layer):
        engine = engine.inner
    return engine


class Cancellable(Layer):
    """Stops a call before it starts, and a stream at its next token, once `cancel` is set."""

    def __init__(self, inner: TextEngine, cancel: threading.Event) -> None:
        super().__init__(inner)
        self._cancel = cancel

    def _check(self, _piece: str = "") -> None:
        if self._cancel.is_set():
            raise GenerationCancelled()

    def call(self, c: Call) -> list[Completion]:
        self._check()
        return c.generate_on(self.inner)

    def open(self, c: Call) -> Pieces:
        self._check()
        return relay(c.stream_on(self.inner), self._check)


class Listened(Layer):
    """Shows each streamed piece to `on_token`; a GenerationCancelled it raises stops the
    engine, and is raised on carrying the partial completion."""

    def __init__(self, inner: TextEngine, on_token: Callable[[str], None]) -> None:
        super().__init__(inner)
        self.on_token = on_token

    def open(self, c: Call) -> Pieces:
        return relay(c.stream_on(self.inner), self.on_token)


class Metered(Layer):
    """Times each call and reads the energy meter around it, then charges the ledger for each
    completion (a partial one included) with `detail`. Streams when a listener below wants the
    tokens of a single-sample call; a stream's speeds go into the speed book."""

    def __init__(
        self,
        inner: TextEngine,
        calls: ModelCalls,
        detail: str,
        speed_key: str,
        *,
        listen: bool = True,
    ) -> None:
        super().__init__(inner)
        self._calls = calls
        self._detail = detail
        self._speed_key = speed_key
        self._listen = listen and calls.on_token is not None

    def call(self, c: Call) -> list[Completion]:
        if self._listen and c.n == 1 and not c.logprobs:
            return [consume(self.open(c))]
        calls = self._calls
        energy_before = calls.meter.read_j()
        started = calls.clock()
        completions = c.generate_on(self.inner)
        wall_s = calls.clock() - started
        measured = _per_sample(energy_before, calls.meter.read_j(), len(completions))
        share = wall_s / max(len(completions), 1)
        for completion in completions:
            calls.charge(self.inner, completion, share, measured, self._detail)
        return completions

    def open(self, c: Call) -> Pieces:
        calls = self._calls
        energy_before = calls.meter.read_j()
        started = calls.clock()
        times = _PieceTimes(calls.clock)
        pieces = c.stream_on(self.inner)
        partial: Completion | None = None
        try:
            completion = yield from relay(pieces, times.mark)
        except GenerationCancelled as e:
            partial = e.partial
            raise
        else:
            partial = completion
            return completion
        finally:
            if partial is not None:
                measured = _per_sample(energy_before, calls.meter.read_j(), 1)
                calls.charge(self.inner, partial, calls.clock() - started, measured, self._detail)
            if calls.speeds is not None and times.first is not None:
                # the engine counted the prompt; only a call that failed outright is counted
                # here again
                prompt_tokens = (
                    partial.prompt_tokens if partial is not None
                    else self.inner.count_tokens(c.messages)
                )  # fmt: skip
                times.record(calls.speeds, self._speed_key, started, prompt_tokens)


class Deadline(Layer):
    """Under a time cap (the ledger's `seconds_left`), a single-sample call is streamed and the
    engine stopped before the token that would likely arrive after the time runs out: the
    partial reply is charged below, then BudgetExceededError is raised."""

    def __init__(self, inner: TextEngine, calls: ModelCalls, speed_key: str) -> None:
        super().__init__(inner)
        self._calls = calls
        self._speed_key = speed_key

    def call(self, c: Call) -> list[Completion]:
        calls = self._calls
        seconds_left = calls.ledger.seconds_left(self.cost)
        if seconds_left is None or c.n != 1 or c.logprobs:
            return c.generate_on(self.inner)
        started = calls.clock()
        deadline = started + seconds_left
        pieces = c.stream_on(self.inner)
        # The slowest token so far; before the second piece, the speed measured on earlier
        # calls, so the first piece already knows whether another fits before the deadline.
        step = (calls.speeds.step_s(self._speed_key) if calls.speeds is not None else None) or 0.0
        last: float | None = None
        try:
            while True:
                next(pieces)
                now = calls.clock()
                if last is not None:
                    step = max(step, now - last)
                last = now
                if now + step >= deadline:
                    completion = finish(pieces, GenerationCancelled())
                    raise BudgetExceededError(
                        f"the budget ran out {calls.clock() - started:.2f} s into a "
                        f"{self.model_id} call, which was cut off after "
                        f"{completion.completion_tokens} tokens",
                        "raise --budget-seconds or --budget-usd",
                    )
        except StopIteration as done:
            return [done.value]
        finally:
            pieces.close()


class Cached(Layer):
    """Replays a reply from the completion cache, charged with the time it was measured at and
    heard in one piece (under a time cap, only one that fits the time left); stores each new
    whole reply, unless a fallback engine served it (replayed, it would be charged as the
    engine asked)."""

    def __init__(self, inner: TextEngine, calls: ModelCalls, detail: str) -> None:
        super().__init__(inner)
        self._calls = calls
        self._detail = detail

    def call(self, c: Call) -> list[Completion]:
        calls = self._calls
        assert calls.cache is not None
        key = cache_key(
            calls.namespace(self.model_id), c.messages, c.max_tokens, c.temperature, c.n, c.stop,
            c.seed or 0, c.logprobs, deterministic=calls.deterministic,
            think_budget=c.think_budget,
        )  # fmt: skip
        seconds_left = calls.ledger.seconds_left(self.cost)
        hit = calls.cache.get(key)
        if hit is not None and (seconds_left is None or sum(w for _, w in hit) <= seconds_left):
            for completion, wall_s in hit:
                calls.charge(self.inner, completion, wall_s, None, self._detail)
            if calls.on_token is not None and c.n == 1 and not c.logprobs:
                calls.on_token(hit[0][0].text)  # a replay arrives in one piece
            return [completion for completion, _ in hit]
        charged = len(calls.ledger.charges)
        completions = c.generate_on(self.inner)
        # kept with the time each was charged (by Metered, below), so a replay costs the same
        walls = [charge.wall_s for charge in calls.ledger.charges[charged:]]
        if len(walls) == len(completions) and not any(x.served_by for x in completions):
            calls.cache.put(key, list(zip(completions, walls, strict=True)))
        return completions


class Budgeted(Layer):
    """Refuses a call whose worst case the budget cannot cover. Under a time cap, draws n > 1
    samples one at a time (each through every layer, as seed + i), drops log-probabilities,
    and refuses a prompt the time left cannot read at the speed measured here, measuring an
    unmeasured local model first with a one-token call (charged, detail "speed probe")."""

    def __init__(
        self, inner: TextEngine, calls: ModelCalls, speed_key: str, probe: TextEngine
    ) -> None:
        super().__init__(inner)
        self._calls = calls
        self._speed_key = speed_key
        self._probe = probe

    def call(self, c: Call) -> list[Completion]:
        ledger = self._calls.ledger
        seed = c.seed or 0
        prompt_tokens = self.count_tokens(c.messages)
        ledger.check_model_call(self.cost, prompt_tokens, c.max_tokens * c.n)
        seconds_left = ledger.seconds_left(self.cost)
        if seconds_left is not None and c.n > 1:
            # The streamed path keeps the cap, one sample at a time (seed + i, as engines
            # number the samples of one call).
            samples: list[Completion] = []
            for i in range(c.n):
                samples += self.call(replace(c, n=1, seed=seed + i, logprobs=False))
            return samples
        if seconds_left is not None:
            # A time cap is kept by the streamed path, which carries no log-probabilities;
            # the cap wins, and callers fall back to their confidence without them.
            c = replace(c, logprobs=False)
            self._refuse_unreadable_prompt(prompt_tokens, seconds_left)
        return replace(c, seed=seed).generate_on(self.inner)

    def open(self, c: Call) -> Pieces:
        self._calls.ledger.check_model_call(self.cost, self.count_tokens(c.messages), c.max_tokens)
        return c.stream_on(self.inner)

    def _refuse_unreadable_prompt(self, prompt_tokens: int, seconds_left: float) -> None:
        """A model cannot stop while it reads the prompt: refuse a call whose prompt alone
        would outlast the time left, at the speed measured here. A local model never measured
        whose prompt might take a good share of the time left (at a modest prior speed) is
        measured first by a one-token call, charged like any other; an unmeasured remote
        model is let through."""
        calls, key, cost = self._calls, self._speed_key, self.cost
        speeds = calls.speeds
        if speeds is None:
            return
        if speeds.get(key) is None:
            if not cost.local:
                return
            threads = getattr(innermost(self), "threads", None) or 1
            prior = speeds.prefill_s(key, prompt_tokens, params=cost.params, threads=threads)
            if prior < PROBE_SHARE * seconds_left:
                return  # room to spare: the call itself will measure the model
            probe = speeds.prefill_s(key, PROBE_TOKENS, params=cost.params, threads=threads)
            if probe + prior >= seconds_left:
                # no room to measure the model within the budget: judge by the prior
                if prior >= seconds_left:
                    raise BudgetExceededError(
                        f"reading the {prompt_tokens}-token prompt would take "
                        f"{self.model_id} about {prior:.2f} s at a modest speed (it has not "
                        f"been measured on this machine yet); {seconds_left:.2f} s of the "
                        "budget remain",
                        "raise --budget-seconds; any call with a larger time budget measures "
                        "the model for the next ones",
                    )
                return
            self._probe_speed()
            left = calls.ledger.seconds_left(cost)
            seconds_left = seconds_left if left is None else left
        expected = speeds.prefill_s(key, prompt_tokens, params=cost.params, threads=1)
        if expected >= seconds_left:
            raise BudgetExceededError(
                f"reading the {prompt_tokens}-token prompt takes {self.model_id} about "
                f"{expected:.2f} s here (measured); {seconds_left:.2f} s of the budget remain",
                "raise --budget-seconds or --budget-usd",
            )

    def _probe_speed(self) -> None:
        """Measure how fast the model reads a prompt here: a one-token call on a prompt of the
        size questions have. Its time per prompt token, its one decode step included, errs on
        the slow side for longer prompts, which are read in larger batches."""
        calls = self._calls
        assert calls.speeds is not None
        started = calls.clock()
        (completion,) = self._probe.generate([Message("user", SPEED_PROBE)], max_tokens=1)
        wall_s = calls.clock() - started
        calls.speeds.record(
            self._speed_key, prompt_tokens=completion.prompt_tokens, first_token_s=wall_s,
            steps=0, decode_s=0,
        )  # fmt: skip


class _PieceTimes:
    """When a stream's pieces arrived: its time to the first one and per later one."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.first: float | None = None
        self.last: float | None = None
        self.later = 0

    def mark(self, _piece: str) -> None:
        now = self._clock()
        if self.first is None:
            self.first = now
        else:
            self.later += 1
        self.last = now

    def record(self, speeds: SpeedBook, key: str, started: float, prompt_tokens: int) -> None:
        if self.first is None or self.last is None:
            return
        speeds.record(
            key, prompt_tokens=prompt_tokens, first_token_s=self.first - started,
            steps=self.later, decode_s=self.last - self.first,
        )  # fmt: skip


def _per_sample(before: float | None, after: float | None, samples: int) -> float | None:
    """Measured energy per sample, when the meter could be read both times."""
    if before is None or after is None:
        return None
    return (after - before) / max(samples, 1)


def cache_key(
    model_key: str,
    messages: Sequence[Message],
    max_tokens: int,
    temperature: float,
    n: int,
    stop: Sequence[str] | None,
    seed: int,
    logprobs: bool,
    *,
    deterministic: bool = False,
    think_budget: int | None = None,
) -> str:
    fields: dict[str, object] = {
        "model": model_key,
        "messages": [[m.role, m.content] for m in messages],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "n": n,
        "stop": list(stop or []),
        "seed": seed,
        "logprobs": logprobs,
    }
    if deterministic:
        # keyed apart, so a deterministic run never replays a prefix-reusing one; absent
        # otherwise, so the keys of earlier caches still match
        fields["deterministic"] = True
    if think_budget is not None:  # the same: absent unless a server was told how long to think
        fields["think_budget"] = think_budget
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
