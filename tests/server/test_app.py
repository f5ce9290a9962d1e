"""The server through the official `openai` client, on a live uvicorn server: the symbolic route
(no model), real token streaming from SmolLM2-135M, models, health, metrics, multi-turn."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.config import Settings
from apportion.runtime import conversation_features
from apportion.server.app import create_app
from apportion.types import Message, Query
from server.support import FakeEngine, fake_core, live_server, serve_process

openai = pytest.importorskip("openai")

ARITHMETIC = [{"role": "user", "content": "What is 17*23+5?"}]


@pytest.fixture(scope="module")
def smol_url(settings: Settings) -> Iterator[str]:
    """A server whose default model is SmolLM2-135M (loaded on first use)."""
    config = settings.model_copy(update={"default_model": "smollm2-135m", "threads": 1})
    with live_server(create_app(config)) as url:
        yield url


@pytest.fixture(scope="module")
def client(smol_url: str) -> Any:
    return openai.OpenAI(base_url=f"{smol_url}/v1", api_key="unused", max_retries=0)


def _ext(obj: Any) -> dict[str, Any]:
    """The `apportion` extension object of a response or chunk."""
    extra = obj.model_extra or {}
    return dict(extra.get("apportion") or {})


def test_symbolic_route_through_the_openai_client(client: Any) -> None:
    resp = client.chat.completions.create(
        model="apportion-auto",
        messages=ARITHMETIC,
        extra_body={"apportion": {"return_ledger": True}},
    )
    assert resp.choices[0].message.content == "396"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 0 and resp.usage.completion_tokens == 0
    info = _ext(resp)
    assert (info["strategy"], info["intent"], info["route"]) == (
        "symbolic",
        "arithmetic",
        ["symbolic"],
    )
    # the solver was right every time it answered in the shipped policy's traces
    assert info["confidence"] == 0.95 and info["calibrated_confidence"] == 1.0
    ledger = info["ledger"]
    assert ledger["flops"] == 0
    assert [c["name"] for c in ledger["calls"]] == ["sympy"]
    assert ledger["cpu_s"] > 0


def test_ledger_calls_only_on_request(client: Any) -> None:
    resp = client.chat.completions.create(model="apportion-auto", messages=ARITHMETIC)
    info = _ext(resp)
    assert info["ledger"]["calls"] is None
    assert info["ledger"]["cpu_s"] > 0  # the totals are always there


def test_symbolic_route_streams_progress_then_answer(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model="apportion-auto",
            messages=ARITHMETIC,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "396"
    progress = [_ext(c) for c in chunks if _ext(c).get("event") == "progress"]
    assert progress and progress[0]["call"] == "sympy"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 0
    assert _ext(last)["strategy"] == "symbolic"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"


@pytest.mark.model
def test_direct_streams_real_tokens_and_matches_the_plain_reply(client: Any) -> None:
    question = [{"role": "user", "content": "Name three colors."}]
    chunks = list(
        client.chat.completions.create(
            model="direct",
            messages=question,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 1, "tokens must arrive one by one"
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 8 and usage.prompt_tokens > 5
    # Greedy decoding: the non-streamed reply is the same text and the same token counts.
    plain = client.chat.completions.create(model="direct", messages=question, max_tokens=8)
    assert plain.choices[0].message.content == "".join(deltas).strip()
    assert plain.usage.completion_tokens == usage.completion_tokens
    assert plain.usage.prompt_tokens == usage.prompt_tokens
    info = _ext(chunks[-1])
    assert info["strategy"] == "direct"
    assert info["ledger"]["flops"] > 2 * 134e6 * (usage.prompt_tokens + usage.completion_tokens)
    if usage.completion_tokens == 8:
        assert plain.choices[0].finish_reason == "length"


@pytest.mark.model
def test_model_id_routes_auto_on_that_model(client: Any) -> None:
    resp = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Hello there, how are you today?"}],
        max_tokens=6,
    )
    info = _ext(resp)
    assert info["intent"] == "chat" and info["strategy"] == "direct"
    assert resp.usage.completion_tokens >= 1
    assert _ext(resp)["ledger"]["prompt_tokens"] == resp.usage.prompt_tokens


def test_models_health_and_metrics(smol_url: str, client: Any) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"apportion-auto", "direct", "cot", "consistency", "smollm2-135m"} <= ids
    health = httpx.get(f"{smol_url}/healthz").json()
    assert health["status"] == "ok" and health["auth"] is False
    assert health["default_model"] == "smollm2-135m"
    client.chat.completions.create(model="apportion-auto", messages=ARITHMETIC)
    text = httpx.get(f"{smol_url}/metrics").text
    assert 'apportion_requests_total{outcome="ok",strategy="symbolic"}' in text
    assert "apportion_request_seconds_bucket" in text
    assert "apportion_request_flops_bucket" in text


def _count(metrics: str, prefix: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines() if ln.startswith(prefix))


def test_metrics_count_per_app(tmp_path: Path) -> None:
    """Each app has its own registry: a fresh app starts from zero."""
    core = fake_core(tmp_path)
    with live_server(create_app(core.settings, engine=core)) as url:
        before = _count(httpx.get(f"{url}/metrics").text, "apportion_requests_total")
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "auto", "messages": ARITHMETIC})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "396"
        after = _count(httpx.get(f"{url}/metrics").text, "apportion_requests_total")
    assert (before, after) == (0, 1)


# -- multi-turn -------------------------------------------------------------------------------

CLIPS = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."
FOLLOW_UP = "How many did she sell altogether?"
PROGRAM = (
    "```python\ndef solve():\n    april = 48\n    may = april // 2\n    return april + may\n```"
)


def test_routing_features_read_the_whole_conversation() -> None:
    alone = conversation_features(Query(FOLLOW_UP))
    history = (Message("user", CLIPS), Message("assistant", "Got it."))
    whole = conversation_features(Query(FOLLOW_UP, history=history))
    assert alone.intent != "math_word"  # alone, no numbers: not a word problem
    assert whole.intent == "math_word"
    # An expression in an earlier turn does not send a new question to the solver.
    earlier = (Message("user", "What is 17*23+5?"), Message("assistant", "396"))
    later = conversation_features(Query("Who wrote Hamlet?", history=earlier))
    assert not later.has_math_expression and later.intent != "arithmetic"


def test_multi_turn_routes_on_the_conversation_and_prompts_carry_it(tmp_path: Path) -> None:
    engine = FakeEngine(PROGRAM)
    core = fake_core(tmp_path, engine)
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": CLIPS},
        {"role": "assistant", "content": "Got it."},
        {"role": "user", "content": FOLLOW_UP},
    ]
    with live_server(create_app(core.settings, engine=core)) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "apportion-auto", "messages": conversation},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["apportion"]["intent"] == "math_word"
        assert body["apportion"]["route"][0] == "program"
        assert body["choices"][0]["message"]["content"] == "72"
        prompt = engine.calls[0]
        # the strategy's own system message, then the conversation, then the question
        assert [m.role for m in prompt] == ["system", "system", "user", "assistant", "user"]
        assert prompt[2].content == CLIPS and prompt[-1].content == FOLLOW_UP
        # The last message alone is no word problem; the rule ladder answers it directly.
        alone = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "apportion-auto", "messages": [conversation[-1]]},
            timeout=60,
        ).json()
        assert alone["apportion"]["intent"] not in ("math_word", "arithmetic")
        assert alone["apportion"]["route"] == ["direct"]


# -- the command ------------------------------------------------------------------------------


@pytest.mark.model
def test_serve_command_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`serve` as a process: loads the default model at start, serves, exits on SIGTERM."""
    with serve_process(
        "--model", "smollm2-135m", "--threads", "1", "--keys-db", str(tmp_path / "keys.sqlite3"),
        "--log-level", "warning",
    ) as (url, proc):  # fmt: skip
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "apportion-auto", "messages": ARITHMETIC},
            timeout=60,
        )
        assert r.json()["choices"][0]["message"]["content"] == "396"
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal it caught
    assert proc.returncode in (0, 128 + signal.SIGTERM)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "loading smollm2-135m" in err and "API keys off" in err
    assert "Traceback" not in err


def _long_stream(url: str) -> Iterator[Any]:
    """The chunks of a streamed story of up to 400 tokens from SmolLM2 on `url`."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    return iter(client.chat.completions.create(
        model="direct",
        messages=[{"role": "user", "content": "Write a long story about a dragon and a king."}],
        max_tokens=400,
        stream=True,
    ))  # fmt: skip


@pytest.mark.model
def test_a_sigint_to_the_whole_process_group_lets_open_streams_finish(tmp_path: Path) -> None:
    """`kill -INT -PGID` (a process manager, a test harness) reaches the server directly and
    through its supervisor: uvicorn takes the second SIGINT as "force quit" and cuts open
    streams, so the copy must be taken as the same interrupt, and the shutdown stay graceful."""
    import os

    log = tmp_path / "serve.log"
    with serve_process(
        "--model", "smollm2-135m", "--threads", "1", "--keys-db", str(tmp_path / "keys.sqlite3"),
        log=log,
    ) as (url, proc):  # fmt: skip
        chunks = _long_stream(url)
        first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
        os.killpg(proc.pid, signal.SIGINT)
        rest = list(chunks)  # raises if the stream is cut
        proc.wait(timeout=60)
    said = log.read_text(errors="replace")
    assert first.choices[0].delta.content
    reasons = [c.choices[0].finish_reason for c in rest if c.choices]
    assert reasons[-1] in ("stop", "length"), (rest[-3:], said)
    assert "Waiting for connections to close" in said  # the stream was open at the interrupt
    assert proc.returncode in (0, 128 + signal.SIGINT) and "Traceback" not in said, said


@pytest.mark.model
def test_a_stream_still_running_after_the_shutdown_grace_ends_with_an_error(
    tmp_path: Path,
) -> None:
    """With no grace, a stream open at SIGTERM ends at once, with an error event the official
    client raises, not silently (a client would take the partial answer for the whole)."""
    with serve_process(
        "--model", "smollm2-135m", "--threads", "1", "--keys-db", str(tmp_path / "keys.sqlite3"),
        "--shutdown-grace", "0",
    ) as (url, proc):  # fmt: skip
        chunks = _long_stream(url)
        next(c for c in chunks if c.choices and c.choices[0].delta.content)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            list(chunks)
        proc.wait(timeout=60)
