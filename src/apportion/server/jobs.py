"""One request's work as the server tracks it: the resolved spec, the job that runs it in a
worker thread (runner.py), and the events the job hands to the event loop as it works."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from apportion.ledger import Ledger
from apportion.runtime import Request
from apportion.server.auth import ApiKey
from apportion.server.stops import StopFilter
from apportion.strategies.registry import TokenStream
from apportion.types import Answer, Charge

# The delta field a streamed token goes in.
TokenChannel = Literal["content", "reasoning_content"]
# Where the tokens of a one-strategy plan go, by what its strategy says they are: the answer
# is `content`, reasoning is `reasoning_content` (what chat clients show as thinking).
CHANNEL_FOR: dict[TokenStream, TokenChannel] = {
    "answer": "content",
    "reasoning": "reasoning_content",
}


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


# -- a request and its job ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """A resolved request: the runtime's `Request`, and what only the server does with it."""

    request: Request
    return_ledger: bool
    stop: tuple[str, ...] = ()
    # Request parameters this route does not use, and why (shown in `apportion.notes`).
    notes: tuple[str, ...] = ()
    # The budget was lowered to what the caller's key may still spend today.
    key_capped: bool = False
    user: str | None = None


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
    # What the run answered, once it has (the spend log records its route and outcome).
    answer: Answer | None = None
    token_channel: TokenChannel | None = None
    holds_local: bool = False
    # The key's hold is open (see auth.py): settled when the job ends.
    holding: bool = False
    timed_out: bool = False
    last_finish: str | None = None
    task: asyncio.Task[Answer] | None = None
    # Set when the plan's tokens are its answer and the request has stop sequences: the
    # streamed content stops at them.
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
        # (a set cancel flag stops the stream before its next piece gets here: engines/layers)
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
