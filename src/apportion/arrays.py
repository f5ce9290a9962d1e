"""NumPy archives (.npz) read from any thread.

`np.load` parses each array's header with `ast.literal_eval`, and CPython 3.11's AST
constructor keeps its recursion depth in state shared by all threads: two threads parsing at
once can fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython
gh-106905; CI hit it unpacking an expert's adapter in six threads). A server's first requests,
or bench workers, load the intent model and adapters from threads, so every archive apportion
reads goes through `read_npz`, which reads one at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_npz"]

# A process-wide lock, not state: it only orders the reads (archives are small and read once).
_HEADER_PARSING = threading.Lock()


def read_npz(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Every array in the archive at `path`, by name, read whole."""
    with _HEADER_PARSING, np.load(path) as data:
        return {name: data[name] for name in data.files}
