"""One request's work: the resolved spec, the job that runs it in a worker thread and reports
to the event loop, and the engine wrapper its strategies call."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.ledger import Ledger, ModelCost
from apportion.server.auth import ApiKey
from apportion.types import Answer, Budget, Charge, Completion, Message

TokenChannel = Literal["content", "reasoning_content"]
# Single-sample strategies whose tokens are streamed, and the delta field they go in.
TOKEN_CHANNELS: dict[str, TokenChannel] = {"direct": "content", "cot": "reasoning_content"}


# -- what a job reports while it works ---------------------------------------------------------


@dataclass(frozen=True)
class TokenEvent:
    text: str
    channel: TokenChannel


@dataclass(frozen=True)
class CallEvent:
    """A model call started (after its budget check and its key's hold)."""

    model_id: str

    def text(self) -> str:
        return f"[{self.model_id}]\n"


@dataclass(frozen=True)
class QueueEvent:
    """The job waits for the local model."""

    ahead: int

    def text(self) -> str:
        return f"[waiting for the local model: {self.ahead} ahead]\n"


@dataclass(frozen=True)
class ProgressEvent:
    """A call was charged."""

    charge: Charge
    calls: int
    completion_tokens: int
    flops: float

    def to_dict(self) -> dict[str, object]:
        return {
            "event": "progress",
            "step": self.charge.detail,
            "call": self.charge.name,
            "kind": self.charge.kind,
            "calls": self.calls,
            "completion_tokens": self.completion_tokens,
            "flops": self.flops,
        }

    def text(self) -> str:
        c = self.charge
        what = c.detail or c.name
        if c.kind == "model":
            return (
                f"\n[{what}: {c.completion_tokens} tokens on {c.name}, {c.flops:.3g} FLOPs, "
                f"{c.wall_s:.2f} s]\n"
            )
        return f"[{what}: {c.name}, {c.wall_s:.2f} s]\n"


@dataclass(frozen=True)
class Finished:
    pass


JobEvent = TokenEvent | CallEvent | QueueEvent | ProgressEvent | Finished


# -- stop sequences ----------------------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first of `stops`, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopFilter:
    """Streams text up to the first stop sequence, whatever the engine does with them: a piece
    that might begin a stop sequence is held back until the next one settles it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text, hit = cut_at_stop(self.held + piece, self.stops)
        if hit:
            self.hit, self.held = True, ""
            return text
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


# -- a request and its job ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """A resolved request, in the package's own terms."""

    question: str
    history: tuple[Message, ...]
    strategy: str
    model: str | None
    max_tokens: int | None
    budget: Budget
    seed: int
    return_ledger: bool
    stop: tuple[str, ...] = ()
    # Request parameters this route does not use, and why (shown in `apportion.notes`).
    notes: tuple[str, ...] = ()
    # The budget was lowered to what the caller's key may still spend today.
    key_capped: bool = False
    user: str | None = None
    # None: the server's `deterministic` setting.
    deterministic: bool | None = None


@dataclass(eq=False)
class Job:
    """One request's work: runs in a worker thread and reports back to the event loop."""

    spec: RunSpec
    loop: asyncio.AbstractEventLoop
    streaming: bool
    deadline: float  # time.monotonic()
    key: ApiKey | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    ledger: Ledger | None = None
    token_channel: TokenChannel | None = None
    holds_local: bool = False
    # The key's hold is open (see auth.py): settled when the job ends.
    holding: bool = False
    timed_out: bool = False
    last_finish: str | None = None
    task: asyncio.Task[Answer] | None = None
    # Set for a `direct` route with stop sequences: the streamed content stops at them.
    content_filter: StopFilter | None = None
    # The answer was cut at a stop sequence (finish_reason "stop").
    stop_hit: bool = False
    # Set when the key's hold refused a call: how many other requests held its budget.
    quota_others: int | None = None

    def emit(self, event: JobEvent) -> None:
        """From the worker thread: hand an event to the event loop (streams only)."""
        if not self.streaming:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.cancel.set()

    def on_token(self, piece: str) -> None:
        if self.cancel.is_set():
            raise GenerationCancelled()
        if self.token_channel == "content" and self.content_filter is not None:
            piece = self.content_filter.feed(piece)
            if piece:
                self.emit(TokenEvent(piece, "content"))
            return
        # Without a token channel, the plan's calls are shown as reasoning while it works.
        self.emit(TokenEvent(piece, self.token_channel or "reasoning_content"))

    def on_charge(self, ledger: Ledger, charge: Charge) -> None:
        if self.token_channel is None:
            totals = ledger.totals()
            self.emit(
                ProgressEvent(charge, len(totals.calls), totals.completion_tokens, totals.flops)
            )

    def on_call(self, model_id: str) -> None:
        if self.token_channel is None:
            self.emit(CallEvent(model_id))

    def on_queue(self, ahead: int) -> None:
        self.emit(QueueEvent(ahead))

    def stop(self, *, timed_out: bool = False) -> None:
        self.timed_out = self.timed_out or timed_out
        self.cancel.set()


# Called before each model call with (engine cost, prompt tokens, max tokens, n): reserves the
# call's worst case against the caller's key, or raises BudgetExceededError.
BeforeCall = Callable[[ModelCost, int, int, int], None]


class ObservedEngine:
    """What a job's strategies call: the real engine, plus a cancel check and the key's hold
    before each call, the request's stop sequences where they apply, and a note of how the
    last call finished (for the response's finish_reason)."""

    def __init__(
        self,
        inner: TextEngine,
        job: Job,
        before_call: BeforeCall,
        stop: Sequence[str] = (),
    ) -> None:
        self._inner = inner
        self._job = job
        self._before_call = before_call
        self._stop = tuple(stop)

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def cost(self) -> ModelCost:
        return self._inner.cost

    @property
    def context_size(self) -> int:
        return self._inner.context_size

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self._inner.count_tokens(messages)

    def _start(self, messages: Sequence[Message], max_tokens: int, n: int) -> None:
        if self._job.cancel.is_set():
            raise GenerationCancelled()
        self._before_call(self.cost, self._inner.count_tokens(messages), max_tokens, n)
        self._job.on_call(self.model_id)

    def _stops(self, stop: Sequence[str] | None) -> list[str] | None:
        merged = [*(stop or ()), *self._stop]
        return merged or None

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
        self._start(messages, max_tokens, n)
        out = self._inner.generate(
            messages, max_tokens=max_tokens, temperature=temperature, n=n,
            stop=self._stops(stop), seed=seed, logprobs=logprobs, **_prefix(reuse_prefix),
        )  # fmt: skip
        if out:
            self._job.last_finish = out[-1].finish_reason
        return out

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
        self._start(messages, max_tokens, 1)
        completion = yield from self._inner.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=self._stops(stop),
            seed=seed, **_prefix(reuse_prefix),
        )  # fmt: skip
        self._job.last_finish = completion.finish_reason
        return completion

    def close(self) -> None:
        """The Engine owns the real engine and closes it; a job never does."""


def _prefix(reuse_prefix: bool) -> dict[str, bool]:
    """Pass `reuse_prefix` on only when it is not the default, as RunContext does."""
    return {} if reuse_prefix else {"reuse_prefix": False}
