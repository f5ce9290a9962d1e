"""The server tests need the `server` extra; without it they are skipped, not failed (all but
the one that checks what `serve` says when the extra is missing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_MISSING = [
    m
    for m in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")
    if importlib.util.find_spec(m) is None
]
collect_ignore = (
    [
        str(p.name)
        for p in Path(__file__).parent.glob("test_*.py")
        if p.name != "test_missing_extra.py"
    ]
    if _MISSING
    else []
)
