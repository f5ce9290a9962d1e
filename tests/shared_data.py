"""Where the tests find the benchmark data (`../shared/data`, or $APPORTION_DATA_DIR).

A fresh clone without that folder skips the tests that need it, with the reason and what to
set. In CI (where `CI` is set) the data is expected, so its absence fails them instead: a
missing folder must not pass there as a row of skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apportion.bench.datasets import default_data_dir
from apportion.errors import UsageError


def shared_data_dir() -> Path:
    try:
        return default_data_dir()
    except UsageError as e:
        reason = f"benchmark data not found: {e}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI expects it)")
        pytest.skip(reason)
