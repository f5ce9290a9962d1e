"""Shared fixtures. Model fixtures pull pinned weights into APPORTION_HOME on first use
(~/.cache/apportion by default, so CI downloads them once)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.config import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def small_engine(settings: Settings) -> Iterator[object]:
    """The default model (qwen2.5-coder-0.5b), loaded once for the whole session."""
    from apportion.runtime import Engine

    engine = Engine(settings=settings)
    engine.engine_for(settings.default_model)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smol_llamacpp(settings: Settings) -> Iterator[object]:
    """The smallest real model (SmolLM2-135M) in llama.cpp itself, without the runtime: one
    thread, a 512-token context, one per test module (each starts from an empty KV cache)."""
    from apportion.engines import catalogue
    from apportion.engines.llamacpp import LlamaCppEngine

    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    engine = LlamaCppEngine("smollm2-135m", path, n_ctx=512, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in, installed by pip into a folder of its own (tests/test_plugins.py
    says why that way)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "plugin", source)
    site = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return site


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server for the session; its URL."""
    from servers import PostgresServer

    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.stop()
