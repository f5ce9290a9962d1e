"""Distillation keeps only the programs whose sandboxed result is the gold answer, in the
strategy's own prompt, and resumes where it stopped. The teacher replays fixed replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apportion.bench.datasets import BenchItem
from apportion.config import Settings
from apportion.errors import UsageError
from apportion.experts.distil import distil
from apportion.router.policy import RulePolicy
from apportion.runtime import Runtime
from apportion.strategies.program import Program
from apportion.types import Query
from fakes import ScriptedEngine

RIGHT = "```python\ndef solve():\n    return 2 + 3\n```"
WRONG = "```python\ndef solve():\n    return 2 * 3\n```"


def _items() -> list[BenchItem]:
    return [
        BenchItem(id=str(i), question=f"Tom has 2 apples and gets 3 more ({i}). How many?",
                  answer="5", kind="number", dataset="toy")
        for i in range(3)
    ]  # fmt: skip


def _runtime(tmp_path: Path, replies: list[str]) -> tuple[Runtime, ScriptedEngine]:
    runtime = Runtime(settings=Settings(home=tmp_path, default_model="teacher"),
                      policy=RulePolicy())  # fmt: skip
    teacher = ScriptedEngine(list(replies), model_id="teacher")
    runtime.register(teacher)
    return runtime, teacher


def test_keeps_right_programs_only_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "pal.jsonl"
    runtime, teacher = _runtime(tmp_path, [RIGHT, WRONG])
    items = _items()
    report = distil(runtime, items[:2], strategy="program", model="teacher", out=out, cache=None)
    assert (report.done, report.kept, report.skipped) == (2, 1, 0)
    (example,) = [json.loads(line) for line in out.read_text().splitlines()]
    prompt = Program().messages(Query(items[0].question))
    assert example["messages"][:-1] == [{"role": m.role, "content": m.content} for m in prompt]
    assert example["messages"][-1] == {"role": "assistant", "content": RIGHT}
    assert example["source"] == "toy/0"
    # a rerun skips what is done: only the third item reaches the teacher
    runtime, teacher = _runtime(tmp_path, [RIGHT])
    report = distil(runtime, items, strategy="program", model="teacher", out=out, cache=None)
    assert (report.done, report.kept, report.skipped) == (1, 1, 2)
    assert len(teacher.calls) == 1
    assert [json.loads(x)["source"] for x in out.read_text().splitlines()] == ["toy/0", "toy/2"]


def test_a_question_already_learned_under_another_id_is_not_distilled_again(
    tmp_path: Path,
) -> None:
    """mawps holds multiarith's questions under ids of its own: one example per question."""
    out = tmp_path / "pal.jsonl"
    question = "Tom has 2 apples and gets 3 more. How many?"
    first = BenchItem(id="multiarith-7", question=question, answer="5", kind="number",
                      dataset="multiarith")  # fmt: skip
    again = BenchItem(id="mawps-multiarith-7", question="tom has 2 apples, and gets 3 more: how "
                      "many?", answer="5", kind="number", dataset="mawps")  # fmt: skip
    runtime, teacher = _runtime(tmp_path, [RIGHT, RIGHT])
    report = distil(runtime, [first], strategy="program", model="teacher", out=out, cache=None)
    assert report.kept == 1
    # a later run, over the other dataset, reads the questions already in the file
    report = distil(runtime, [again], strategy="program", model="teacher", out=out, cache=None)
    assert (report.done, report.kept, report.repeated) == (0, 0, 1)
    assert len(teacher.calls) == 1 and len(out.read_text().splitlines()) == 1


def test_refuses_strategies_without_one_reply(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path, [])
    with pytest.raises(UsageError, match="cannot distil"):
        distil(runtime, _items(), strategy="consistency", model="teacher",
               out=tmp_path / "x.jsonl", cache=None)  # fmt: skip


def test_items_of_bench_runs_are_distilled_from_the_cache(tmp_path: Path) -> None:
    """`--runs`: the items a bench run answered with the strategy, each once; their model
    calls replay from the completion cache instead of reaching the teacher again."""
    from dataclasses import asdict

    from apportion.bench.cache import SqliteCompletionCache
    from apportion.bench.runner import run_one
    from apportion.experts.distil import items_of_runs

    cache = SqliteCompletionCache(tmp_path / "cache.sqlite")
    runtime, teacher = _runtime(tmp_path, [RIGHT, WRONG])
    run = tmp_path / "run"
    run.mkdir()
    with (run / "results.jsonl").open("w") as f:
        for item in _items()[:2]:
            row = run_one(runtime, item, "program", model="teacher", seed=0, max_tokens=None,
                          cache=cache)  # fmt: skip
            f.write(json.dumps(asdict(row)) + "\n")
    items = items_of_runs([run, run], "program")  # a run named twice counts once
    assert [(i.dataset, i.id, i.answer) for i in items] == [("toy", "0", "5"), ("toy", "1", "5")]
    runtime, teacher = _runtime(tmp_path, [])  # a teacher with nothing to say
    out = tmp_path / "pal.jsonl"
    report = distil(runtime, items, strategy="program", model="teacher", out=out, cache=cache)
    assert (report.done, report.kept) == (2, 1) and teacher.calls == []
    with pytest.raises(UsageError, match="no 'cot' rows"):
        items_of_runs([run], "cot")
