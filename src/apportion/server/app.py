"""The OpenAI-compatible server. `create_app(settings)` builds one FastAPI app; all of its state
(engine, key store, metrics, queue) hangs off `app.state`, never off module globals.

A chat completion goes: Bearer key (when the key store has keys) → request validation
(schemas.py) → model and strategy resolution (translate.py) → the key's hold is opened
(quota.py) → a Job (jobs.py) runs `Engine.prepare` + `execute` in a worker thread → one JSON
body, or server-sent events as the work happens (stream.py). Errors: errors.py; the local
engine queue: queue.py; the document store: documents.py.

- **Streaming.** The stream opens (status 200 and the role chunk) at the job's first output,
  or after `STREAM_OPEN_S` of work, whichever is first: a request that fails before then
  still gets its own status (400, 429, 503, ...); after it, an error event. stream.py says
  what each kind of plan streams.
- **Parameters.** Every parameter of the request is honoured or refused (schemas.py). `stop`
  ends the answer before the first stop sequence on every route and every engine; a `direct`
  route also hands the sequences to the engine, which stops generating there.
- **Cancellation.** Every single-sample model call streams from its engine, and each token
  passes a check of the job's cancel flag; a client that disconnects (or a request past its
  timeout) stops generation at the next token. The partial call is still charged.
- **Concurrency.** In-process llama.cpp engines share the CPU, so one request at a time uses
  them; up to `queue_depth` more wait, and beyond that a request gets 429 with Retry-After.
  The slot is taken at a request's first local model call, so solver-only requests (the
  symbolic route) never queue. Remote engines are not queued: they run concurrently in worker
  threads.
- **Quotas.** A key's daily budget is kept by holds in the key store: opened at admission,
  raised to the worst case of each model call before it runs, settled to the real cost at the
  end. Requests in flight together can never spend more than the key has left.
- **Budget too small.** A request whose budget refuses its first model call, so that nothing
  was answered, gets 400 `budget_too_small` (429 `insufficient_quota` when it was the key's
  remaining daily allowance that was too small). A budget that stops a ladder after some
  attempt answered returns 200 with `apportion.stopped_for_budget`.
- **Ledger.** Responses, streamed or not, always carry the ledger totals;
  `apportion.return_ledger` adds every charged call.
- **Errors.** No request gets a 500: see errors.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Annotated, Any

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
from apportion.engine import Engine, execute
from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.errors import ApportionError, UnknownNameError
from apportion.server import metrics as m
from apportion.server.auth import ApiKey, KeyStore
from apportion.server.errors import (
    ApiError,
    error_payload,
    error_response,
    outcome_for,
    validation_error,
)
from apportion.server.jobs import (
    TOKEN_CHANNELS,
    Finished,
    Job,
    JobEvent,
    ObservedEngine,
    RunSpec,
    StopFilter,
    cut_at_stop,
)
from apportion.server.queue import LocalQueue
from apportion.server.quota import KeyQuota
from apportion.server.schemas import (
    AUTO_MODEL,
    ApportionInfo,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ErrorBody,
    Health,
    LedgerOut,
    ModelCard,
    ModelList,
    QueueInfo,
    ResponseMessage,
    Usage,
)
from apportion.server.stream import ChunkWriter, Sse
from apportion.server.translate import RequestTranslator
from apportion.tools.solver_worker import SolverWorkers
from apportion.types import Answer

log = logging.getLogger("apportion.server")

CHAT_PATH = "/v1/chat/completions"
# The longest a streamed request waits for its first output before the stream opens anyway.
STREAM_OPEN_S = 0.5


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
        self.solvers = SolverWorkers()  # solver work in worker processes, never on these threads
        # Engine.engine_for loads a model on first use; two threads must not load it twice.
        self._load_lock = threading.Lock()
        self.translator = RequestTranslator(
            settings, engine, max_tokens_limit=options.max_tokens_limit
        )
        self.quota = KeyQuota(keys, self.limiter, ttl_s=options.request_timeout_s + 60.0)

    # -- running --------------------------------------------------------------------------

    def start(self, spec: RunSpec, *, key: ApiKey | None, streaming: bool, job_id: str) -> Job:
        job = Job(
            spec=spec,
            loop=asyncio.get_running_loop(),
            streaming=streaming,
            deadline=time.monotonic() + self.options.request_timeout_s,
            key=key,
            id=job_id,
            holding=key is not None and self.keys is not None,
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
        served = self.translator.served_models()
        if model_id not in served:
            raise UnknownNameError("model", model_id, served)
        with self._load_lock:
            inner = self.engine.engine_for(model_id)
        if inner.cost.local and not job.holds_local:
            self.local.enter(job.cancel, job.deadline, on_wait=job.on_queue)
            job.holds_local = True
        self.quota.refresh_budget(job)
        stop = job.spec.stop if job.token_channel == "content" else ()
        return ObservedEngine(inner, job, partial(self.quota.reserve, job), stop=stop)

    def _work(self, job: Job) -> Answer:
        """The worker thread: route, plan and execute; then settle the key's hold."""
        spec = job.spec
        try:
            prepared = self.engine.prepare(
                spec.question, history=spec.history, strategy=spec.strategy, model=spec.model,
                max_tokens=spec.max_tokens, budget=spec.budget, seed=spec.seed,
                deterministic=spec.deterministic,
            )  # fmt: skip
            steps = prepared.plan.steps
            if len(steps) == 1:
                job.token_channel = TOKEN_CHANNELS.get(m.strategy_label(steps[0].strategy))
            if job.token_channel == "content" and spec.stop:
                job.content_filter = StopFilter(spec.stop)
            ledger = prepared.ctx.ledger
            ledger.on_charge = job.on_charge
            job.ledger = ledger
            ctx = replace(
                prepared.ctx, engine_for=partial(self._engine_for, job), on_token=job.on_token,
                solvers=self.solvers,
            )  # fmt: skip
            return execute(
                prepared.plan, prepared.query, ctx, self.engine.registry,
                intent=prepared.features.intent,
            )  # fmt: skip
        finally:
            # Settled before the local slot is given back, so the next request in the queue
            # sees this one's real spending rather than its hold.
            self.quota.settle(job)
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
            outcome = outcome_for(status)
            if not isinstance(e, ApiError | ApportionError):
                log.error("request %s failed", job.id, exc_info=e)
            raise
        finally:
            self.metrics.in_flight.dec()
            job.events.put_nowait(Finished())
            self.jobs.discard(job)
            if job.holding:  # the worker never ran (cancelled before it started)
                await anyio.to_thread.run_sync(self.quota.settle, job)
            self._account(job, answer, outcome)
            log.info(
                "request %s: %s, %s%s", job.id, outcome,
                answer.strategy if answer is not None else job.spec.strategy,
                f", user {job.spec.user!r}" if job.spec.user else "",
            )  # fmt: skip

    def _account(self, job: Job, answer: Answer | None, outcome: str) -> None:
        """Metrics, for every job however it ended: a cancelled or failed request still spent
        what its ledger holds (the key's spending was settled by the worker)."""
        totals = (answer.ledger if answer is not None else None) or (
            job.ledger.totals() if job.ledger is not None else None
        )
        strategy = answer.strategy if answer is not None else job.spec.strategy
        self.metrics.finished(
            strategy,
            outcome,
            seconds=time.monotonic() - job.started,
            prompt_tokens=totals.prompt_tokens if totals else 0,
            completion_tokens=totals.completion_tokens if totals else 0,
            flops=totals.flops if totals else 0.0,
            cost_usd=totals.cost_usd if totals else 0.0,
        )

    def _timeout(self, job: Job) -> ApiError:
        job.stop(timed_out=True)
        return ApiError(
            504,
            f"the request took longer than {self.options.request_timeout_s:g} s",
            type="timeout",
        )

    async def next_event(self, job: Job, *, within: float | None = None) -> JobEvent | None:
        """The job's next event; None if `within` seconds pass first. Past the request's
        deadline, the job is stopped and this raises 504."""
        remaining = job.deadline - time.monotonic()
        wait = remaining if within is None else min(within, remaining)
        try:
            return await asyncio.wait_for(job.events.get(), timeout=max(wait, 0.0))
        except TimeoutError:
            if within is not None and within < remaining:
                return None
            raise self._timeout(job) from None

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
                raise self._timeout(job)
            await asyncio.wait({job.task}, timeout=min(0.25, remaining))
            if not job.task.done() and await request.is_disconnected():
                job.stop()
        return await self.result(job)

    def check_budget_refusal(self, job: Job, answer: Answer) -> None:
        if answer.answer or not answer.stopped_for_budget:
            return
        why = answer.error or "the budget refused the first call"
        if job.key is not None and (job.spec.key_capped or job.quota_others is not None):
            raise self.quota.quota_error(job.key, job.quota_others or 0, f" ({why})")
        raise ApiError(
            400,
            f"the budget is too small for any answer: {why}",
            code="budget_too_small",
            param="apportion.budget",
        )

    # -- responses ------------------------------------------------------------------------

    def content(self, job: Job, answer: Answer) -> str:
        """The answer as the client receives it: up to the first stop sequence."""
        text, hit = cut_at_stop(answer.answer, job.spec.stop)
        job.stop_hit = job.stop_hit or hit
        return text

    def info(self, job: Job, answer: Answer) -> ApportionInfo:
        t = answer.ledger
        giver = next((a for a in answer.attempts if a.strategy == answer.strategy and a.ok), None)
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
            citations=list(giver.citations) if giver is not None else [],
            notes=list(job.spec.notes),
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
        if job.stop_hit:
            return "stop"
        single = m.strategy_label(answer.strategy) in TOKEN_CHANNELS
        return "length" if single and job.last_finish == "length" else "stop"

    def completion(self, job: Job, answer: Answer, model: str) -> ChatCompletion:
        reasoning = None
        if m.strategy_label(answer.strategy) == "cot":
            chosen = [a for a in answer.attempts if a.strategy == answer.strategy and a.ok]
            reasoning = chosen[-1].rationale if chosen else None
        content = self.content(job, answer)
        return ChatCompletion(
            id=job.id,
            created=job.created,
            model=model,
            choices=[
                Choice(
                    message=ResponseMessage(content=content, reasoning_content=reasoning),
                    finish_reason=self.finish_reason(job, answer),
                )
            ],
            usage=self.usage(answer),
            apportion=self.info(job, answer),
        )

    async def sse(
        self, job: Job, writer: ChunkWriter, first: JobEvent | None
    ) -> AsyncIterator[Sse]:
        """The event stream of a streamed request, starting from its first event (None: the
        stream opened before the job said anything)."""
        try:
            yield writer.role()
            event = first
            while not isinstance(event, Finished):
                if event is not None:
                    out = writer.event(event)
                    if out is not None:
                        yield out
                try:
                    event = await self.next_event(job)
                except ApiError as e:
                    yield writer.failure(e)
                    return
            try:
                answer = await self.result(job)
            except Exception as e:
                yield writer.failure(e)
                return
            if job.token_channel == "content":
                rest = job.content_filter.flush() if job.content_filter is not None else ""
                if job.content_filter is not None and job.content_filter.hit:
                    job.stop_hit = True
                if rest:
                    yield writer.chunk({"content": rest})
            else:
                content = self.content(job, answer)
                if content:
                    yield writer.chunk({"content": content})
            finish = self.finish_reason(job, answer)
            usage = self.usage(answer).model_dump()
            for out in writer.ending(finish, usage, self.info(job, answer).model_dump()):
                yield out
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
        # the solver processes are the server's own, whoever owns the engine
        await anyio.to_thread.run_sync(self.solvers.close)
        if self.owns_engine:
            await anyio.to_thread.run_sync(self.engine.close)
            if self.engine.store is not None:
                self.engine.store.close()


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
    return await _state(request).quota.authenticate(credentials)


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    options: ServerOptions | None = None,
    keys: KeyStore | None = None,
) -> FastAPI:
    """An app serving `engine` (built from `settings` if not given, with the document store
    the settings name; then closed on shutdown). With `keys`, requests need a key as soon as
    the store holds one."""
    options = options or ServerOptions()
    owns_engine = engine is None
    if engine is None:
        from apportion.server.documents import open_configured_store

        engine = Engine(settings=settings)
        engine.store = open_configured_store(settings, None)
    state = ServerState(settings, engine, options, keys, owns_engine=owns_engine)

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
            state.metrics.refused(outcome_for(status))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        _count_refusal(request, 400)
        return error_response(validation_error(exc))

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
        _count_refusal(request, 503)
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(exc)

    error_docs: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 404, 413, 429, 503, 504)
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
        job_id = f"chatcmpl-{uuid.uuid4().hex}"
        spec = await state.quota.admit(state.translator.resolve(body), key, job_id)
        request.state.job_started = True
        job = state.start(spec, key=key, streaming=body.stream, job_id=job_id)
        if not body.stream:
            answer = await state.wait(job, request)
            return JSONResponse(state.completion(job, answer, body.model).model_dump())
        first = await state.next_event(job, within=STREAM_OPEN_S)
        if isinstance(first, Finished):
            # It ended before any output: failures still get their own status codes.
            await state.result(job)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(job, body.model, include_usage=include_usage)
        return EventSourceResponse(
            state.sse(job, writer, first),
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
        cards += [ModelCard(id=n, kind="model") for n in state.translator.served_models()]
        return ModelList(data=cards)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(
            auth=await state.quota.enabled(),
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


__all__ = ["CHAT_PATH", "ApiError", "ServerOptions", "create_app"]
