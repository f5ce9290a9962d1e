"""`apportion bench --concurrency N` against a real remote engine (an `apportion serve` with
the example plug-in's echo engine): the same rows, in the same order, as a sequential run; and
refused where the model runs in this process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import env_with, serve_process
from shared_data import shared_data_dir

ROWS = [
    {"id": f"q{i}", "question": f"Please repeat item {i} back", "answer": "x"} for i in range(16)
]
# what sequential and concurrent runs must agree on (times differ from run to run)
SAME = ("dataset", "item_id", "strategy", "answer", "correct", "prompt_tokens",
        "completion_tokens", "flops", "calls", "error")  # fmt: skip


@pytest.fixture(scope="module")
def remote(plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("replica")
    config = home / "config.toml"
    config.write_text('default_model = "e"\n[[engines]]\nid = "e"\nkind = "echo"\n')
    env = env_with(plugin_site, home=home)
    with serve_process("--config", str(config), env=env, log=home / "serve.log") as (url, _):
        yield url


def bench(tmp_path: Path, name: str, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "items.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli", "bench", "--data", str(data), "--out",
         str(tmp_path / name), "--cache", str(tmp_path / f"{name}.sqlite"), "--config",
         str(config), *args],
        capture_output=True, text=True, timeout=600, check=False,
        env=env_with(home=tmp_path / "home"),
    )  # fmt: skip


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def test_a_concurrent_run_writes_what_a_sequential_run_writes(remote: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[engines]]\nid = "remote-e"\nbase_url = "{remote}/v1"\nmodel = "direct"\nparams = 1e6\n'
    )
    common = ("--model", "remote-e", "--strategies", "direct,cot")
    sequential = bench(tmp_path, "seq", *common, config=config)
    assert sequential.returncode == 0, sequential.stderr
    concurrent = bench(tmp_path, "par", *common, "--concurrency", "4", config=config)
    assert concurrent.returncode == 0, concurrent.stderr
    one, many = rows(tmp_path / "seq"), rows(tmp_path / "par")
    assert len(one) == len(many) == 32
    assert [{k: r[k] for k in SAME} for r in one] == [{k: r[k] for k in SAME} for r in many]
    # the same cache keys: a sequential run over the concurrent run's cache replays it all
    again = bench(tmp_path, "par", *common, "--overwrite", config=config)
    assert again.returncode == 0 and "32 hits, 0 misses" in again.stderr, again.stderr


def test_concurrency_is_refused_for_a_model_in_this_process(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    proc = bench(tmp_path, "local", "--model", "smollm2-135m", "--strategies", "direct",
                 "--concurrency", "2", config=config)  # fmt: skip
    assert proc.returncode == 2
    said = " ".join(proc.stderr.split())
    assert "--concurrency runs items at once" in said
    assert "smollm2-135m runs in this process" in said
    assert not (tmp_path / "local" / "results.jsonl").exists()


@pytest.mark.model
def test_worker_processes_write_what_one_process_writes(tmp_path: Path) -> None:
    """--workers 2 on two threads (one each) against one process on one thread, both
    deterministic (so no answer depends on which items a process saw before)."""
    shared_data_dir()  # its items are gsm8k's
    config = tmp_path / "config.toml"
    config.write_text("")
    common = ("--model", "smollm2-135m", "--strategies", "direct,cot", "--max-tokens", "12",
              "--limit", "6", "--deterministic")  # fmt: skip
    env = env_with(home=tmp_path / "home")

    def run(name: str, *args: str, threads: str) -> tuple[list[dict[str, Any]], tuple[int, int]]:
        proc = subprocess.run(
            [sys.executable, "-m", "apportion.cli", "bench", "--dataset", "gsm8k", "--out",
             str(tmp_path / name), "--cache", str(tmp_path / f"{name}.sqlite"), "--config",
             str(config), *common, *args],
            capture_output=True, text=True, timeout=900, check=False,
            env={**env, "APPORTION_THREADS": threads},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counted = re.search(r"cache: (\d+) hits, (\d+) misses", proc.stderr)
        assert counted is not None, proc.stderr
        return rows(tmp_path / name), (int(counted[1]), int(counted[2]))

    one, one_cache = run("one", threads="1")
    two, two_cache = run("two", "--workers", "2", threads="2")
    assert len(one) == len(two) == 12
    assert [{k: r[k] for k in SAME} for r in one] == [{k: r[k] for k in SAME} for r in two]
    # the workers' cache lookups are counted, on a fresh cache and again on a full one
    assert two_cache == one_cache and one_cache[0] == 0 and one_cache[1] >= 12
    _, again = run("two", "--workers", "2", "--overwrite", threads="2")
    assert again == (one_cache[1], 0)


def test_workers_and_concurrency_do_not_combine(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    proc = bench(tmp_path, "both", "--strategies", "symbolic", "--workers", "2",
                 "--concurrency", "2", config=config)  # fmt: skip
    assert proc.returncode == 2 and "do not combine" in proc.stderr
