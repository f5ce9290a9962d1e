"""A bench run planned, indexed, run and reported in-process, as `apportion bench` drives it
(the symbolic route and a tiny corpus: no language model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from apportion.bench.datasets import load_jsonl
from apportion.bench.runner import RESULTS, ItemResult
from apportion.bench.session import (
    Tally,
    command_data,
    index_bench_corpus,
    load_bench_items,
    plan_bench,
)
from apportion.config import Settings
from apportion.errors import UnknownNameError, UsageError
from apportion.runtime import Engine
from shared_data import shared_data_dir


def write_items(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def arith(tmp_path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"What is {i}*7+3?", "answer": str(i * 7 + 3)}
        for i in range(10)
    ]
    return write_items(tmp_path / "arith.jsonl", rows)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(settings=Settings(home=tmp_path / "home"))


def test_limit_takes_a_seeded_sample_in_file_order(arith: Path) -> None:
    items, sources = load_bench_items([arith], [], 4, 0, None)
    assert sources == ["arith.jsonl (4)"]
    ids = [item.id for item in items]
    order = [item.id for item in load_jsonl(arith)]
    assert len(ids) == 4 and ids == sorted(ids, key=order.index)
    again, _ = load_bench_items([arith], [], 4, 0, None)
    assert [item.id for item in again] == ids
    others = {tuple(i.id for i in load_bench_items([arith], [], 4, s, None)[0]) for s in range(5)}
    assert len(others) > 1  # the seed picks the sample
    whole, sources = load_bench_items([arith, arith], [], None, 0, None)
    assert len(whole) == 20 and sources == ["arith.jsonl (10)", "arith.jsonl (10)"]


@pytest.mark.parametrize(
    ("dataset", "small", "large", "shared"),
    [("gsm8k", 25, 75, 25), ("gsm8k", 75, 200, 72), ("svamp", 75, 200, 72),
     ("mawps", 75, 200, 75)],
)  # fmt: skip
def test_a_larger_limit_holds_a_smaller_draw_only_where_the_sampler_keeps_its_method(
    dataset: str, small: int, large: int, shared: int
) -> None:
    """What `--resume-from` a smaller run's archive can give a larger run (the traces README):
    `random.sample` draws a small share of a set one way and a large share another, so on
    gsm8k's 658 items and svamp's 1,000 `--limit 200` holds only 72 of `--limit 75`'s items.
    The archived traces' item ids depend on these draws: they must not move."""
    data_dir = shared_data_dir()

    def drawn(limit: int) -> set[str]:
        return {i.id for i in load_bench_items([], [dataset], limit, 0, data_dir)[0]}

    assert len(drawn(small) & drawn(large)) == shared


def test_missing_or_empty_data_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_bench_items([tmp_path / "absent.jsonl"], [], None, 0, None)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match="no items"):
        load_bench_items([tmp_path / "empty.jsonl"], [], None, 0, None)


def test_command_data_names_files_by_absolute_path(
    arith: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(arith.parent)
    assert command_data([Path("arith.jsonl")], ["gsm8k"]) == (
        f"--data {arith.resolve()}",
        "--dataset gsm8k",
    )


def test_a_planned_run_runs_reports_and_keeps_its_results(
    tmp_path: Path, arith: Path, engine: Engine
) -> None:
    out = tmp_path / "run"
    run = plan_bench(
        engine, data=[arith], datasets=[], strategies="symbolic,direct", out=out, limit=3
    )
    assert run.model == engine.settings.default_model and run.strategies == ["symbolic", "direct"]
    assert run.title == f"{run.model} · seed 0 · arith.jsonl (3)"
    assert not out.exists()  # planning does no work
    run.strategies = ["symbolic"]  # the run itself needs no model
    starts: list[tuple[int, int]] = []
    seen: list[ItemResult] = []
    results = run.execute(None, on_start=lambda d, t: starts.append((d, t)), on_result=seen.append)
    assert starts == [(0, 3)] and seen == results and all(r.correct for r in results)
    assert run.saved_results() == results
    summary = run.write_report(results)
    assert summary["strategies"]["symbolic"]["n"] == 3
    assert (out / "summary.json").is_file() and (out / "report.html").is_file()
    # a second plan into the same folder is refused unless it resumes or overwrites
    with pytest.raises(UsageError, match="not empty"):
        plan_bench(engine, data=[arith], datasets=[], strategies="symbolic", out=out, limit=3)
    resumed = plan_bench(
        engine, data=[arith], datasets=[], strategies="symbolic", out=out, limit=3, resume=True
    )
    assert resumed.execute(None) == results
    assert (out / RESULTS).read_text().count("\n") == 3


def test_planning_refuses_what_cannot_run_before_any_work(
    tmp_path: Path, arith: Path, engine: Engine
) -> None:
    out = tmp_path / "run"

    def plan(**options: object) -> object:
        args: dict[str, object] = {"data": [arith], "datasets": [], "strategies": "symbolic"}
        return plan_bench(engine, out=out, **(args | options))  # type: ignore[arg-type]

    with pytest.raises(UsageError, match="--corpus"):
        plan(strategies="direct,rag")
    with pytest.raises(UnknownNameError):
        plan(strategies="symbolic,nope")
    with pytest.raises(UnknownNameError):
        plan(model="gpt-17")
    with pytest.raises(UsageError, match="corpus file not found"):
        plan(corpus=str(tmp_path / "absent.jsonl"))
    assert not out.exists()


def test_the_corpus_is_indexed_once_with_progress(tmp_path: Path) -> None:
    from apportion.bench.corpus import resolve_corpus

    corpus = resolve_corpus(
        str(
            write_items(
                tmp_path / "corpus.jsonl",
                [
                    {"id": "eiffel", "text": "The Eiffel Tower was completed in 1889."},
                    {"id": "rhine", "text": "The Rhine flows into the North Sea."},
                ],
            )
        )
    )
    uri = str(tmp_path / "store.sqlite")
    seen: list[tuple[int, int]] = []
    store, report = index_bench_corpus(corpus, uri, progress=lambda d, t: seen.append((d, t)))
    try:
        assert (report.written, report.skipped) == (2, 0) and store.count() >= 2
    finally:
        store.close()
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    store, report = index_bench_corpus(corpus, uri)
    store.close()
    assert (report.written, report.skipped) == (0, 2)


def test_the_tally_shows_accuracy_so_far_and_failures() -> None:
    def result(strategy: str, correct: bool, error_type: str | None = None) -> ItemResult:
        # only what the tally reads: the strategy, whether it was right, what it raised
        row = SimpleNamespace(strategy=strategy, correct=correct, error_type=error_type)
        return cast(ItemResult, row)

    tally = Tally()
    assert tally.line() == ""
    for r in (result("cot", True), result("cot", False), result("program", False, "ValueError")):
        tally.add(r)
    assert tally.line() == "cot 50%  program 0% (1 failed)"
