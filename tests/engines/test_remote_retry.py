"""Retries, backoff and fallback of remote engines, against a scripted local HTTP server (the
failures a real server rarely gives on cue: 429 with Retry-After, 5xx) and a fake clock.
The same against a real llama.cpp server that is stopped and restarted is in
test_openai_http.py."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines.fallback import FallbackEngine, fallback_chain
from apportion.engines.openai_http import OpenAIHttpEngine, RetryPolicy, retry_after_s
from apportion.engines.pool import ReplicaPool
from apportion.errors import EngineError, EngineUnavailableError, UsageError
from apportion.ledger import Ledger
from apportion.runtime import Engine
from apportion.strategies.base import RunContext
from apportion.types import Message
from servers import LoopbackChatServer, free_port, sse

HI = [Message("user", "hi")]


# --------------------------------------------------------------------------- test doubles


@dataclass
class FakeClock:
    """Time that passes only when the engine sleeps."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "hello"
    # A stream that stops after its content, with no finish_reason and no [DONE] (what a
    # client sees of a server that shut down mid-reply).
    cut: bool = False


class ScriptedServer(LoopbackChatServer):
    """A real HTTP server on loopback that answers /v1/chat/completions from a script (the
    last reply repeats), and counts the requests it saw."""

    def respond(self, reply: Reply, body: dict[str, Any]) -> tuple[int, str, str, dict[str, str]]:
        if reply.status != 200:
            payload = json.dumps({"error": {"message": f"scripted {reply.status}"}})
            return reply.status, "application/json", payload, reply.headers
        if body.get("stream"):
            chunks = [
                {"choices": [{"delta": {"content": word}, "finish_reason": None}]}
                for word in reply.text.split(" ")
            ]
            if not reply.cut:
                chunks.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
            return 200, "text/event-stream", sse(chunks, done=not reply.cut), reply.headers
        payload = json.dumps({
            "choices": [{"message": {"content": reply.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        })  # fmt: skip
        return 200, "application/json", payload, reply.headers


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def start(*script: Reply) -> ScriptedServer:
        server = ScriptedServer(list(script))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def config(base: str, **extra: Any) -> RemoteEngineConfig:
    fields: dict[str, Any] = dict(id="remote", base_url=base, model="m", params=1e8,
                                  usd_per_m_prompt=1.0, usd_per_m_completion=2.0)  # fmt: skip
    fields.update(extra)
    return RemoteEngineConfig(**fields)


def engine(base: str, clock: FakeClock, **extra: Any) -> OpenAIHttpEngine:
    return OpenAIHttpEngine(
        config(base, **extra), sleep=clock.sleep, clock=clock.clock, rng=random.Random(7)
    )


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


# --------------------------------------------------------------------------- the schedule


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=8, base_delay_s=0.5, max_delay_s=4.0, max_wait_s=1e9)
    rng = random.Random(1)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        pauses = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= p <= ceiling for p in pauses)
        assert max(pauses) - min(pauses) > ceiling / 4  # jittered, not one fixed value


def test_no_retry_beyond_max_attempts_or_max_wait() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=8.0, max_wait_s=10.0)
    rng = random.Random(0)
    assert policy.pause_s(1, 0.0, None, rng) is not None
    assert policy.pause_s(3, 0.0, None, rng) is None  # the third attempt was the last
    assert policy.pause_s(1, 9.5, None, rng) is None  # a pause of 0.5..1 s ends past 10 s
    assert policy.pause_s(1, 0.0, 4.0, rng) == 4.0  # the server's Retry-After, as given
    assert policy.pause_s(1, 7.0, 4.0, rng) is None  # ... unless it ends past max_wait


def test_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_s(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    date = format_datetime(now + timedelta(seconds=20), usegmt=True)
    assert retry_after_s(httpx.Headers({"Retry-After": date}), now=now) == 20.0
    assert retry_after_s(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Headers({})) is None


# --------------------------------------------------------------------------- one engine


def test_5xx_is_retried_with_backoff_until_it_succeeds(scripted: Any) -> None:
    server = scripted(Reply(503), Reply(502), Reply(500), Reply(200, text="ok"))
    clock = FakeClock()
    eng = engine(server.base, clock, retry_base_delay_s=1.0, retry_max_delay_s=8.0)
    (out,) = eng.generate(HI, max_tokens=4)
    assert out.text == "ok" and out.served_by is None
    assert len(server.requests) == 4
    assert len(clock.sleeps) == 3
    for pause, ceiling in zip(clock.sleeps, [1.0, 2.0, 4.0], strict=True):
        assert ceiling / 2 <= pause <= ceiling


def test_429_waits_as_long_as_retry_after_says(scripted: Any) -> None:
    server = scripted(Reply(429, {"Retry-After": "3"}), Reply(200, text="ok"))
    clock = FakeClock()
    (out,) = engine(server.base, clock).generate(HI, max_tokens=4)
    assert out.text == "ok"
    assert clock.sleeps == [3.0]


def test_a_retry_after_beyond_the_max_wait_fails_at_once(scripted: Any) -> None:
    server = scripted(Reply(429, {"Retry-After": "120"}), Reply(200))
    clock = FakeClock()
    with pytest.raises(EngineUnavailableError, match=r"429.*\(1 attempt\)"):
        engine(server.base, clock, retry_max_wait_s=30).generate(HI, max_tokens=4)
    assert clock.sleeps == [] and len(server.requests) == 1


def test_gives_up_after_max_attempts(scripted: Any) -> None:
    server = scripted(Reply(500))
    clock = FakeClock()
    with pytest.raises(EngineUnavailableError, match="HTTP 500.*3 attempts") as caught:
        engine(server.base, clock, max_attempts=3).generate(HI, max_tokens=4)
    assert "fallback" in str(caught.value)  # the hint names the way out
    assert len(server.requests) == 3 and len(clock.sleeps) == 2


def test_a_refused_connection_is_retried_then_unavailable() -> None:
    clock = FakeClock()
    with pytest.raises(EngineUnavailableError, match="unreachable.*4 attempts"):
        engine(dead_url(), clock, timeout_s=2).generate(HI, max_tokens=4)
    assert len(clock.sleeps) == 3


def test_a_rejected_request_is_not_retried(scripted: Any) -> None:
    server = scripted(Reply(400), Reply(200))
    clock = FakeClock()
    with pytest.raises(EngineError, match="HTTP 400") as caught:
        engine(server.base, clock).generate(HI, max_tokens=4)
    assert not isinstance(caught.value, EngineUnavailableError)
    assert len(server.requests) == 1 and clock.sleeps == []


def test_stream_retries_before_its_first_piece(scripted: Any) -> None:
    server = scripted(Reply(503, {"Retry-After": "1"}), Reply(200, text="one two three"))
    clock = FakeClock()
    gen = engine(server.base, clock).stream(HI, max_tokens=8)
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as done:
        completion = done.value
    assert pieces == ["one", "two", "three"] and completion.text == "onetwothree"
    assert clock.sleeps == [1.0]


def test_a_stream_cut_short_is_a_failure_not_a_reply(scripted: Any) -> None:
    """A server that goes away mid-reply ends the body early; the pieces so far are not the
    reply, and a pool takes the call to another replica, which finishes it."""
    cut = scripted(Reply(text="one two three", cut=True))
    gen = engine(cut.base, FakeClock()).stream(HI, max_tokens=8)
    pieces = []
    with pytest.raises(EngineUnavailableError, match="without a finish_reason"):
        while True:
            pieces.append(next(gen))
    assert pieces == ["one", "two", "three"]
    whole = scripted(Reply(text="one two three"))
    pool = ReplicaPool(config(cut.base, base_url=None, base_urls=[cut.base, whole.base]))
    for _ in range(2):  # whichever replica is tried first, the reply is the whole one
        gen = pool.stream(HI, max_tokens=8)
        try:
            while True:
                next(gen)
        except StopIteration as finished:
            assert finished.value.text == "onetwothree"


# --------------------------------------------------------------------------- fallback


def charged(eng: Any, ledger: Ledger, *, stream: bool = False) -> str:
    """Run one call through a RunContext (streamed when asked) and return the engine the ledger
    named for it."""
    tokens: list[str] = []
    ctx = RunContext.over(
        engine_for=lambda _id: eng, default_model="remote", ledger=ledger,
        on_token=tokens.append if stream else None,
    )  # fmt: skip
    (out,) = ctx.generate(HI, max_tokens=8)
    assert out.text
    return ledger.totals().calls[-1].name


def test_a_failed_request_goes_to_the_fallback_and_the_ledger_names_it(scripted: Any) -> None:
    backup = scripted(Reply(200, text="from backup"))
    clock = FakeClock()
    primary = engine(dead_url(), clock, max_attempts=2, timeout_s=2)
    backup_engine = OpenAIHttpEngine(config(backup.base, id="backup", usd_per_m_prompt=10.0))
    eng = FallbackEngine(primary, lambda: backup_engine, fallback_id="backup", cooldown_s=60,
                         clock=clock.clock)  # fmt: skip
    ledger = Ledger()
    assert charged(eng, ledger) == "backup"
    (call,) = ledger.totals().calls
    assert call.cost_usd == pytest.approx((7 * 10.0 + 2 * 2.0) / 1e6)  # the backup's price
    assert len(clock.sleeps) == 1 and eng.is_down()
    # While down, requests go straight to the fallback: no retries, no waiting.
    assert charged(eng, ledger, stream=True) == "backup"
    assert len(clock.sleeps) == 1 and len(backup.requests) == 2


def test_the_primary_serves_again_once_the_cooldown_is_over(scripted: Any) -> None:
    primary_server = scripted(Reply(503), Reply(200, text="primary again"))
    backup = scripted(Reply(200, text="from backup"))
    clock = FakeClock()
    primary = engine(primary_server.base, clock, max_attempts=1)
    backup_engine = OpenAIHttpEngine(config(backup.base, id="backup"))
    eng = FallbackEngine(primary, lambda: backup_engine, fallback_id="backup", cooldown_s=30,
                         clock=clock.clock)  # fmt: skip
    ledger = Ledger()
    assert charged(eng, ledger) == "backup"
    clock.now += 10
    assert charged(eng, ledger) == "backup" and len(primary_server.requests) == 1
    clock.now += 25
    assert not eng.is_down()
    assert charged(eng, ledger) == "remote"
    assert [c.name for c in ledger.totals().calls] == ["backup", "backup", "remote"]


def test_when_the_fallback_fails_too_both_are_named() -> None:
    clock = FakeClock()
    primary = engine(dead_url(), clock, max_attempts=1, timeout_s=2)
    backup = engine(dead_url(), clock, id="backup", max_attempts=1, timeout_s=2)
    eng = FallbackEngine(primary, lambda: backup, fallback_id="backup", clock=clock.clock)
    with pytest.raises(EngineUnavailableError, match="'remote'.*fallback 'backup' failed too"):
        eng.generate(HI, max_tokens=4)


def test_engine_builds_the_fallback_from_config(scripted: Any) -> None:
    backup = scripted(Reply(200, text="from backup"))
    settings = Settings(engines=[
        config(dead_url(), id="main", fallback="backup", max_attempts=1, timeout_s=2),
        config(backup.base, id="backup"),
    ])  # fmt: skip
    apportion = Engine(settings=settings)
    answer = apportion.ask("Say hi.", strategy="direct", model="main")
    assert answer.answer == "from backup"
    assert [c.name for c in answer.ledger.calls] == ["backup"]
    apportion.close()


def test_a_fallback_loop_is_a_configuration_error() -> None:
    assert fallback_chain({"a": "b", "b": "c", "c": None}, "a") == ["a", "b", "c"]
    with pytest.raises(UsageError, match="a -> b -> a"):
        fallback_chain({"a": "b", "b": "a"}, "a")
    settings = Settings(engines=[
        config(dead_url(), id="a", fallback="b"), config(dead_url(), id="b", fallback="a"),
    ])  # fmt: skip
    with pytest.raises(UsageError, match="loop"):
        Engine(settings=settings).engine_for("a")
