"""Shared fixtures. Model fixtures pull pinned weights into APPORTION_HOME on first use
(~/.cache/apportion by default, so CI downloads them once)."""

from __future__ import annotations

from collections.abc import Iterator

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
