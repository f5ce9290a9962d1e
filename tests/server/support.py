"""Helpers for the server tests: a live uvicorn server on a free 127.0.0.1 port, a scripted
streaming engine with counters, and llama-cpp-python's own server for remote-engine tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from apportion.config import Settings
from apportion.engines.base import GenerationCancelled
from apportion.ledger import ModelCost
from apportion.router.policy import RulePolicy
from apportion.runtime import Engine
from apportion.types import Completion, Message
from servers import free_port
from servers import serve_process as serve_process


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class FakeEngine:
    """Streams `reply` one word per token, `delay_s` apart, and counts what it generated.

    A test double for server plumbing (queueing, cancellation, errors); the model-backed
    tests use real engines.
    """

    def __init__(
        self,
        reply: str | Callable[[Sequence[Message]], str] = "alpha beta gamma delta",
        *,
        model_id: str = "fake",
        delay_s: float = 0.0,
        local: bool = True,
        params: float = 1e6,
        fail_with: Exception | None = None,
    ) -> None:
        self.reply = reply
        self.model_id = model_id
        self.cost = ModelCost(model_id, params=params, local=local)
        self.context_size = 4096
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.calls: list[list[Message]] = []
        # the stop sequences each call was given (this engine ignores them: the server's own
        # cut is what tests see)
        self.stops: list[tuple[str, ...]] = []
        self.tokens_generated = 0
        self.active = 0
        self.max_active = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 3 for m in messages)

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
        out = []
        for _ in range(n):
            gen = self.stream(messages, max_tokens=max_tokens, stop=stop)
            try:
                while True:
                    next(gen)
            except StopIteration as done:
                out.append(done.value)
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
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(list(messages))
        self.stops.append(tuple(stop or ()))
        text = self.reply(messages) if callable(self.reply) else self.reply
        words = text.split(" ")
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.finished.clear()
        pieces: list[str] = []
        finish = "length" if len(words) > max_tokens else "stop"
        try:
            for i, word in enumerate(words[:max_tokens]):
                time.sleep(self.delay_s)
                with self._lock:
                    self.tokens_generated += 1
                piece = word if i == 0 else " " + word
                pieces.append(piece)
                try:
                    yield piece
                except GenerationCancelled:
                    finish = "cancelled"
                    break
        finally:
            with self._lock:
                self.active -= 1
            self.finished.set()
        return Completion(
            "".join(pieces), self.count_tokens(messages), len(pieces), finish_reason=finish
        )

    def close(self) -> None:
        pass


def fake_settings(tmp_path: Path, default_model: str = "fake", **extra: Any) -> Settings:
    """Settings whose home is a temp dir (no catalogue model is pulled there)."""
    return Settings(home=tmp_path, default_model=default_model, **extra)


def fake_core(tmp_path: Path, *engines: FakeEngine, **extra: Any) -> Engine:
    """An Engine serving only the given fakes; the first is the default model. Routing uses
    the rule ladders, so these tests do not move when the shipped policy is recalibrated."""
    engines = engines or (FakeEngine(),)
    core = Engine(
        settings=fake_settings(tmp_path, engines[0].model_id, **extra), policy=RulePolicy()
    )
    for engine in engines:
        core.register(engine)
    return core


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def assert_openai_error(resp: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """An OpenAI-style error body, and never a server error."""
    assert resp.status_code < 500, resp.text
    if status is not None:
        assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)
