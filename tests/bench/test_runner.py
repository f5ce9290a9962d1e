"""The runner end to end on the symbolic route (no model): persistence, resume, report."""

import json
from pathlib import Path

import pytest

from apportion.bench.datasets import load_jsonl
from apportion.bench.report import write_report
from apportion.bench.runner import RESULTS, read_results, run_bench
from apportion.engine import Engine
from apportion.errors import UsageError


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
    run_bench(Engine(), items[:2], ["symbolic"], out=out, model="qwen2.5-coder-0.5b")
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
