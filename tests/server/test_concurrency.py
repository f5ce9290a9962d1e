"""Queueing for the local engine (429 + Retry-After when full), concurrency for remote ones,
cancellation when the client goes away, and request timeouts."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import httpx

from apportion.server.app import ServerOptions, create_app
from server.support import FakeEngine, assert_openai_error, fake_core, live_server, wait_until

CHAT = "/v1/chat/completions"
WORDS = " ".join(f"w{i}" for i in range(400))


def _body(model: str = "direct", max_tokens: int = 40, stream: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _metric(url: str, prefix: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_full_local_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    engine = FakeEngine(WORDS, delay_s=0.25)  # 40 tokens: about 10 s per request, so they overlap
    core = fake_core(tmp_path, engine)
    app = create_app(core.settings, engine=core, options=ServerOptions(queue_depth=1))
    with live_server(app) as url:
        results: list[httpx.Response] = []

        def call() -> None:
            results.append(httpx.post(url + CHAT, json=_body(), timeout=60))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        assert wait_until(
            lambda: (
                httpx.get(url + "/healthz").json()["local_queue"]
                == {"running": 1, "waiting": 1, "depth": 1}
            ),
            timeout_s=30,
        )
        third = httpx.post(url + CHAT, json=_body(), timeout=60)
        error = assert_openai_error(third, 429)
        assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
        assert int(third.headers["Retry-After"]) >= 1
        # The solver needs no local model: it is answered while the queue is full.
        math = {"model": "apportion-auto", "messages": [{"role": "user", "content": "6*7"}]}
        assert (
            httpx.post(url + CHAT, json=math, timeout=60).json()["choices"][0]["message"]["content"]
            == "42"
        )
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200]
        assert engine.max_active == 1  # one at a time on the local engine
        assert _metric(url, 'apportion_requests_total{outcome="rejected"') == 1


def test_remote_engines_run_concurrently(tmp_path: Path) -> None:
    engine = FakeEngine(WORDS, model_id="remote-fake", delay_s=0.05, local=False)
    core = fake_core(tmp_path, engine)
    app = create_app(core.settings, engine=core, options=ServerOptions(queue_depth=0))
    with live_server(app) as url:
        results: list[int] = []

        def call() -> None:
            results.append(
                httpx.post(url + CHAT, json=_body(max_tokens=20), timeout=60).status_code
            )

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == [200, 200, 200]
    assert engine.max_active == 3


def test_client_disconnect_stops_a_streamed_generation(tmp_path: Path) -> None:
    engine = FakeEngine(WORDS, delay_s=0.05)
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        received = 0
        with httpx.stream("POST", url + CHAT, json=_body(max_tokens=300, stream=True)) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: ") and '"content": "' in line and "role" not in line:
                    received += 1
                if received == 3:
                    break  # closes the connection
        assert wait_until(lambda: engine.finished.is_set() and engine.active == 0)
        generated = engine.tokens_generated
        assert generated < 60, f"generation went on after the client left ({generated} tokens)"
        assert wait_until(lambda: _metric(url, 'apportion_requests_total{outcome="cancelled"') == 1)
        # the partial call was charged, and no more than was generated
        charged = _metric(url, 'apportion_tokens_total{kind="completion",strategy="direct"}')
        assert 3 <= charged <= generated
        # the local slot was given back: the next request runs
        assert httpx.post(url + CHAT, json=_body(max_tokens=3), timeout=30).status_code == 200


def test_client_disconnect_stops_a_plain_request(tmp_path: Path) -> None:
    engine = FakeEngine(WORDS, delay_s=0.05)
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        with contextlib.suppress(httpx.ReadTimeout):  # the client gives up and hangs up
            httpx.post(url + CHAT, json=_body(max_tokens=300), timeout=0.6)
        assert wait_until(lambda: engine.tokens_generated > 0 and engine.active == 0)
        assert engine.tokens_generated < 60
        assert wait_until(lambda: _metric(url, 'apportion_requests_total{outcome="cancelled"') == 1)


def test_requests_time_out_with_504_and_stop(tmp_path: Path) -> None:
    engine = FakeEngine(WORDS, delay_s=0.05)
    core = fake_core(tmp_path, engine)
    app = create_app(core.settings, engine=core, options=ServerOptions(request_timeout_s=0.5))
    with live_server(app) as url:
        r = httpx.post(url + CHAT, json=_body(max_tokens=300), timeout=30)
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "timeout"
        assert wait_until(lambda: engine.active == 0)
        assert engine.tokens_generated < 40
        # streamed: the timeout arrives as an error event after the tokens so far
        with httpx.stream("POST", url + CHAT, json=_body(max_tokens=300, stream=True)) as resp:
            events = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert json.loads(events[-1])["error"]["type"] == "timeout"
        assert wait_until(lambda: _metric(url, 'apportion_requests_total{outcome="timeout"') == 2)


def test_cot_streams_reasoning_then_the_answer(tmp_path: Path) -> None:
    engine = FakeEngine("Six sevens are 42. The answer is 42.")
    core = fake_core(tmp_path, engine)
    body = _body(model="cot", stream=True)
    with (
        live_server(create_app(core.settings, engine=core)) as url,
        httpx.stream("POST", url + CHAT, json=body) as resp,
    ):
        chunks = [
            json.loads(ln[6:])
            for ln in resp.iter_lines()
            if ln.startswith("data: ") and ln != "data: [DONE]"
        ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert reasoning == "Six sevens are 42. The answer is 42."
    assert content == "42"
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-1]["apportion"]["strategy"] == "cot"


def test_multi_sample_strategies_stream_progress_then_the_answer(tmp_path: Path) -> None:
    engine = FakeEngine("The answer is 7.")
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        body = _body(model="consistency:n=4,rule=fixed", stream=True)
        with httpx.stream("POST", url + CHAT, json=body) as resp:
            chunks = [
                json.loads(ln[6:])
                for ln in resp.iter_lines()
                if ln.startswith("data: ") and ln != "data: [DONE]"
            ]
    progress = [c["apportion"] for c in chunks if c.get("apportion", {}).get("event") == "progress"]
    assert [p["calls"] for p in progress] == [1, 2, 3, 4]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [x for x in contents if x] == ["7"]  # no sample's tokens leak into the content
    last = chunks[-1]
    assert last["usage"]["completion_tokens"] == 16
    assert last["apportion"]["confidence"] == 1.0
    assert last["apportion"]["calibrated_confidence"] is None  # asked for by name: no policy
