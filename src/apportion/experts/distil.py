"""Training data by distillation: run a strategy on a (usually larger) model over questions
with known answers, keep the replies that were right, and write them as chat examples whose
prompt is the strategy's own, so an expert learns to write what the strategy reads.

For `program` a reply is kept only when its program, run in the sandbox, returned the gold
answer; it is written as the one fenced code block the strategy asks for. For `direct` and
`cot` the reply text is kept when its answer scored right.

Model calls go through the completion cache (the bench's, by default), so a bench run of the
same strategy and model has already paid for them, and an interrupted distillation resumes
where it stopped: the items done are read back from the output file's sidecar.

Datasets repeat each other (mawps holds all 600 multiarith questions under ids of its own), so
an item whose question, compared without case and punctuation, is already among the examples
is skipped: counted once, it is learned once, and the example count means what it says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

from apportion.errors import UsageError
from apportion.traces import question_key
from apportion.types import AnswerKind

if TYPE_CHECKING:
    from apportion.bench.datasets import BenchItem
    from apportion.engines.layers import CompletionCache
    from apportion.runtime import Runtime

DISTILLABLE = ("program", "cot", "direct")


def items_of_runs(runs: Sequence[Path], strategy: str) -> list[BenchItem]:
    """The items bench runs (folders or results files) answered with `strategy`, each once,
    in the runs' order: distilling them replays the run's model calls from the cache."""
    from apportion.bench.datasets import BenchItem, restore_questions
    from apportion.traces import read_results

    items: dict[tuple[str, str], BenchItem] = {}
    for run in runs:
        path = run / "results.jsonl" if run.is_dir() else run
        if not path.exists():
            raise UsageError(f"no bench results at {path}", "pass a bench --out folder")
        for row in restore_questions(read_results(path)):
            kind = row.kind
            if row.strategy == strategy and kind in get_args(AnswerKind):
                items.setdefault((row.dataset, row.item_id), BenchItem(
                    id=row.item_id, question=row.question, answer=row.gold,
                    kind=cast(AnswerKind, kind),
                    dataset=row.dataset,
                ))  # fmt: skip
    if not items:
        raise UsageError(f"the runs hold no {strategy!r} rows", "check --strategy and --runs")
    return list(items.values())


@dataclass
class DistilReport:
    """How a distillation went: items seen (this run and before), and examples kept."""

    done: int = 0
    kept: int = 0
    skipped: int = 0  # done before (resumed)
    errors: int = 0
    repeated: int = 0  # the question of an example already written, under another id


def _written_questions(out: Path) -> set[str]:
    """The questions of the examples already in `out` (each example's last user turn)."""
    if not out.exists():
        return set()
    found = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        if line.strip():
            users = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
            if users:
                found.add(question_key(users[-1]))
    return found


def _reply(strategy: str, attempt: Any) -> str:
    if strategy == "program":
        return f"```python\n{attempt.rationale.strip()}\n```"
    return str(attempt.rationale).strip()


def distil(
    runtime: Runtime,
    items: Sequence[BenchItem],
    *,
    strategy: str,
    model: str,
    out: Path,
    cache: CompletionCache | None,
    seed: int = 0,
    max_tokens: int | None = None,
    on_item: Callable[[DistilReport], None] | None = None,
) -> DistilReport:
    """Append an example to `out` for each item the strategy got right (see above)."""
    from apportion.bench.scoring import score
    from apportion.runtime import Hooks, Request
    from apportion.types import Message, Query

    name = strategy.partition(":")[0]
    if name not in DISTILLABLE:
        raise UsageError(
            f"cannot distil from {strategy!r}",
            f"use one of: {', '.join(DISTILLABLE)} (a strategy whose one reply is the answer)",
        )
    built = runtime.registry.build(strategy)
    seen_file = out.with_name(out.name + ".done")
    seen = set(seen_file.read_text(encoding="utf-8").split()) if seen_file.exists() else set()
    report = DistilReport()
    written = _written_questions(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as examples, seen_file.open("a") as done:
        for item in items:
            key = f"{item.dataset}/{item.id}"
            if key in seen:
                report.skipped += 1
                continue
            if question_key(item.question) in written:
                report.repeated += 1
                continue
            request = Request(
                item.question, strategy=strategy, model=model, max_tokens=max_tokens,
                kind=item.kind, choices=tuple(item.choices), seed=seed,
            )  # fmt: skip
            try:
                answer = runtime.answer(request, Hooks(cache=cache))
            except Exception:  # an item that breaks is not an example; the run goes on
                answer = None
            report.done += 1
            if answer is None or answer.error:
                report.errors += 1
            else:
                right = score(answer.answer, item.answer, kind=item.kind,
                              aliases=item.aliases, choices=item.choices).correct  # fmt: skip
                attempt = next((a for a in answer.attempts if a.ok), None)
                if right and attempt is not None and attempt.rationale.strip():
                    query = Query(item.question, kind=item.kind, choices=tuple(item.choices))
                    prompt: list[Message] = built.messages(query)  # type: ignore[attr-defined]
                    chat = [{"role": m.role, "content": m.content} for m in prompt]
                    chat.append({"role": "assistant", "content": _reply(name, attempt)})
                    record = {"messages": chat, "source": key, "gold": item.answer}
                    examples.write(json.dumps(record) + "\n")
                    examples.flush()
                    written.add(question_key(item.question))
                    report.kept += 1
            done.write(key + "\n")
            done.flush()
            if on_item is not None:
                on_item(report)
    return report
