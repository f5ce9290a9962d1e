"""Malformed and unservable requests get 4xx with OpenAI-style error bodies, never a 500;
engine failures and unexpected ones are a 503 with the same body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.config import RemoteEngineConfig
from apportion.server.app import ServerOptions, create_app
from server.support import (
    FakeEngine,
    assert_openai_error,
    fake_core,
    free_port,
    live_server,
)

URL_PATH = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("errors")
    dead = RemoteEngineConfig(
        id="dead-remote", base_url=f"http://127.0.0.1:{free_port()}/v1", model="x", params=1e8,
        timeout_s=2,
    )  # fmt: skip
    core = fake_core(
        tmp,
        FakeEngine("one two three four five six seven eight nine ten"),
        FakeEngine(model_id="broken", fail_with=RuntimeError("boom")),
        engines=[dead],
    )
    options = ServerOptions(max_body_bytes=64_000, max_tokens_limit=256)
    with live_server(create_app(core.settings, engine=core, options=options)) as base:
        yield base


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + URL_PATH, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION}, "model"),  # missing model
        ({"model": "direct"}, "messages"),  # missing messages
        ({"model": "direct", "messages": []}, "messages"),  # empty messages
        ({"model": "direct", "messages": "hi"}, "messages"),  # wrong type
        ({"model": 7, "messages": QUESTION}, "model"),
        ({"model": "direct", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"model": "direct", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "direct", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "direct", "messages": QUESTION, "max_tokens": -5}, "max_tokens"),
        ({"model": "direct", "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": "direct", "messages": QUESTION, "max_tokens": "many"}, "max_tokens"),
        ({"model": "direct", "messages": QUESTION, "max_tokens": 10**9}, "max_tokens"),
        ({"model": "direct", "messages": QUESTION, "temperature": 7}, "temperature"),
        ({"model": "direct", "messages": QUESTION, "n": 3}, "n"),
        ({"model": "direct", "messages": QUESTION, "stream": "often"}, "stream"),
        ({"model": "direct", "messages": QUESTION, "seed": -1}, "seed"),
        ({"model": "direct", "messages": QUESTION, "apportion": {"budgt": {}}}, "apportion.budgt"),
        (
            {"model": "direct", "messages": QUESTION, "apportion": {"budget": {"flops": -1}}},
            "apportion.budget.flops",
        ),
        (
            {"model": "cot", "messages": QUESTION, "apportion": {"strategy": "direct"}},
            "apportion.strategy",
        ),
        (
            {"model": "apportion-auto", "messages": QUESTION, "apportion": {"strategy": "nope"}},
            "apportion.strategy",
        ),
        ({"model": "consistency:n=lots", "messages": QUESTION}, "model"),
        ({"model": "consistency:bogus=1", "messages": QUESTION}, "model"),
        ({"model": "consistency", "messages": QUESTION, "temperature": 0}, "temperature"),
        ({"model": "consistency:n=100000,rule=fixed", "messages": QUESTION}, "model"),
        ({"model": "cot:max_tokens=1000", "messages": QUESTION}, "model"),  # over the 256 limit
        ({"model": "cot:temperature=nan", "messages": QUESTION}, "model"),
        (
            {
                "model": "apportion-auto",
                "messages": QUESTION,
                "apportion": {"strategy": "rag:k=9999"},
            },
            "apportion.strategy",
        ),
        (
            {"model": "direct", "messages": [*QUESTION, {"role": "assistant", "content": "Hi"}]},
            "messages",
        ),
    ],
)
def test_malformed_requests_get_400(url: str, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(post(url, json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_strategy_parameters_are_bounded_before_any_work(tmp_path: Path) -> None:
    engine = FakeEngine()
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as base:
        body = {"model": "consistency:n=100000,rule=fixed", "messages": QUESTION}
        error = assert_openai_error(post(base, json=body), 400)
        assert error["code"] == "invalid_strategy"
        assert "consistency:n must be between 1 and 64, got 100000" in error["message"]
        streamed = post(base, json={**body, "stream": True})
        assert_openai_error(streamed, 400)
        # refused before the job started: the model was never called, and nothing is queued
        assert engine.calls == []
        assert httpx.get(base + "/healthz").json()["local_queue"]["running"] == 0


def test_bad_json_and_non_objects(url: str) -> None:
    headers = {"content-type": "application/json"}
    error = assert_openai_error(post(url, content=b'{"model": "direct", ', headers=headers), 400)
    assert error["code"] == "invalid_json"
    assert_openai_error(post(url, content=b"[1, 2]", headers=headers), 400)
    assert_openai_error(post(url, content=b"null", headers=headers), 400)
    assert_openai_error(post(url, content=b"", headers=headers), 400)
    assert_openai_error(
        post(url, content=b'{"model": "direct"}', headers={"content-type": "text/plain"}), 400
    )
    assert_openai_error(post(url, content=b"\xff\xfe garbage", headers=headers), 400)


def test_empty_question_is_400(url: str) -> None:
    error = assert_openai_error(
        post(url, json={"model": "direct", "messages": [{"role": "user", "content": "  "}]}), 400
    )
    assert "empty" in error["message"] and error["param"] == "messages"


def test_unknown_model_is_404_listing_the_valid_ones(url: str) -> None:
    error = assert_openai_error(post(url, json={"model": "gpt-17", "messages": QUESTION}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for valid in ("apportion-auto", "direct", "consistency", "fake"):
        assert valid in error["message"]


def test_strategy_naming_an_unservable_model_is_refused(url: str) -> None:
    """Strategy parameters cannot make the server open a file or pull a model."""
    for model in ("direct:model=/etc/passwd", "direct:model=qwen2.5-coder-1.5b"):
        error = assert_openai_error(post(url, json={"model": model, "messages": QUESTION}), 404)
        assert error["code"] == "model_not_found"


def test_huge_bodies_get_413(url: str) -> None:
    big = {"model": "direct", "messages": [{"role": "user", "content": "x" * 100_000}]}
    error = assert_openai_error(post(url, json=big), 413)
    assert error["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "direct", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}]}'

    assert_openai_error(
        post(url, content=chunked(), headers={"content-type": "application/json"}), 413
    )


def test_budget_too_small_is_400_streamed_or_not(url: str) -> None:
    body = {"model": "direct", "messages": QUESTION, "apportion": {"budget": {"flops": 1}}}
    error = assert_openai_error(post(url, json=body), 400)
    assert error["code"] == "budget_too_small" and error["param"] == "apportion.budget"
    assert "FLOPs" in error["message"]
    error = assert_openai_error(post(url, json={**body, "stream": True}), 400)
    assert error["code"] == "budget_too_small"


def test_a_budget_that_allows_no_model_still_allows_the_solver(url: str) -> None:
    body = {
        "model": "apportion-auto",
        "messages": [{"role": "user", "content": "What is 17*23+5?"}],
        "apportion": {"budget": {"flops": 0}},
    }
    r = post(url, json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "396"


def test_wrong_method_and_path(url: str) -> None:
    assert_openai_error(httpx.get(url + URL_PATH), 405)
    assert_openai_error(httpx.get(url + "/v1/nothing-here"), 404)


def test_engine_failures_are_503_with_the_same_body(url: str) -> None:
    r = post(url, json={"model": "dead-remote", "messages": QUESTION, "max_tokens": 4})
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["error"]["type"] == "engine_error" and "unreachable" in body["error"]["message"]


def test_unexpected_errors_are_a_clean_503_never_a_500(url: str) -> None:
    r = post(url, json={"model": "broken", "messages": QUESTION, "max_tokens": 4})
    assert r.status_code == 503
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "server_error",
        "internal_error",
        None,
    )
    assert "RuntimeError" in error["message"] and "boom" not in error["message"]
    streamed = post(url, json={"model": "broken", "messages": QUESTION, "stream": True})
    assert streamed.status_code == 503


def test_refusals_are_counted_in_metrics(url: str) -> None:
    post(url, json={"model": "direct"})
    text = httpx.get(url + "/metrics").text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('apportion_requests_total{outcome="invalid"')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_temperature_reaches_strategies_that_take_one(tmp_path: Path) -> None:
    engine = FakeEngine("Reasoning. The answer is 4.")
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as base:
        r = httpx.post(
            base + URL_PATH,
            json={"model": "cot", "messages": QUESTION, "temperature": 0.5},
            timeout=30,
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["apportion"]["strategy"] == "cot:temperature=0.5"
    assert body["choices"][0]["message"]["content"] == "4"
    assert body["choices"][0]["message"]["reasoning_content"] == "Reasoning. The answer is 4."
