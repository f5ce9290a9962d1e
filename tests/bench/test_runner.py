"""The runner end to end on the symbolic route (no model): persistence, resume, report."""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from apportion.bench.datasets import load_jsonl
from apportion.bench.report import write_report
from apportion.bench.runner import RESULTS, read_results, run_bench
from apportion.errors import UsageError
from apportion.runtime import Engine
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.types import Attempt, Query


@pytest.fixture
def items(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "arith.jsonl"
    rows = [
        {"question": "What is 17*23+5?", "answer": "396"},
        {"question": "What is 2^10?", "answer": "1024"},
        {"question": "What is 7*6?", "answer": "41"},  # wrong gold: scored incorrect
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_jsonl(path)


def test_run_scores_and_persists_each_result(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    results = run_bench(Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
    assert [r.correct for r in results] == [True, True, False]
    on_disk = read_results(out / RESULTS)
    assert [r.answer for r in on_disk] == ["396", "1024", "42"]
    assert all(r.calls == 1 and r.flops == 0 and r.energy_j >= 0 for r in on_disk)


def test_resume_skips_done_items_and_drops_a_torn_line(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"

    def interrupt_after_two(result: object) -> None:
        if len(read_results(out / RESULTS)) == 2:
            raise KeyboardInterrupt  # Ctrl-C: passes through, never an error row

    with pytest.raises(KeyboardInterrupt):
        run_bench(
            Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b",
            on_result=interrupt_after_two,
        )  # fmt: skip
    with (out / RESULTS).open("a") as f:
        f.write('{"dataset": "arith", "item_id": "tor')  # a kill -9 mid-write
    seen = []
    results = run_bench(
        Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b", resume=True,
        on_result=seen.append,
    )  # fmt: skip
    assert len(seen) == 1 and seen[0].item_id == items[2].id
    assert len(results) == 3
    assert len(read_results(out / RESULTS)) == 3
    assert (out / RESULTS).read_text().count("\n") == 3


def test_resume_refuses_a_different_model(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    run_bench(Engine(), items[:1], ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
    with pytest.raises(UsageError, match="cannot be resumed"):
        run_bench(Engine(), items, ["symbolic"], out=out, model="smollm2-135m", resume=True)


def test_report_files_are_written(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    results = run_bench(Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
    summary = write_report(results, out, title="t")
    for name in ("summary.json", "frontier.png", "frontier_energy.png", "report.html"):
        assert (out / name).stat().st_size > 0
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["strategies"]["symbolic"]["n"] == 3  # type: ignore[index]
    assert "oracle" in (out / "report.html").read_text()


def test_resume_refuses_other_items_strategies_seed_or_limit_naming_them(
    tmp_path: Path,
    items,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "run"
    model = "qwen2.5-coder-0.5b"
    run_bench(Engine(), items, ["symbolic"], out=out, model=model, data=("arith.jsonl",))
    attempts = {
        "strategies": dict(strategies=["symbolic", "direct"]),
        "seed": dict(seed=3),
        "limit": dict(limit=2),
        "data": dict(data=("other.jsonl",)),
        "corpus": dict(corpus="squad"),
    }
    for difference, change in attempts.items():
        kwargs = dict(strategies=["symbolic"], data=("arith.jsonl",)) | change
        strategies = kwargs.pop("strategies")
        with pytest.raises(UsageError) as raised:
            run_bench(Engine(), items, strategies, out=out, model=model, resume=True, **kwargs)  # type: ignore[arg-type]
        assert difference in raised.value.message, raised.value.message
        assert raised.value.hint is not None and "--overwrite" in raised.value.hint
    # the same items edited in place (same file name) are other data too
    edited = [replace(items[0], answer="397"), *items[1:]]
    with pytest.raises(UsageError, match="items"):
        run_bench(Engine(), edited, ["symbolic"], out=out, model=model, resume=True,
                  data=("arith.jsonl",))  # fmt: skip
    # nothing was mixed in: the first run's rows are all there is
    assert len(read_results(out / RESULTS)) == 3


def test_a_non_empty_out_is_refused_without_resume_or_overwrite(
    tmp_path: Path,
    items,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "run"
    run_bench(Engine(), items[:1], ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
    with pytest.raises(UsageError, match="not empty") as raised:
        run_bench(Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
    assert raised.value.hint is not None
    assert "--resume" in raised.value.hint and "--overwrite" in raised.value.hint
    assert len(read_results(out / RESULTS)) == 1
    results = run_bench(
        Engine(), items, ["symbolic"], out=out, model="qwen2.5-coder-0.5b", overwrite=True
    )
    assert len(results) == 3 and len(read_results(out / RESULTS)) == 3


@dataclass(frozen=True)
class Explodes:
    """Answers 4, except on a question holding "boom", where it raises like a parser meeting a
    number beyond float range."""

    @property
    def name(self) -> str:
        return "explodes"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        if "boom" in query.text:
            raise OverflowError("int too large to convert to float")
        return Attempt(self.name, "4", 1.0)


def test_an_item_that_raises_is_an_error_row_and_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    questions = ["What is 2+2?", "boom: what is 2+2?", "What is 2*2?"]
    rows = [{"id": f"q{i}", "question": q, "answer": "4"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine = Engine(registry=default_registry(extra=[("explodes", Explodes)]))
    out = tmp_path / "run"
    results = run_bench(engine, load_jsonl(path), ["explodes", "symbolic"], out=out,
                        model="qwen2.5-coder-0.5b")  # fmt: skip
    assert len(results) == 6  # every item × strategy, the one after the failure included
    failed = [r for r in read_results(out / RESULTS) if r.error_type is not None]
    assert [(r.item_id, r.strategy, r.error_type) for r in failed] == [
        ("q1", "explodes", "OverflowError")
    ]
    assert failed[0].error == "OverflowError: int too large to convert to float"
    assert failed[0].answer is None and not failed[0].correct
    summary = write_report(results, out, title="t")
    assert summary["strategies"]["explodes"]["errors"] == 1  # type: ignore[index]
    assert summary["strategies"]["explodes"]["raised"] == 1  # type: ignore[index]
    assert summary["strategies"]["explodes"]["correct"] == 2  # type: ignore[index]
    assert summary["strategies"]["symbolic"]["raised"] == 0  # type: ignore[index]


@dataclass(frozen=True)
class Declines:
    """Abstains on every question, as rag does when its store knows nothing relevant."""

    @property
    def name(self) -> str:
        return "declines"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        return Attempt(self.name, "nothing to go on", 0.05, abstained=True)


def test_a_row_says_when_its_answer_is_an_abstention(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(registry=default_registry(extra=[("declines", Declines)]))
    out = tmp_path / "run"
    results = run_bench(engine, items[:1], ["declines", "symbolic"], out=out,
                        model="qwen2.5-coder-0.5b")  # fmt: skip
    assert [(r.strategy, r.abstained) for r in results] == [
        ("declines", True), ("symbolic", False),
    ]  # fmt: skip
    assert read_results(out / RESULTS) == results
    assert [json.loads(line)["abstained"] for line in (out / RESULTS).open()] == [True, False]


def test_rows_from_archived_traces_are_taken_as_done_and_the_rest_run(
    tmp_path: Path,
    items,  # type: ignore[no-untyped-def]
) -> None:
    first = run_bench(Engine(), items[:2], ["symbolic"], out=tmp_path / "a", model="m")
    # an archive keeps no question or gold; a row marked wrong shows it was not run again
    archived = [replace(first[0], question="", gold="", answer="0", correct=False), first[1]]
    seen: list[object] = []
    results = run_bench(
        Engine(), items, ["symbolic"], out=tmp_path / "b", model="m", adopt=archived,
        on_result=seen.append, on_start=lambda done, todo: seen.append((done, todo)),
    )  # fmt: skip
    assert seen[0] == (2, 1)  # the two traced rows are done; only item 3 runs
    on_disk = read_results(tmp_path / "b" / RESULTS)
    assert [(r.item_id, r.strategy) for r in on_disk[:2]] == [
        (items[0].id, "symbolic"), (items[1].id, "symbolic"),
    ]  # fmt: skip
    assert on_disk[0].answer == "0" and on_disk[0].question == items[0].question
    assert on_disk[0].gold == items[0].answer
    assert [r.item_id for r in seen[1:]] == [items[2].id]  # type: ignore[attr-defined]
    assert len(results) == len(on_disk) == 3


def test_traced_rows_of_other_items_or_questions_are_not_taken(tmp_path: Path, items) -> None:  # type: ignore[no-untyped-def]
    from apportion.bench.runner import adopt_rows

    first = run_bench(Engine(), items, ["symbolic"], out=tmp_path / "a", model="m")
    assert adopt_rows(first, items[:1], ["symbolic"]) == [first[0]]
    assert adopt_rows(first, items, ["direct"]) == []
    assert adopt_rows(first, items, ["symbolic"], done=first[1:]) == [first[0]]
    with pytest.raises(UsageError, match="another question"):
        adopt_rows([replace(first[0], question="What is 1+1?")], items, ["symbolic"])
