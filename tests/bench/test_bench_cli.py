"""`apportion bench` as a user runs it: a generic JSONL from outside the repo, a kill -9 in the
middle and --resume, and a re-run that replays from the completion cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli", "bench", *args],
        capture_output=True, text=True, timeout=900, check=False, env=env,
    )  # fmt: skip


def write_items(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_kill_9_mid_run_then_resume_completes_without_duplicates(tmp_path: Path) -> None:
    rows = [
        {"id": f"q{i}", "question": f"What is {i}*7+3?", "answer": str(i * 7 + 3)}
        for i in range(400)
    ]
    data = write_items(tmp_path / "arith.jsonl", rows)
    out = tmp_path / "run"
    cache = str(tmp_path / "c.sqlite")
    cmd = [sys.executable, "-m", "apportion.cli", "bench", "--data", str(data),
           "--strategies", "symbolic", "--out", str(out), "--cache", cache]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 30:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = results.read_text().count("\n")
    assert 30 <= partial < 400, "the kill must land mid-run"
    done = bench(*cmd[4:], "--resume")
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["item_id"] for line in results.read_text().splitlines()]
    assert len(ids) == 400 and len(set(ids)) == 400
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"]["symbolic"]["accuracy"] == 1.0


@pytest.mark.model
def test_generic_jsonl_run_then_rerun_replays_from_cache(tmp_path: Path) -> None:
    data = write_items(
        tmp_path / "mine.jsonl",
        [
            {"question": "What is the capital of France?", "answer": "Paris", "kind": "text"},
            {"question": "What is 12*12?", "answer": "144"},
            {"question": "Is the sun a star?", "answer": "yes", "kind": "boolean"},
        ],
    )
    args = ["--data", str(data), "--strategies", "direct,cot,symbolic", "--model", "smollm2-135m",
            "--max-tokens", "48", "--out", str(tmp_path / "run"),
            "--cache", str(tmp_path / "cache.sqlite")]  # fmt: skip
    first = bench(*args)
    assert first.returncode == 0, first.stderr
    assert "0 hits" in first.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for name in ("direct", "cot", "symbolic", "oracle"):
        s = summary["strategies"][name]
        assert s["n"] == 3
        assert set(s) >= {"accuracy", "accuracy_ci95", "flops", "tokens", "wall_s", "energy_j",
                          "cost_usd"}  # fmt: skip
        assert set(s["flops"]) == {"mean", "p50", "p95"}
    assert summary["strategies"]["direct"]["flops"]["mean"] > 0
    for name in ("frontier.png", "frontier_energy.png", "report.html"):
        assert (tmp_path / "run" / name).stat().st_size > 1000
    started = time.monotonic()
    again = bench(*args)
    assert again.returncode == 0, again.stderr
    assert "0 misses" in again.stderr  # every model call replayed
    assert time.monotonic() - started < 60
    rerun = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rerun["strategies"]["direct"]["flops"] == summary["strategies"]["direct"]["flops"]


def test_bench_without_data_says_what_to_give(tmp_path: Path) -> None:
    proc = bench("--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_rag_needs_a_corpus_and_retrieves_from_it(tmp_path: Path) -> None:
    data = write_items(tmp_path / "q.jsonl", [
        {"id": "q1", "question": "Which team won Super Bowl 50?", "answer": "Denver Broncos"},
        {"id": "q2", "question": "When was the Eiffel Tower completed?", "answer": "1889"},
    ])  # fmt: skip
    proc = bench("--data", str(data), "--strategies", "rag", "--out", str(tmp_path / "r0"))
    assert proc.returncode == 2 and "--corpus" in proc.stderr
    corpus = write_items(tmp_path / "corpus.jsonl", [
        {"id": "sb50", "title": "Super Bowl 50", "text": "The Denver Broncos defeated the "
         "Carolina Panthers 24-10 to win Super Bowl 50 at Levi's Stadium."},
        {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower in Paris was "
         "completed in 1889 for the World's Fair."},
    ])  # fmt: skip
    store = tmp_path / "store.sqlite"
    args = ["--data", str(data), "--strategies", "direct,rag", "--corpus", str(corpus),
            "--store", str(store), "--model", "smollm2-135m", "--cache",
            str(tmp_path / "c.sqlite")]  # fmt: skip
    proc = bench(*args, "--out", str(tmp_path / "r1"))
    assert proc.returncode == 0, proc.stderr
    assert store.is_file() and "corpus" in proc.stderr and "2 document(s) indexed" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "r1" / "results.jsonl").open()]
    rag = [r for r in rows if r["strategy"] == "rag"]
    assert len(rag) == 2 and all(r["route"] == "rag" and r["error"] is None for r in rag)
    # the passages reached the model: rag prompts are longer than the closed-book ones
    direct = {r["item_id"]: r for r in rows if r["strategy"] == "direct"}
    assert all(r["prompt_tokens"] > direct[r["item_id"]]["prompt_tokens"] + 20 for r in rag)
    # a second run finds the corpus already indexed
    proc = bench(*args, "--out", str(tmp_path / "r2"))
    assert proc.returncode == 0 and "0 document(s) indexed, 2 unchanged" in proc.stderr
