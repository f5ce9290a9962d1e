"""The HTTP engine against llama-cpp-python's own OpenAI-compatible server, started here."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.engines.fallback import FallbackEngine
from apportion.engines.openai_http import OpenAIHttpEngine
from apportion.errors import EngineError
from apportion.ledger import Ledger
from apportion.runtime import Engine
from apportion.strategies.base import RunContext
from apportion.strategies.direct import Direct
from apportion.types import Message, Query
from servers import LlamaCppServer, free_port, llama_cpp_server

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
    ctx = RunContext.over(engine_for=lambda _id: engine, default_model="remote-smol", ledger=ledger)
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
    engine = OpenAIHttpEngine(
        _config(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2, max_attempts=1)
    )
    with pytest.raises(EngineError, match="unreachable"):
        engine.generate([Message("user", "hi")], max_tokens=4)


def test_missing_api_key_env_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPORTION_TEST_KEY", raising=False)
    with pytest.raises(EngineError, match="APPORTION_TEST_KEY"):
        OpenAIHttpEngine(_config("http://127.0.0.1:9/v1", api_key_env="APPORTION_TEST_KEY"))


# --------------------------------------------------------------------------- down and back up


def _answer(apportion: Engine, model: str) -> list[str]:
    """Ask through the engine; the names of the engines the ledger charged."""
    answer = apportion.ask("Say hello.", strategy="direct", model=model, max_tokens=4)
    assert answer.answer, answer
    return [c.name for c in answer.ledger.calls]


def test_retries_ride_out_a_server_restart(settings: Settings) -> None:
    """The server goes away mid-run and comes back: the request in between waits for it."""
    server = LlamaCppServer(catalogue.resolve("smollm2-135m", settings.models_dir))
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    engine = OpenAIHttpEngine(
        _config(server.base, max_attempts=100, retry_base_delay_s=0.2, retry_max_delay_s=1.0,
                retry_max_wait_s=120),
        sleep=sleep,
    )  # fmt: skip
    restarter = threading.Thread(target=lambda: (time.sleep(1.5), server.start()))
    try:
        server.start()
        assert engine.generate([Message("user", "Hi.")], max_tokens=4)[0].completion_tokens
        server.stop()
        restarter.start()
        (out,) = engine.generate([Message("user", "Hi.")], max_tokens=4)
        assert out.completion_tokens >= 1
        assert len(sleeps) >= 2 and sum(sleeps) >= 1.0  # it waited through the outage
    finally:
        if restarter.is_alive():
            restarter.join()
        server.stop()
        engine.close()


def test_a_down_engine_falls_back_and_is_used_again_once_back(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real servers; the primary is stopped mid-run, then restarted on its port."""
    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    primary, backup = LlamaCppServer(path), LlamaCppServer(path)
    # timeouts far above a reply's time even on a busy machine: only the outage may fail over
    remote = dict(model="smol", params=134.5e6, n_layers=30, d_model=576, timeout_s=60)
    config = Settings(home=tmp_path, engines=[
        RemoteEngineConfig(id="primary", base_url=primary.base, fallback="backup",
                           max_attempts=2, retry_base_delay_s=0.1, fallback_cooldown_s=20.0,
                           **remote),  # type: ignore[arg-type]
        RemoteEngineConfig(id="backup", base_url=backup.base, **remote),  # type: ignore[arg-type]
    ])  # fmt: skip
    apportion = Engine(settings=config)
    try:
        primary.start()
        backup.start()
        assert _answer(apportion, "primary") == ["primary"]
        primary.stop()
        assert _answer(apportion, "primary") == ["backup"]  # failed over after its retries
        down = apportion.engine_for("primary")
        assert isinstance(down, FallbackEngine) and down.is_down()
        tried: list[int] = []
        generate = down.primary.generate
        monkeypatch.setattr(
            down.primary, "generate", lambda *a, **k: (tried.append(1), generate(*a, **k))[1]
        )
        assert _answer(apportion, "primary") == ["backup"]  # straight there while down
        assert tried == []  # the primary was not even tried
        primary.start()
        while down.is_down():  # the cooldown runs out
            time.sleep(0.1)
        assert _answer(apportion, "primary") == ["primary"]
        assert tried == [1]
    finally:
        apportion.close()
        primary.stop()
        backup.stop()
