"""The server tests need the `server` extra; without it they are skipped, not failed."""

from __future__ import annotations

import importlib.util

_MISSING = [
    m
    for m in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")
    if importlib.util.find_spec(m) is None
]
collect_ignore_glob = ["test_*.py"] if _MISSING else []
