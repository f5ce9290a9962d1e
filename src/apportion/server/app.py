"""The OpenAI-compatible server. `create_app(settings)` builds one FastAPI app; all of its state
(engine, key store, metrics, queue) hangs off `app.state`, never off module globals.

A chat completion goes: Bearer key (when the key store has keys) → request validation
(schemas.py) → model and strategy resolution → the key's daily allowance caps the budget → a
Job runs `Engine.prepare` + `execute` in a worker thread → one JSON body, or server-sent events
as the work happens.

- **Streaming.** When the plan is one single-sample step (`direct`, `cot`), every generated
  token goes to the client as it is sampled: direct's as `content`, cot's reasoning as
  `reasoning_content` followed by the extracted answer as `content`. Other plans (ladders,
  self-consistency, ...) send a progress chunk after each charged call, then the answer. The
  last chunk before `[DONE]` has empty `choices`, the `usage` and the `apportion` object.
- **Cancellation.** Every single-sample model call streams from its engine, and each token
  passes a check of the job's cancel flag; a client that disconnects (or a request past its
  timeout) stops generation at the next token. The partial call is still charged.
- **Concurrency.** In-process llama.cpp engines share the CPU, so one request at a time uses
  them; up to `queue_depth` more wait, and beyond that a request gets 429 with Retry-After.
  The slot is taken at a request's first local model call, so solver-only requests (the
  symbolic route) never queue. Remote engines are not queued: they run concurrently in worker
  threads.
- **Budget too small.** A request whose budget refuses its first model call, so that nothing
  was answered, gets 400 `budget_too_small` (429 `insufficient_quota` when it was the key's
  remaining daily allowance that was too small). A budget that stops a ladder after some
  attempt answered returns 200 with `apportion.stopped_for_budget`.
- **Ledger.** Responses always carry the ledger totals; `apportion.return_ledger` adds every
  charged call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from apportion.config import Settings
from apportion.engine import AUTO, Engine, execute
from apportion.engines import catalogue
from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.errors import (
    ApportionError,
    BudgetExceededError,
    ContextOverflowError,
    EngineError,
    ModelFetchError,
    ModelIntegrityError,
    UnknownNameError,
    UsageError,
)
from apportion.ledger import Ledger, ModelCost
from apportion.server import metrics as m
from apportion.server.auth import ApiKey, KeyStore, seconds_until_utc_midnight
from apportion.server.schemas import (
    AUTO_MODEL,
    ApportionInfo,
    ApportionOptions,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ErrorBody,
    ErrorDetail,
    Health,
    LedgerOut,
    ModelCard,
    ModelList,
    QueueInfo,
    ResponseMessage,
    Usage,
)
from apportion.strategies.registry import parse_spec
from apportion.types import Answer, Budget, Charge, Completion, Message

log = logging.getLogger("apportion.server")

CHAT_PATH = "/v1/chat/completions"
TokenChannel = Literal["content", "reasoning_content"]
# Single-sample strategies whose tokens are streamed, and the delta field they go in.
TOKEN_CHANNELS: dict[str, TokenChannel] = {"direct": "content", "cot": "reasoning_content"}


@dataclass(frozen=True)
class ServerOptions:
    # Requests that may wait for the in-process llama.cpp engine beside the one running.
    queue_depth: int = 8
    # Wall-clock limit on one request's work, queueing included.
    request_timeout_s: float = 300.0
    max_body_bytes: int = 1_000_000
    # Largest max_tokens a request may ask for.
    max_tokens_limit: int = 4096
    # Worker threads for blocking work (model calls, solver, SQLite).
    worker_threads: int = 64


class ApiError(Exception):
    """An error with its HTTP status and OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI names the field `type`
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_payload(exc: BaseException) -> tuple[int, ErrorBody, dict[str, str]]:
    """The status, body and headers an exception answers with."""

    def body(
        message: str, type_: str, code: str | None = None, param: str | None = None
    ) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))

    if isinstance(exc, ApiError):
        return exc.status, body(exc.message, exc.type, exc.code, exc.param), exc.headers
    if isinstance(exc, GenerationCancelled):
        # nginx's "client closed request": only a client that is already gone ever gets it
        return 499, body("the request was cancelled", "cancelled"), {}
    if isinstance(exc, UnknownNameError) and str(exc).startswith("unknown model "):
        return 404, body(str(exc), "invalid_request_error", "model_not_found", "model"), {}
    if isinstance(exc, ContextOverflowError):
        return 400, body(str(exc), "invalid_request_error", "context_length_exceeded"), {}
    if isinstance(exc, BudgetExceededError):
        return 400, body(str(exc), "invalid_request_error", "budget_too_small"), {}
    if isinstance(exc, EngineError):
        # the model behind the request failed, not the request: a gateway error
        return 502, body(str(exc), "engine_error"), {}
    if isinstance(exc, ModelFetchError | ModelIntegrityError):
        return 503, body(str(exc), "model_unavailable"), {}
    if isinstance(exc, ApportionError):
        return 400, body(str(exc), "invalid_request_error"), {}
    return 500, body("internal server error", "server_error"), {}


def error_response(exc: BaseException) -> JSONResponse:
    status, payload, headers = error_payload(exc)
    return JSONResponse(payload.model_dump(), status_code=status, headers=headers)


def _outcome_for(status: int) -> str:
    if status == 401:
        return m.UNAUTHORIZED
    if status == 429:
        return m.REJECTED
    if status == 504:
        return m.TIMEOUT
    return m.INVALID if status < 500 else m.ERROR


# -- the local engine queue ------------------------------------------------------------------


class LocalQueue:
    """One request at a time on the in-process llama.cpp engines, at most `depth` waiting.

    Entered from worker threads at a request's first local model call (so requests that
    never touch a local model never queue), hence threading primitives rather than asyncio's.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._slot = threading.Semaphore(1)
        self._mutex = threading.Lock()
        self._admitted = 0  # running + waiting
        self._mean_hold_s = 1.0  # moving average of how long a request holds the slot
        self._held_since = 0.0

    @property
    def running(self) -> int:
        return min(self._admitted, 1)

    @property
    def waiting(self) -> int:
        return max(self._admitted - 1, 0)

    def retry_after_s(self) -> int:
        """A guess at when a slot frees up: everyone ahead, at the average hold time."""
        return max(1, min(600, math.ceil(self._mean_hold_s * (self.waiting + 1))))

    def enter(self, cancel: threading.Event, deadline: float) -> None:
        with self._mutex:
            if self._admitted >= 1 + self.depth:
                retry = self.retry_after_s()
                raise ApiError(
                    429,
                    f"the local model is busy: 1 request running and {self.waiting} waiting "
                    f"(the queue holds {self.depth}); retry in about {retry} s",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            self._admitted += 1
        try:
            # Poll so that a waiting request notices its client leaving or its deadline.
            while not self._slot.acquire(timeout=0.05):
                if cancel.is_set():
                    raise GenerationCancelled()
                if time.monotonic() >= deadline:
                    raise ApiError(504, "timed out waiting for the local model", type="timeout")
        except BaseException:
            with self._mutex:
                self._admitted -= 1
            raise
        self._held_since = time.monotonic()

    def leave(self) -> None:
        held = time.monotonic() - self._held_since
        self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held
        self._slot.release()
        with self._mutex:
            self._admitted -= 1


# -- jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenEvent:
    text: str
    channel: TokenChannel


@dataclass(frozen=True)
class ProgressEvent:
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


@dataclass(frozen=True)
class Finished:
    pass


JobEvent = TokenEvent | ProgressEvent | Finished


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
    # The budget was lowered to what the caller's key may still spend today.
    key_capped: bool = False


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
    timed_out: bool = False
    last_finish: str | None = None
    task: asyncio.Task[Answer] | None = None

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
        if self.token_channel is not None:
            self.emit(TokenEvent(piece, self.token_channel))

    def on_charge(self, ledger: Ledger, charge: Charge) -> None:
        if self.token_channel is None:
            totals = ledger.totals()
            self.emit(
                ProgressEvent(charge, len(totals.calls), totals.completion_tokens, totals.flops)
            )

    def stop(self, *, timed_out: bool = False) -> None:
        self.timed_out = self.timed_out or timed_out
        self.cancel.set()


class ObservedEngine:
    """What a job's strategies call: the real engine, plus a cancel check before each call and
    a note of how the last call finished (for the response's finish_reason)."""

    def __init__(self, inner: TextEngine, job: Job) -> None:
        self._inner = inner
        self._job = job

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
        if self._job.cancel.is_set():
            raise GenerationCancelled()
        out = self._inner.generate(
            messages, max_tokens=max_tokens, temperature=temperature, n=n, stop=stop, seed=seed,
            logprobs=logprobs,
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
    ) -> Generator[str, None, Completion]:
        if self._job.cancel.is_set():
            raise GenerationCancelled()
        completion = yield from self._inner.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed
        )
        self._job.last_finish = completion.finish_reason
        return completion

    def close(self) -> None:
        """The Engine owns the real engine and closes it; a job never does."""


# -- the app's state -------------------------------------------------------------------------


class ServerState:
    """Everything one app holds: the Engine, keys, metrics, the local queue and live jobs."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        options: ServerOptions,
        keys: KeyStore | None,
        *,
        owns_engine: bool,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.options = options
        self.keys = keys
        self.owns_engine = owns_engine
        self.metrics = m.ServerMetrics()
        self.local = LocalQueue(options.queue_depth)
        self.metrics.watch_queue(lambda: self.local.waiting)
        self.limiter = anyio.CapacityLimiter(options.worker_threads)
        self.jobs: set[Job] = set()
        # Engine.engine_for loads a model on first use; two threads must not load it twice.
        self._load_lock = threading.Lock()
        self._served = self._servable_models()

    # -- models and routing ---------------------------------------------------------------

    def _servable_models(self) -> list[str]:
        """Models a request may name: configured remote engines, catalogue models already
        pulled (a request never starts a download), the configured default and large models,
        and engines registered on the Engine. Arbitrary .gguf paths are not servable: a
        request must not make the server open files of its choosing."""
        s = self.settings
        pulled = [
            mid
            for mid, model in catalogue.CATALOGUE.items()
            if catalogue.model_path(s.models_dir, model).exists()
        ]
        ids = [s.default_model, *pulled, *(e.id for e in s.engines), *self.engine.loaded_models()]
        if s.large_model in catalogue.CATALOGUE and s.large_model in pulled:
            ids.append(s.large_model)
        return list(dict.fromkeys(ids))

    def served_models(self) -> list[str]:
        return list(dict.fromkeys([*self._served, *self.engine.loaded_models()]))

    def resolve(self, body: ChatCompletionRequest) -> RunSpec:
        messages = [msg.to_message() for msg in body.messages]
        if messages[-1].role != "user":
            raise ApiError(400, "the last message must be the user's question", param="messages")
        if not messages[-1].content.strip():
            raise ApiError(400, "the question (the last message) is empty", param="messages")
        ext = body.apportion or ApportionOptions()
        model, strategy = self._route(body.model, ext.strategy)
        strategy = self._with_temperature(strategy, body.temperature)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > self.options.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens is {max_tokens}; this server allows at most "
                f"{self.options.max_tokens_limit}",
                param="max_tokens",
            )
        b = ext.budget
        budget = Budget() if b is None else Budget(b.flops, b.usd, b.seconds)
        return RunSpec(
            question=messages[-1].content,
            history=tuple(messages[:-1]),
            strategy=strategy,
            model=model,
            max_tokens=max_tokens,
            budget=budget,
            seed=body.seed or 0,
            return_ledger=ext.return_ledger,
        )

    def _route(self, name: str, ext_strategy: str | None) -> tuple[str | None, str]:
        """(model id or None for the default, strategy spec) for the request's `model`."""
        name = name.strip()
        if name in (AUTO_MODEL, AUTO):
            return None, self._checked(ext_strategy or AUTO, "apportion.strategy")
        if name in self.served_models():
            return name, self._checked(ext_strategy or AUTO, "apportion.strategy")
        if name.partition(":")[0].strip() in self.engine.registry.names():
            if ext_strategy is not None and ext_strategy.strip() != name:
                raise ApiError(
                    400,
                    f"model names the strategy {name!r} and apportion.strategy names "
                    f"{ext_strategy!r}; send one of them",
                    param="apportion.strategy",
                )
            return None, self._checked(name, "model")
        valid = [AUTO_MODEL, *self.engine.registry.names(), *self.served_models()]
        raise ApiError(
            404,
            f"unknown model {name!r}; valid models: {', '.join(valid)} "
            "(a strategy takes parameters, e.g. consistency:n=4)",
            code="model_not_found",
            param="model",
        )

    def _checked(self, strategy: str, param: str) -> str:
        if strategy.strip() == AUTO:
            return AUTO
        try:
            self.engine.registry.build(strategy)
        except UsageError as e:
            raise ApiError(400, str(e), code="invalid_strategy", param=param) from e
        return strategy.strip()

    def _with_temperature(self, strategy: str, temperature: float | None) -> str:
        """Apply `temperature` to a strategy that has one (cot, program, consistency, ...).
        `direct` is greedy by design, and `auto` picks each step's own sampling."""
        if temperature is None or strategy == AUTO:
            return strategy
        spec = parse_spec(strategy)
        if "temperature" not in self.engine.registry.parameters(spec.name):
            return strategy
        if any(k == "temperature" for k, _ in spec.params):
            return strategy
        extended = f"{strategy}{',' if spec.params else ':'}temperature={temperature}"
        return self._checked(extended, "temperature")

    # -- keys -----------------------------------------------------------------------------

    async def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> ApiKey | None:
        keys = self.keys
        if keys is None or not await anyio.to_thread.run_sync(keys.enabled, limiter=self.limiter):
            return None
        unauthorized = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "this server needs an API key: send `Authorization: Bearer KEY`",
                code="missing_api_key",
                headers=unauthorized,
            )
        key = await anyio.to_thread.run_sync(
            keys.authenticate, credentials.credentials, limiter=self.limiter
        )
        if key is None:
            raise ApiError(
                401, "the API key is not valid", code="invalid_api_key", headers=unauthorized
            )
        return key

    async def cap_by_key(self, spec: RunSpec, key: ApiKey | None) -> RunSpec:
        """Refuse a key whose daily budget is spent; otherwise cap the request's budget at
        what the key may still spend today (so one request cannot overdraw it by much)."""
        if key is None or self.keys is None:
            return spec
        allowance = await anyio.to_thread.run_sync(self.keys.allowance, key, limiter=self.limiter)
        if allowance.exhausted:
            raise ApiError(
                429,
                f"the API key {key.name!r} has spent its daily budget; it resets at 00:00 UTC",
                type="insufficient_quota",
                code="daily_budget_exceeded",
                headers={"Retry-After": str(seconds_until_utc_midnight())},
            )
        b = spec.budget
        flops, usd, capped = b.max_flops, b.max_usd, False
        if allowance.flops is not None and (flops is None or allowance.flops < flops):
            flops, capped = allowance.flops, True
        if allowance.usd is not None and (usd is None or allowance.usd < usd):
            usd, capped = allowance.usd, True
        return replace(spec, budget=Budget(flops, usd, b.max_seconds), key_capped=capped)

    # -- running --------------------------------------------------------------------------

    def start(self, spec: RunSpec, *, key: ApiKey | None, streaming: bool) -> Job:
        job = Job(
            spec=spec,
            loop=asyncio.get_running_loop(),
            streaming=streaming,
            deadline=time.monotonic() + self.options.request_timeout_s,
            key=key,
        )
        self.jobs.add(job)
        job.task = asyncio.create_task(self._run(job))
        # the outcome is read by whoever waits; this only stops "never retrieved" warnings
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return job

    def _engine_for(self, job: Job, model_id: str) -> TextEngine:
        """The engine_for a job's RunContext uses (runs in the worker thread)."""
        if job.cancel.is_set():
            raise GenerationCancelled()
        served = self.served_models()
        if model_id not in served:
            raise UnknownNameError("model", model_id, served)
        with self._load_lock:
            inner = self.engine.engine_for(model_id)
        if inner.cost.local and not job.holds_local:
            self.local.enter(job.cancel, job.deadline)
            job.holds_local = True
        return ObservedEngine(inner, job)

    def _work(self, job: Job) -> Answer:
        """The worker thread: route, plan and execute."""
        spec = job.spec
        try:
            prepared = self.engine.prepare(
                spec.question, history=spec.history, strategy=spec.strategy, model=spec.model,
                max_tokens=spec.max_tokens, budget=spec.budget, seed=spec.seed,
            )  # fmt: skip
            steps = prepared.plan.steps
            if len(steps) == 1:
                channel = TOKEN_CHANNELS.get(m.strategy_label(steps[0].strategy))
                job.token_channel = channel
            ledger = prepared.ctx.ledger
            ledger.on_charge = job.on_charge
            job.ledger = ledger
            ctx = replace(
                prepared.ctx, engine_for=partial(self._engine_for, job), on_token=job.on_token
            )
            return execute(
                prepared.plan, prepared.query, ctx, self.engine.registry,
                intent=prepared.features.intent,
            )  # fmt: skip
        finally:
            if job.holds_local:
                job.holds_local = False
                self.local.leave()

    async def _run(self, job: Job) -> Answer:
        self.metrics.in_flight.inc()
        answer: Answer | None = None
        outcome = m.ERROR
        try:
            answer = await anyio.to_thread.run_sync(self._work, job, limiter=self.limiter)
            if answer.answer:
                outcome = m.OK
            else:
                outcome = m.BUDGET if answer.stopped_for_budget else m.NO_ANSWER
            return answer
        except GenerationCancelled:
            outcome = m.TIMEOUT if job.timed_out else m.CANCELLED
            raise
        except Exception as e:
            status, _, _ = error_payload(e)
            outcome = _outcome_for(status)
            if status >= 500 and not isinstance(e, ApiError):
                log.exception("request %s failed", job.id)
            raise
        finally:
            self.metrics.in_flight.dec()
            job.events.put_nowait(Finished())
            self.jobs.discard(job)
            await self._account(job, answer, outcome)

    async def _account(self, job: Job, answer: Answer | None, outcome: str) -> None:
        """Metrics and the key's spending, for every job however it ended: a cancelled or
        failed request still spent what its ledger holds."""
        totals = (answer.ledger if answer is not None else None) or (
            job.ledger.totals() if job.ledger is not None else None
        )
        strategy = answer.strategy if answer is not None else job.spec.strategy
        flops = totals.flops if totals else 0.0
        usd = totals.cost_usd if totals else 0.0
        self.metrics.finished(
            strategy,
            outcome,
            seconds=time.monotonic() - job.started,
            prompt_tokens=totals.prompt_tokens if totals else 0,
            completion_tokens=totals.completion_tokens if totals else 0,
            flops=flops,
            cost_usd=usd,
        )
        if job.key is not None and self.keys is not None:
            keys, key_id = self.keys, job.key.id
            try:
                await anyio.to_thread.run_sync(
                    partial(keys.record, key_id, flops=flops, usd=usd), limiter=self.limiter
                )
            except Exception:  # spending must not turn a served answer into an error
                log.exception("could not record spending for key %s", job.key.name)

    async def next_event(self, job: Job) -> JobEvent:
        remaining = job.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(job.events.get(), timeout=max(remaining, 0.0))
        except TimeoutError:
            job.stop(timed_out=True)
            raise ApiError(
                504,
                f"the request took longer than {self.options.request_timeout_s:g} s",
                type="timeout",
            ) from None

    async def result(self, job: Job) -> Answer:
        """The job's answer once it has ended (after its Finished event)."""
        assert job.task is not None
        answer = await asyncio.shield(job.task)
        self.check_budget_refusal(job, answer)
        return answer

    async def wait(self, job: Job, request: Request) -> Answer:
        """A non-streamed request: the answer, watching for the deadline and the client
        going away meanwhile."""
        assert job.task is not None
        while not job.task.done():
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                job.stop(timed_out=True)
                raise ApiError(
                    504,
                    f"the request took longer than {self.options.request_timeout_s:g} s",
                    type="timeout",
                )
            await asyncio.wait({job.task}, timeout=min(0.25, remaining))
            if not job.task.done() and await request.is_disconnected():
                job.stop()
        return await self.result(job)

    def check_budget_refusal(self, job: Job, answer: Answer) -> None:
        if answer.answer or not answer.stopped_for_budget:
            return
        why = answer.error or "the budget refused the first call"
        if job.spec.key_capped:
            raise ApiError(
                429,
                f"the API key's remaining daily budget is too small for this request: {why}",
                type="insufficient_quota",
                code="daily_budget_exceeded",
                headers={"Retry-After": str(seconds_until_utc_midnight())},
            )
        raise ApiError(
            400,
            f"the budget is too small for any answer: {why}",
            code="budget_too_small",
            param="apportion.budget",
        )

    # -- responses ------------------------------------------------------------------------

    def info(self, job: Job, answer: Answer) -> ApportionInfo:
        t = answer.ledger
        return ApportionInfo(
            strategy=answer.strategy,
            intent=answer.intent,
            confidence=answer.confidence,
            route=[a.strategy for a in answer.attempts],
            stopped_for_budget=answer.stopped_for_budget,
            error=answer.error,
            ledger=LedgerOut(
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                flops=t.flops,
                wall_s=round(t.wall_s, 6),
                cpu_s=round(t.cpu_s, 6),
                energy_j=t.energy_j,
                cost_usd=t.cost_usd,
                calls=[c.to_dict() for c in t.calls] if job.spec.return_ledger else None,
            ),
        )

    @staticmethod
    def usage(answer: Answer) -> Usage:
        t = answer.ledger
        return Usage(
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            total_tokens=t.prompt_tokens + t.completion_tokens,
        )

    @staticmethod
    def finish_reason(job: Job, answer: Answer) -> str:
        single = m.strategy_label(answer.strategy) in TOKEN_CHANNELS
        return "length" if single and job.last_finish == "length" else "stop"

    def completion(self, job: Job, answer: Answer, model: str) -> ChatCompletion:
        reasoning = None
        if m.strategy_label(answer.strategy) == "cot":
            chosen = [a for a in answer.attempts if a.strategy == answer.strategy and a.ok]
            reasoning = chosen[-1].rationale if chosen else None
        return ChatCompletion(
            id=job.id,
            created=job.created,
            model=model,
            choices=[
                Choice(
                    message=ResponseMessage(content=answer.answer, reasoning_content=reasoning),
                    finish_reason=self.finish_reason(job, answer),
                )
            ],
            usage=self.usage(answer),
            apportion=self.info(job, answer),
        )

    async def sse(self, job: Job, model: str, first: JobEvent) -> AsyncIterator[dict[str, str]]:
        """The event stream of a streamed request, starting from its first event."""

        def chunk(
            delta: dict[str, str], finish: str | None = None, **extra: object
        ) -> dict[str, str]:
            payload = {
                "id": job.id,
                "object": "chat.completion.chunk",
                "created": job.created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
                **extra,
            }
            return {"data": json.dumps(payload)}

        def failure(exc: BaseException) -> dict[str, str]:
            # Mid-stream the status line has gone out: an error event is all that is left.
            _, body, _ = error_payload(exc)
            return {"data": body.model_dump_json()}

        try:
            yield chunk({"role": "assistant", "content": ""})
            event = first
            while not isinstance(event, Finished):
                if isinstance(event, TokenEvent):
                    yield chunk({event.channel: event.text})
                else:
                    yield chunk({}, apportion=event.to_dict())
                try:
                    event = await self.next_event(job)
                except ApiError as e:
                    yield failure(e)
                    return
            try:
                answer = await self.result(job)
            except Exception as e:
                yield failure(e)
                return
            if job.token_channel != "content" and answer.answer:
                yield chunk({"content": answer.answer})
            yield chunk({}, self.finish_reason(job, answer))
            last = {
                "id": job.id,
                "object": "chat.completion.chunk",
                "created": job.created,
                "model": model,
                "choices": [],
                "usage": self.usage(answer).model_dump(),
                "apportion": self.info(job, answer).model_dump(),
            }
            yield {"data": json.dumps(last)}
            yield {"data": "[DONE]"}
        finally:
            # Normally a no-op (the job has ended); when the client went away mid-stream this
            # is what stops the generation, at its next token.
            job.stop()

    async def shutdown(self) -> None:
        for job in list(self.jobs):
            job.stop()
        tasks = [j.task for j in self.jobs if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self.owns_engine:
            await anyio.to_thread.run_sync(self.engine.close)


# -- the body-size limit ---------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not they declare a length
    (a chunked body is counted as it arrives, and stopped once it is over)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"the request body is larger than {self.max_bytes:,} bytes",
            code="request_too_large",
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(
                        ApiError(400, "the Content-Length header is not a number")
                    )(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await error_response(too_large)(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> AsgiMessage:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from reading the body; the handler
                    # below turns this one into the OpenAI-style 413.
                    raise StarletteHTTPException(413, too_large.message)
            return message

        await self.app(scope, limited_receive, send)


# -- the app ---------------------------------------------------------------------------------


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.apportion
    return state


_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has any.")


async def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey | None:
    return await _state(request).authenticate(credentials)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = list(exc.errors())
    if not errors:
        return "the request is not valid", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    # pydantic names the member of a union that failed (`str`, `list[TextPart]`): not a field
    loc = [
        str(p)
        for p in first.get("loc", ())
        if p != "body" and str(p) not in _UNION_TAGS and "[" not in str(p)
    ]
    if not loc:
        return "the request body must be a JSON object", None
    param = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{param}: {first.get('msg', 'invalid')}{more}", param


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    options: ServerOptions | None = None,
    keys: KeyStore | None = None,
) -> FastAPI:
    """An app serving `engine` (built from `settings` if not given; then closed on shutdown).
    With `keys`, requests need a key as soon as the store holds one."""
    options = options or ServerOptions()
    state = ServerState(
        settings,
        engine or Engine(settings=settings),
        options,
        keys,
        owns_engine=engine is None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.shutdown()

    app = FastAPI(
        title="apportion",
        summary="OpenAI-compatible chat completions, routed to the cheapest strategy, with "
        "budgets and a ledger of every FLOP.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.apportion = state
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    def _count_refusal(request: Request, status: int) -> None:
        # Errors from a job are counted when the job ends; these never reached one.
        if request.url.path == CHAT_PATH and not getattr(request.state, "job_started", False):
            state.metrics.refused(_outcome_for(status))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        _count_refusal(request, 400)
        code = "invalid_json" if message.endswith("not valid JSON") else None
        return error_response(ApiError(400, message, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        _count_refusal(request, exc.status_code)
        return error_response(
            ApiError(
                exc.status_code,
                str(exc.detail),
                code="request_too_large" if exc.status_code == 413 else None,
                headers=dict(exc.headers or {}),
            )
        )

    async def on_known(request: Request, exc: Exception) -> Response:
        status, _, _ = error_payload(exc)
        _count_refusal(request, status)
        return error_response(exc)

    # Registered by class, so Starlette answers them in its exception middleware. A handler
    # for `Exception` alone runs in the outermost middleware, which re-raises after answering
    # and gets every 4xx logged as "Exception in ASGI application".
    for known in (ApiError, ApportionError, GenerationCancelled):
        app.add_exception_handler(known, on_known)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> Response:
        _count_refusal(request, 500)
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(exc)

    error_docs: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 404, 413, 429, 502, 504)
    }

    @app.post(
        CHAT_PATH,
        response_model=ChatCompletion,
        responses={
            **error_docs,
            200: {
                "content": {"text/event-stream": {}},
                "description": "A chat completion, or with `stream` server-sent chunks.",
            },
        },
    )
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        key: Annotated[ApiKey | None, Depends(_authenticate)],
    ) -> Response:
        """Answer the conversation's last message through the route its `model` names."""
        spec = await state.cap_by_key(state.resolve(body), key)
        request.state.job_started = True
        job = state.start(spec, key=key, streaming=body.stream)
        if not body.stream:
            answer = await state.wait(job, request)
            return JSONResponse(state.completion(job, answer, body.model).model_dump())
        first = await state.next_event(job)
        if isinstance(first, Finished):
            # It ended before any output: failures still get their own status codes.
            await state.result(job)
        return EventSourceResponse(
            state.sse(job, body.model, first),
            ping=15,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorBody}})
    async def list_models(
        _key: Annotated[ApiKey | None, Depends(_authenticate)],
    ) -> ModelList:
        """`apportion-auto`, every strategy, and every model a request may name."""
        cards = [ModelCard(id=AUTO_MODEL, kind="router")]
        cards += [ModelCard(id=n, kind="strategy") for n in state.engine.registry.names()]
        cards += [ModelCard(id=n, kind="model") for n in state.served_models()]
        return ModelList(data=cards)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        keys = state.keys
        auth = keys is not None and await anyio.to_thread.run_sync(keys.enabled)
        return Health(
            auth=auth,
            default_model=state.settings.default_model,
            local_queue=QueueInfo(
                running=state.local.running,
                waiting=state.local.waiting,
                depth=options.queue_depth,
            ),
        )

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return app
