"""Trace rows: the results.jsonl shape, old rows (archived traces) and abstentions."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from apportion.bench.datasets import ARCHIVE_DROPS, restore_questions
from apportion.bench.scoring import score
from apportion.errors import UsageError
from apportion.traces import RESULTS, ItemResult, ResultWriter, is_adaptive, read_results
from shared_data import shared_data_dir

ARCHIVE = Path(__file__).resolve().parents[1] / "benchmarks" / "traces"
# The row's keys, in order, as results.jsonl has always written them; `abstained` came last.
ROW_KEYS = [
    "dataset", "item_id", "strategy", "gold", "answer", "correct", "f1", "confidence", "route",
    "intent", "error", "prompt_tokens", "completion_tokens", "flops", "wall_s", "cpu_s",
    "energy_j", "cost_usd", "cached_tokens", "flops_cached", "calls", "stopped_for_budget",
    "question", "kind", "error_type", "abstained",
]  # fmt: skip

ROW = ItemResult(
    dataset="squad", item_id="7", strategy="rag", gold="1889", answer="1889", correct=True,
    f1=1.0, confidence=0.75, route="rag", intent="factual", error=None, prompt_tokens=120,
    completion_tokens=3, flops=1.5e11, wall_s=0.25, cpu_s=0.01, energy_j=5.0, cost_usd=1e-5,
    calls=2, question="When was the Eiffel Tower completed?", kind="number",
)  # fmt: skip


def test_rows_keep_their_keys_and_order_and_read_back(tmp_path: Path) -> None:
    abstained = replace(ROW, item_id="8", answer="not found in the documents", correct=False,
                        f1=0.0, confidence=0.05, abstained=True)  # fmt: skip
    writer = ResultWriter(tmp_path / RESULTS, append=False)
    for row in (ROW, abstained):
        writer.write(row)
    writer.close()
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert [list(json.loads(line)) for line in lines] == [ROW_KEYS, ROW_KEYS]
    assert read_results(tmp_path / RESULTS) == [ROW, abstained]


def test_an_old_row_with_rags_message_reads_as_an_abstention() -> None:
    old = ROW.to_json()
    del old["abstained"]  # rows written before the field existed
    assert not ItemResult.from_json(old).abstained
    old |= {"answer": "not found in the documents", "correct": False}
    assert ItemResult.from_json(old).abstained
    # A new row says so itself, whatever its answer.
    assert not ItemResult.from_json(old | {"abstained": False}).abstained


@pytest.mark.parametrize("archive", sorted(ARCHIVE.glob("*.jsonl.gz")), ids=lambda p: p.name)
def test_the_archived_traces_still_load_with_their_abstentions(archive: Path) -> None:
    rows = read_results(archive)
    with gzip.open(archive, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == len(raw) >= 200  # the smallest archive: the thinking-budget run
    abstained = [r for r in rows if r.abstained]
    assert all(r.answer == "not found in the documents" for r in abstained)
    assert len(abstained) == sum(r["answer"] == "not found in the documents" for r in raw)
    if any(r.strategy == "rag" for r in rows):
        assert abstained and {r.strategy for r in abstained} == {"rag"}
    # Every field a row held comes back as it was; the benchmark's text is not among them.
    for row, data in zip(rows, raw, strict=True):
        assert {k: v for k, v in row.to_json().items() if k in data} == data
        assert not set(ARCHIVE_DROPS) & set(data)


@pytest.mark.parametrize("archive", sorted(ARCHIVE.glob("*.jsonl.gz")), ids=lambda p: p.name)
def test_archived_traces_get_their_questions_back_from_the_shared_data(archive: Path) -> None:
    shared_data_dir()
    rows = read_results(archive)
    restored = restore_questions(rows)
    assert all(r.question and r.gold for r in restored)
    assert [r.to_json() | {"question": "", "gold": ""} for r in restored] == [
        r.to_json() for r in rows
    ]
    # the gold answer read back is the one each row was scored against: rescored, the rows of
    # numbers (or, in an archive of sets without them, of free text) come out as they were
    kind = "number" if any(r.kind == "number" for r in restored) else "text"
    rescored = [r for r in restored if r.kind == kind and r.answer is not None]
    assert rescored
    assert all(score(r.answer, r.gold, kind=kind).correct == r.correct for r in rescored)


def test_rows_of_unnamed_datasets_without_questions_are_refused() -> None:
    row = ItemResult.from_json({
        "dataset": "mine.jsonl", "item_id": "1", "strategy": "cot", "answer": "2",
        "correct": True, "f1": 1.0, "confidence": 1.0, "route": "cot", "intent": None,
        "error": None, "calls": 1,
    })  # fmt: skip
    with pytest.raises(UsageError, match="not a named dataset"):
        restore_questions([row])


def test_adaptive_specs() -> None:
    assert is_adaptive("auto") and is_adaptive("oracle") and is_adaptive(" auto ")
    assert not is_adaptive("cot") and not is_adaptive("consistency:n=8")
    assert not is_adaptive("autocomplete")
