"""NumPy archives read from threads (apportion.arrays)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from apportion import arrays


def test_read_npz_gives_back_every_array(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    weights = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.savez_compressed(path, weights=weights, classes=np.array(["x", "y"]))
    data = arrays.read_npz(path)
    assert sorted(data) == ["classes", "weights"]
    assert data["weights"].dtype == np.float16 and np.array_equal(data["weights"], weights)
    assert [str(c) for c in data["classes"]] == ["x", "y"]


def test_threads_read_archives_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """np.load parses headers with `ast`, which CPython 3.11 cannot run in two threads at
    once: however many threads read, no two are inside np.load together."""
    path = tmp_path / "a.npz"
    np.savez_compressed(path, a=np.zeros(4))
    inside = 0
    most = 0
    count = threading.Lock()
    load = np.load

    def watched(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)  # long enough for the other threads to arrive
        try:
            return load(*args, **kwargs)
        finally:
            with count:
                inside -= 1

    monkeypatch.setattr(np, "load", watched)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: arrays.read_npz(path), range(8)))
    assert most == 1
    assert all(np.array_equal(r["a"], np.zeros(4)) for r in results)
