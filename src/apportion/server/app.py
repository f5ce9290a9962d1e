"""The OpenAI-compatible server. `create_app(settings)` builds one FastAPI app; all of its state
(engine, key store, metrics, queue) hangs off `app.state`, never off module globals.

This module is the routes and the wiring. A chat completion goes: Bearer key (when the key
store has keys) → request validation (schemas.py) → model and strategy resolution
(translate.py, against the models in models.py) → the key's hold is opened (quota.py) → a Job
(jobs.py) is started (runner.py), which runs `Runtime.prepare` + `Runtime.run` in a worker
thread with the server's hooks in (hooks.py) → one JSON body (responses.py), or server-sent events
as the work happens (stream.py). Errors: errors.py; the body limit: body_limit.py; the local
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

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import date
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

from apportion.config import Settings
from apportion.engines.base import GenerationCancelled
from apportion.errors import ApportionError
from apportion.runtime import Runtime
from apportion.server import metrics as m
from apportion.server.auth import ApiKey, KeyStore
from apportion.server.body_limit import BodyLimit
from apportion.server.errors import (
    ApiError,
    error_payload,
    error_response,
    outcome_for,
    validation_error,
)
from apportion.server.hooks import RunHooks
from apportion.server.jobs import Finished
from apportion.server.models import ServedModels
from apportion.server.queue import LocalQueue
from apportion.server.quota import KeyQuota
from apportion.server.responses import Responses
from apportion.server.runner import JobRunner
from apportion.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorBody,
    Health,
    ModelList,
    QueueInfo,
)
from apportion.server.stream import ChunkWriter, sse_events
from apportion.server.translate import RequestTranslator
from apportion.tools.solver_worker import SolverWorkers

log = logging.getLogger("apportion.server")

CHAT_PATH = "/v1/chat/completions"
# The longest a streamed request waits for its first output before the stream opens anyway.
STREAM_OPEN_S = 0.5
# What sse-starlette waits beyond a stream's shutdown grace before it cancels the stream.
SHUTDOWN_SEND_S = 2.0


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
    # Told to stop (SIGINT, SIGTERM), how long an open stream may run on to finish its answer
    # before it ends with an error event (stream.py).
    shutdown_grace_s: float = 30.0


class ServerState:
    """What one app holds, wired together: the Runtime, the models it serves, the key store
    (through its quotas), metrics, the local queue, the solver workers and the jobs."""

    def __init__(
        self,
        settings: Settings,
        engine: Runtime,
        options: ServerOptions,
        keys: KeyStore | None,
        *,
        owns_engine: bool,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.options = options
        self.owns_engine = owns_engine
        self.metrics = m.ServerMetrics()
        self.local = LocalQueue(options.queue_depth)
        self.metrics.watch_queue(lambda: self.local.waiting)
        self.metrics.watch_replicas(engine.replica_states)
        limiter = anyio.CapacityLimiter(options.worker_threads)
        self.solvers = SolverWorkers()  # solver work in worker processes, never on these threads
        self.models = ServedModels(settings, engine)
        self.translator = RequestTranslator(
            engine.registry, self.models, max_tokens_limit=options.max_tokens_limit
        )
        self.quota = KeyQuota(keys, limiter, ttl_s=options.request_timeout_s + 60.0)
        hooks = RunHooks(engine, self.models, self.local, self.quota, self.solvers)
        self.jobs = JobRunner(
            engine, hooks, self.quota, self.metrics, limiter, timeout_s=options.request_timeout_s
        )
        self.responses = Responses(engine.registry)

    async def shutdown(self) -> None:
        await self.jobs.shutdown()
        # the solver processes are the server's own, whoever owns the engine
        await anyio.to_thread.run_sync(self.solvers.close)
        if self.owns_engine:
            await anyio.to_thread.run_sync(self.engine.close)
            if self.engine.store is not None:
                self.engine.store.close()


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
    engine: Runtime | None = None,
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

        engine = Runtime.from_settings(
            settings, documents="given", store=open_configured_store(settings, None)
        )
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
        job = state.jobs.start(spec, key=key, streaming=body.stream, job_id=job_id)
        if not body.stream:
            answer = await state.jobs.wait(job, request.is_disconnected)
            return JSONResponse(state.responses.completion(job, answer, body.model).model_dump())
        first = await state.jobs.next_event(job, within=STREAM_OPEN_S)
        if isinstance(first, Finished):
            # It ended before any output: failures still get their own status codes.
            await state.jobs.result(job)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(job, body.model, include_usage=include_usage)
        shutdown = anyio.Event()  # set by sse-starlette when uvicorn is told to stop
        grace_s = options.shutdown_grace_s
        return EventSourceResponse(
            sse_events(state.jobs, state.responses, job, writer, first,
                       shutdown=shutdown, grace_s=grace_s),
            ping=15,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            shutdown_event=shutdown,
            # longer than the stream's own grace, so that its closing error event goes out
            shutdown_grace_period=grace_s + SHUTDOWN_SEND_S,
        )  # fmt: skip

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorBody}})
    async def list_models(
        _key: Annotated[ApiKey | None, Depends(_authenticate)],
    ) -> ModelList:
        """`apportion-auto`, every strategy, and every model a request may name."""
        return state.models.listing()

    @app.get("/v1/usage", responses={401: {"model": ErrorBody}})
    async def usage(
        key: Annotated[ApiKey | None, Depends(_authenticate)], since: str | None = None
    ) -> dict[str, Any]:
        """What the caller's key spent per UTC day and route (the spend log), from `since`
        (YYYY-MM-DD) on; with no keys in the store, there is no one to report on."""
        keys = state.quota.keys
        if key is None or keys is None:
            raise ApiError(404, "usage is kept per API key, and this server has none",
                           code="no_keys")  # fmt: skip
        if since is not None:
            try:
                date.fromisoformat(since)
            except ValueError:
                raise ApiError(400, f"since takes a day as YYYY-MM-DD, got {since!r}",
                               param="since") from None  # fmt: skip
        rows = await anyio.to_thread.run_sync(
            partial(keys.spend_report, key=key.name, since=since)
        )
        return {"object": "list", "key": key.name, "data": [asdict(r) for r in rows]}

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
