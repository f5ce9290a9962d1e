"""`apportion bench` as a user runs it: a generic JSONL from outside the repo, a kill -9 in the
middle and --resume, and a re-run that replays from the completion cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared_data import shared_data_dir


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
    again = bench(*args, "--overwrite")
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


def test_ctrl_c_saves_writes_the_report_and_exits_130(tmp_path: Path) -> None:
    rows = [
        {"id": f"q{i}", "question": f"What is {i}*7+3?", "answer": str(i * 7 + 3)}
        for i in range(400)
    ]
    data = write_items(tmp_path / "arith.jsonl", rows)
    out = tmp_path / "run"
    args = ["--data", str(data), "--strategies", "symbolic", "--out", str(out), "--cache",
            str(tmp_path / "c.sqlite")]  # fmt: skip
    # The installed `apportion` command where there is one (its entry point may supervise the
    # CLI from a parent process), in its own process group, signalled as a whole: what a
    # terminal's Ctrl-C does.
    installed = shutil.which("apportion")
    command = [installed] if installed else [sys.executable, "-m", "apportion.cli"]
    proc = subprocess.Popen(
        [*command, "bench", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 30:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    saved = results.read_text().count("\n")
    assert 30 <= saved < 400, "the interrupt must land mid-run"
    assert "interrupted" in stderr and "--resume" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"]["symbolic"]["n"] == saved
    assert (out / "report.html").is_file()
    # (that --resume then completes the run is the kill -9 test's part)


def test_a_non_empty_out_needs_resume_or_overwrite(tmp_path: Path) -> None:
    data = write_items(tmp_path / "a.jsonl", [{"question": "What is 2+3?", "answer": "5"}])
    out = tmp_path / "run"
    args = ["--data", str(data), "--strategies", "symbolic", "--out", str(out)]
    assert bench(*args).returncode == 0
    again = bench(*args)
    assert again.returncode == 2
    assert "not empty" in again.stderr and "--resume" in again.stderr
    assert "--overwrite" in again.stderr
    replaced = bench(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "results.jsonl").read_text().count("\n") == 1


def test_resume_with_a_different_command_is_refused_and_names_the_difference(
    tmp_path: Path,
) -> None:
    first = write_items(tmp_path / "a.jsonl", [
        {"id": f"a{i}", "question": f"What is {i}+3?", "answer": str(i + 3)} for i in range(5)
    ])  # fmt: skip
    other = write_items(tmp_path / "b.jsonl", [
        {"id": f"b{i}", "question": f"What is {i}*3?", "answer": str(i * 3)} for i in range(5)
    ])  # fmt: skip
    out = tmp_path / "run"
    base = ["--strategies", "symbolic", "--out", str(out)]
    assert bench("--data", str(first), *base).returncode == 0
    before = (out / "results.jsonl").read_text()
    summary_before = (out / "summary.json").read_text()
    refusals = {
        "data": ["--data", str(other), *base],
        "strategies": ["--data", str(first), "--strategies", "symbolic,direct", "--out",
                       str(out)],
        "seed": ["--data", str(first), *base, "--seed", "7"],
        "limit": ["--data", str(first), *base, "--limit", "2"],
        "model": ["--data", str(first), *base, "--model", "smollm2-135m"],
    }  # fmt: skip
    for difference, args in refusals.items():
        proc = bench(*args, "--resume")
        assert proc.returncode == 2, (difference, proc.stderr)
        assert "cannot be resumed" in proc.stderr and difference in proc.stderr, proc.stderr
        assert "--overwrite" in proc.stderr
    # nothing was mixed in or rewritten
    assert (out / "results.jsonl").read_text() == before
    assert (out / "summary.json").read_text() == summary_before
    same = bench("--data", str(first), *base, "--resume")
    assert same.returncode == 0, same.stderr


@pytest.mark.model
def test_generic_multiple_choice_items_are_shown_their_options(tmp_path: Path) -> None:
    """CommonsenseQA items in the generic format, options only in `choices` (as a held-out
    ARC-Challenge file came): the model must see them to answer with a letter. Before the
    options reached the prompt, qwen 0.5B `direct` answered 12 of these 14 with free text
    ("security mechanism", "Work") and got 1 right; shown them, it answers with letters."""
    source = shared_data_dir() / "commonsenseqa" / "dev_rand_split.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    rows = []
    for line in source.read_text().splitlines()[:14]:
        rec = json.loads(line)
        options = sorted(rec["question"]["choices"], key=lambda c: c["label"])
        texts = [c["text"] for c in options]
        gold = rec["answerKey"]
        rows.append({"id": rec["id"], "question": rec["question"]["stem"], "choices": texts,
                     "answer": gold})  # fmt: skip
    data = write_items(tmp_path / "csqa.jsonl", rows)
    out = tmp_path / "run"
    proc = bench("--data", str(data), "--strategies", "direct", "--max-tokens", "8",
                 "--out", str(out), "--cache", str(tmp_path / "c.sqlite"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert all("\nA. " in r["question"] for r in results)  # the options reached the prompt
    letters = [r for r in results if r["answer"] in {"A", "B", "C", "D", "E"}]
    assert len(letters) >= 12, [r["answer"] for r in results]
    assert sum(r["correct"] for r in results) >= 3


def test_a_run_records_whether_it_was_deterministic_and_resumes_only_in_that_mode(
    tmp_path: Path,
) -> None:
    data = write_items(
        tmp_path / "a.jsonl", [{"id": "q1", "question": "What is 2+3?", "answer": "5"}]
    )
    cache = str(tmp_path / "c.sqlite")
    plain, det = tmp_path / "plain", tmp_path / "det"
    args = ["--data", str(data), "--strategies", "symbolic", "--cache", cache]
    assert bench(*args, "--out", str(plain)).returncode == 0
    done = bench(*args, "--out", str(det), "--deterministic")
    assert done.returncode == 0, done.stderr
    meta = json.loads((det / "run.json").read_text())
    assert (meta["deterministic"], meta["prefix_reuse"]) == (True, False)
    meta = json.loads((plain / "run.json").read_text())
    assert (meta["deterministic"], meta["prefix_reuse"]) == (False, True)
    refused = bench(*args, "--out", str(det), "--resume")
    assert refused.returncode == 2
    assert "deterministic False here vs True there" in " ".join(refused.stderr.split())


def test_resume_from_archived_traces_runs_only_what_they_lack(tmp_path: Path) -> None:
    import gzip

    from apportion.bench.datasets import archive_row
    from apportion.traces import read_results

    rows = [
        {"id": f"q{i}", "question": f"What is {i}*7+3?", "answer": str(i * 7 + 3)} for i in range(5)
    ]
    data = write_items(tmp_path / "arith.jsonl", rows)
    cache = str(tmp_path / "c.sqlite")
    common = ["--data", str(data), "--strategies", "symbolic", "--cache", cache]
    first = bench(*common, "--limit", "2", "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    traced = read_results(tmp_path / "a" / "results.jsonl")
    archive = tmp_path / "traces.jsonl.gz"
    with gzip.open(archive, "wt") as f:  # as benchmarks/archive_traces.py keeps them
        for row in traced:  # an answer no solver gives shows the row was not run again
            f.write(json.dumps(archive_row(row) | {"answer": "-1", "correct": False}) + "\n")
    # on another machine: a fresh cache, the whole data, and the archive
    fresh = ["--data", str(data), "--strategies", "symbolic", "--cache", str(tmp_path / "d.sqlite")]
    done = bench(*fresh, "--out", str(tmp_path / "b"), "--resume-from", str(archive))
    assert done.returncode == 0, done.stderr
    assert "2 traced rows of this run's items taken from --resume-from" in done.stderr
    written = read_results(tmp_path / "b" / "results.jsonl")
    assert sorted(r.item_id for r in written) == [f"q{i}" for i in range(5)]
    assert [r.answer for r in written[:2]] == ["-1", "-1"]
    assert {r.item_id for r in written[:2]} == {r.item_id for r in traced}
    assert all(r.correct for r in written[2:])
    assert written[0].question.startswith("What is")  # the item's text is put back
    # an archive of other data is refused before any work
    other = write_items(tmp_path / "other.jsonl", [{"id": "x", "question": "2+2?", "answer": "4"}])
    refused = bench("--data", str(other), "--strategies", "symbolic", "--out",
                    str(tmp_path / "c"), "--resume-from", str(archive))  # fmt: skip
    assert refused.returncode != 0 and "holds no row of this run" in refused.stderr
    assert not (tmp_path / "c").exists()
