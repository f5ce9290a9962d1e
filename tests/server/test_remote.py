"""The server routing chat completions to a remote OpenAI-compatible engine: llama-cpp-python's
own server running SmolLM2-135M, started here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.server.app import ServerOptions, create_app
from server.support import live_server
from servers import llama_cpp_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def client(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    with llama_cpp_server(path) as base:
        remote = RemoteEngineConfig(
            id="remote-smol", base_url=base, model="smol", params=134.5e6, n_layers=30,
            d_model=576, usd_per_m_prompt=0.5, usd_per_m_completion=1.5,
        )  # fmt: skip
        # Nothing local is served: the default model is the remote one.
        config = Settings(
            home=tmp_path_factory.mktemp("remote"), default_model="remote-smol", engines=[remote]
        )
        # queue_depth=0: a remote engine never waits for the local slot
        app = create_app(config, options=ServerOptions(queue_depth=0))
        with live_server(app) as url:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_chat_completion_through_the_remote_engine(client: Any) -> None:
    resp = client.chat.completions.create(
        model="remote-smol",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        extra_body={"apportion": {"strategy": "direct", "return_ledger": True}},
    )
    assert resp.choices[0].message.content
    info = resp.model_extra["apportion"]
    (call,) = info["ledger"]["calls"]
    assert call["name"] == "remote-smol" and call["detail"] == "direct"
    assert call["prompt_tokens"] == resp.usage.prompt_tokens > 5
    assert 1 <= call["completion_tokens"] == resp.usage.completion_tokens <= 8
    expected_usd = (call["prompt_tokens"] * 0.5 + call["completion_tokens"] * 1.5) / 1e6
    assert call["cost_usd"] == pytest.approx(expected_usd)
    assert call["flops"] > 2 * 134.5e6 * (call["prompt_tokens"] + call["completion_tokens"])


def test_streaming_through_the_remote_engine_counts_its_own_tokens(client: Any) -> None:
    """llama.cpp's server sends no usage when streaming: the tokens are counted here."""
    chunks = list(
        client.chat.completions.create(
            model="direct",
            messages=[{"role": "user", "content": "Name three colors."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(deltas) <= 8
    assert usage.prompt_tokens > 0
    assert chunks[-1].model_extra["apportion"]["ledger"]["cost_usd"] > 0


def test_stop_reaches_the_remote_engine(client: Any) -> None:
    question = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = client.chat.completions.create(model="direct", messages=question, max_tokens=40)
    text = free.choices[0].message.content
    # a word from the middle of the free reply (greedy decoding: the same reply)
    stop = next(w for w in text.split()[1:] if text.index(w) > 0)
    cut = client.chat.completions.create(
        model="direct", messages=question, max_tokens=40, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"
    # the remote server stopped generating there: fewer tokens were charged
    assert cut.usage.completion_tokens < free.usage.completion_tokens
