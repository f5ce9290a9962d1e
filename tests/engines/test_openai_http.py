"""The HTTP engine against llama-cpp-python's own OpenAI-compatible server, started here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.engines.openai_http import OpenAIHttpEngine
from apportion.errors import EngineError
from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.direct import Direct
from apportion.types import Message, Query
from servers import free_port, llama_cpp_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with llama_cpp_server(catalogue.resolve("smollm2-135m", settings.models_dir)) as base:
        yield base


def _config(base: str, **extra: object) -> RemoteEngineConfig:
    return RemoteEngineConfig(
        id="remote-smol", base_url=base, model="smol", params=134.5e6, n_layers=30, d_model=576,
        usd_per_m_prompt=0.5, usd_per_m_completion=1.5, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_generate_charges_the_servers_usage(server: str) -> None:
    engine = OpenAIHttpEngine(_config(server))
    ledger = Ledger()
    ctx = RunContext(engine_for=lambda _id: engine, default_model="remote-smol", ledger=ledger)
    attempt = Direct(max_tokens=16).run(Query("Say hello."), ctx)
    assert attempt.ok
    (call,) = ledger.totals().calls
    assert call.name == "remote-smol"
    assert call.prompt_tokens > 5 and call.completion_tokens >= 1
    expected_usd = (call.prompt_tokens * 0.5 + call.completion_tokens * 1.5) / 1e6
    assert call.cost_usd == pytest.approx(expected_usd)
    assert call.flops > 2 * 134.5e6 * (call.prompt_tokens + call.completion_tokens)
    engine.close()


def test_two_samples_with_seeds(server: str) -> None:
    engine = OpenAIHttpEngine(_config(server))
    out = engine.generate(
        [Message("user", "Name a color.")], max_tokens=8, temperature=0.9, n=2, seed=1
    )
    assert len(out) == 2 and all(c.completion_tokens >= 1 for c in out)


def test_unreachable_server_says_what_to_check() -> None:
    engine = OpenAIHttpEngine(_config(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2))
    with pytest.raises(EngineError, match="unreachable"):
        engine.generate([Message("user", "hi")], max_tokens=4)


def test_missing_api_key_env_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPORTION_TEST_KEY", raising=False)
    with pytest.raises(EngineError, match="APPORTION_TEST_KEY"):
        OpenAIHttpEngine(_config("http://127.0.0.1:9/v1", api_key_env="APPORTION_TEST_KEY"))
