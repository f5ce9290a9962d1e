"""The HTTP engine against llama-cpp-python's own OpenAI-compatible server, started here."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.engines.openai_http import OpenAIHttpEngine
from apportion.errors import EngineError
from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.direct import Direct
from apportion.types import Message, Query

pytestmark = pytest.mark.model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server", reason="needs the `server` extra")
    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
            "--n_threads", "1", "--verbose", "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start in 60 s")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


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
    engine = OpenAIHttpEngine(_config(f"http://127.0.0.1:{_free_port()}/v1", timeout_s=2))
    with pytest.raises(EngineError, match="unreachable"):
        engine.generate([Message("user", "hi")], max_tokens=4)


def test_missing_api_key_env_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPORTION_TEST_KEY", raising=False)
    with pytest.raises(EngineError, match="APPORTION_TEST_KEY"):
        OpenAIHttpEngine(_config("http://127.0.0.1:9/v1", api_key_env="APPORTION_TEST_KEY"))
