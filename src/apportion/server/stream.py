"""Server-sent chunks of a streamed chat completion, as OpenAI sends them.

    role chunk            {"delta": {"role": "assistant", "content": ""}}     at once
    work                  tokens as they are sampled; progress while other strategies work
    answer                {"delta": {"content": ...}}          (unless the tokens were it)
    finish                {"delta": {}, "finish_reason": "stop" | "length"}
    usage                 {"choices": [], "usage": {...}}      only with include_usage
    data: [DONE]

The `apportion` object (route, confidence, the ledger) rides on the last chunk before
`[DONE]`: the usage chunk when `stream_options.include_usage` is true, else the finish chunk.
With include_usage every other chunk carries `"usage": null`, as OpenAI's do.

Progress: a plan of one strategy whose call's tokens are the answer (its `token_stream`
attribute says so: `direct`) streams them as `content`; one whose tokens are reasoning (`cot`)
streams them as `reasoning_content`. Any other plan (program, consistency, best_of_n,
cascade, the solver, ladders) streams what it is doing as `reasoning_content`: a line when a
model call starts, that call's tokens when it streams, and a line when a call is charged
(tokens, FLOPs, time); the chunk that carries a charge line also has a machine-readable
`apportion` object with `"event": "progress"`. A client that prints only `delta.content`
sees just the answer.

An error after the stream has opened arrives as OpenAI's error event, `data: {"error": ...}`,
which the official client raises as an APIError.

Shutdown: when the server is told to stop (SIGINT, SIGTERM), an open stream runs on for the
server's grace period, so that most answers finish; one still running then ends with an
error event (503, `server_shutting_down`), never silently: a client reading a stream cut
without one would take the partial answer for the whole.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from apportion.server.errors import ApiError, error_payload
from apportion.server.jobs import (
    CallEvent,
    Finished,
    Job,
    JobEvent,
    ProgressEvent,
    QueueEvent,
    TokenEvent,
)
from apportion.server.responses import Responses
from apportion.server.runner import JobRunner

Sse = dict[str, str]


class ChunkWriter:
    """Builds the chunks of one streamed completion."""

    def __init__(self, job: Job, model: str, *, include_usage: bool) -> None:
        self.job = job
        self.model = model
        self.include_usage = include_usage

    def _payload(self, choices: list[dict[str, Any]], **extra: object) -> Sse:
        payload: dict[str, object] = {
            "id": self.job.id,
            "object": "chat.completion.chunk",
            "created": self.job.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = None
        payload.update(extra)
        return {"data": json.dumps(payload)}

    def chunk(self, delta: dict[str, str], finish: str | None = None, **extra: object) -> Sse:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return self._payload([choice], **extra)

    def role(self) -> Sse:
        return self.chunk({"role": "assistant", "content": ""})

    def event(self, event: JobEvent) -> Sse | None:
        if isinstance(event, TokenEvent):
            return self.chunk({event.channel: event.text}) if event.text else None
        if isinstance(event, ProgressEvent):
            return self.chunk({"reasoning_content": event.text()}, apportion=event.to_dict())
        if isinstance(event, CallEvent | QueueEvent):
            return self.chunk({"reasoning_content": event.text()})
        return None

    def ending(self, finish: str, usage: dict[str, int], info: dict[str, object]) -> list[Sse]:
        """The finish chunk, the usage chunk when asked for, and [DONE]."""
        if not self.include_usage:
            return [self.chunk({}, finish, apportion=info), {"data": "[DONE]"}]
        return [
            self.chunk({}, finish),
            self._payload([], usage=usage, apportion=info),
            {"data": "[DONE]"},
        ]

    @staticmethod
    def failure(exc: BaseException) -> Sse:
        # Mid-stream the status line has gone out: an error event is all that is left.
        _, body, _ = error_payload(exc)
        return {"data": body.model_dump_json()}


# How often a stream looks at the server's shutdown flag while it waits for its job.
SHUTDOWN_POLL_S = 0.25


def shutting_down(grace_s: float) -> ApiError:
    return ApiError(
        503,
        f"the server is shutting down: this answer was still running {grace_s:g} s after it "
        "was told to stop, and was cut short; send the request again",
        type="server_error",
        code="server_shutting_down",
    )


async def sse_events(
    runner: JobRunner,
    responses: Responses,
    job: Job,
    writer: ChunkWriter,
    first: JobEvent | None,
    *,
    shutdown: anyio.Event | None = None,
    grace_s: float = 0.0,
) -> AsyncIterator[Sse]:
    """The event stream of a streamed request, starting from its first event (None: the
    stream opened before the job said anything). Once `shutdown` is set, the job has
    `grace_s` more to finish before the stream ends with an error event."""
    try:
        yield writer.role()
        event = first
        ends_at: float | None = None
        while not isinstance(event, Finished):
            if event is not None:
                out = writer.event(event)
                if out is not None:
                    yield out
            if shutdown is not None and shutdown.is_set():
                ends_at = ends_at if ends_at is not None else time.monotonic() + grace_s
                if time.monotonic() >= ends_at:
                    yield writer.failure(shutting_down(grace_s))
                    return
            try:
                event = await runner.next_event(
                    job, within=None if shutdown is None else SHUTDOWN_POLL_S
                )
            except ApiError as e:
                yield writer.failure(e)
                return
        try:
            answer = await runner.result(job)
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
            content = responses.content(job, answer)
            if content:
                yield writer.chunk({"content": content})
        finish = responses.finish_reason(job, answer)
        usage = responses.usage(answer).model_dump()
        for out in writer.ending(finish, usage, responses.info(job, answer).model_dump()):
            yield out
    finally:
        # Normally a no-op (the job has ended); when the client went away mid-stream this
        # is what stops the generation, at its next token.
        job.stop()
