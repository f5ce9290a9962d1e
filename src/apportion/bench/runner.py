"""Runs items × strategies through the Engine, scores them and persists each result at once.

Durability: each result is one JSON line, appended and fsync'd before the next item starts, so a
kill -9 loses at most the item in flight; `--resume` skips what `results.jsonl` already holds
(a torn last line is dropped). Model calls go through the SQLite completion cache, so re-running
the same command replays instead of regenerating.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apportion.bench.datasets import BenchItem
from apportion.bench.scoring import score
from apportion.errors import ApportionError, UsageError

if TYPE_CHECKING:
    from apportion.engine import Engine
    from apportion.strategies.base import CompletionCache

RESULTS = "results.jsonl"
RUN_META = "run.json"


@dataclass(frozen=True)
class ItemResult:
    """One item × strategy: the answer, whether it was right, and what it cost."""

    dataset: str
    item_id: str
    strategy: str
    gold: str
    answer: str | None
    correct: bool
    f1: float
    confidence: float
    route: str  # the strategy that produced the answer (differs from `strategy` for ladders)
    intent: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    flops: float
    wall_s: float
    cpu_s: float
    energy_j: float
    cost_usd: float
    calls: int
    stopped_for_budget: bool = False
    # The item itself, so traces are self-contained for `apportion calibrate`.
    question: str = ""
    kind: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.item_id, self.strategy)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class RunMeta:
    model: str
    seed: int
    strategies: tuple[str, ...]
    max_tokens: int | None
    sources: tuple[str, ...]
    n_items: int

    def compatible_with(self, other: RunMeta) -> bool:
        return (self.model, self.seed, self.max_tokens) == (
            other.model,
            other.seed,
            other.max_tokens,
        )


def read_results(path: Path, *, repair: bool = False) -> list[ItemResult]:
    """Results in `path`; a torn final line (a kill mid-write) is dropped, and with `repair`
    cut from the file so later appends start on a clean line."""
    if not path.exists():
        return []
    results: list[ItemResult] = []
    good_bytes = 0
    if path.suffix == ".gz":  # archived traces (benchmarks/traces): read only
        with gzip.open(path, "rt", encoding="utf-8") as z:
            return [ItemResult.from_json(json.loads(line)) for line in z if line.strip()]
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                results.append(ItemResult.from_json(json.loads(raw)))
            except (ValueError, TypeError, KeyError):
                break
            good_bytes += len(raw)
    if repair and good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return results


class ResultWriter:
    def __init__(self, path: Path, *, append: bool) -> None:
        self._f = path.open("a" if append else "w", encoding="utf-8")

    def write(self, result: ItemResult) -> None:
        self._f.write(json.dumps(asdict(result)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def prepare_run(out: Path, meta: RunMeta, *, resume: bool) -> list[ItemResult]:
    """Create or reopen DIR; return the results already done (empty unless resuming)."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / RUN_META
    done: list[ItemResult] = []
    if resume and meta_path.exists():
        previous = RunMeta(**{**json.loads(meta_path.read_text()), "strategies": (), "sources": ()})
        if not previous.compatible_with(meta):
            raise UsageError(
                f"{out} holds a run with model={previous.model}, seed={previous.seed}, "
                f"max_tokens={previous.max_tokens}; it cannot be resumed with different ones",
                "use another --out, or the same --model/--seed/--max-tokens",
            )
        done = read_results(out / RESULTS, repair=True)
    elif not resume:
        (out / RESULTS).unlink(missing_ok=True)
    meta_path.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return done


def pending(
    items: Sequence[BenchItem], strategies: Sequence[str], done: Sequence[ItemResult]
) -> Iterator[tuple[BenchItem, str]]:
    """Item-major order, so an interrupted run still compares every strategy on the same items."""
    finished = {r.key for r in done}
    for item in items:
        for strategy in strategies:
            if (item.dataset, item.id, strategy) not in finished:
                yield item, strategy


def run_one(
    engine: Engine,
    item: BenchItem,
    strategy: str,
    *,
    model: str,
    seed: int,
    max_tokens: int | None,
    cache: CompletionCache | None,
) -> ItemResult:
    try:
        answer = engine.ask(
            item.question,
            strategy=strategy,
            model=model,
            max_tokens=max_tokens,
            kind=item.kind,
            choices=item.choices,
            seed=seed,
            cache=cache,
        )
    except ApportionError as e:  # e.g. a question beyond the context: a failed item, not a crash
        return ItemResult(
            item.dataset, item.id, strategy, item.answer, None, False, 0.0, 0.0, strategy, None,
            str(e), 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, question=item.question, kind=item.kind,
        )  # fmt: skip
    predicted = answer.answer if not answer.error else None
    s = score(predicted, item.answer, kind=item.kind, aliases=item.aliases, choices=item.choices)
    t = answer.ledger
    return ItemResult(
        dataset=item.dataset,
        item_id=item.id,
        strategy=strategy,
        gold=item.answer,
        answer=predicted,
        correct=s.correct,
        f1=s.f1,
        confidence=answer.confidence,
        route=answer.strategy,
        intent=answer.intent,
        error=answer.error,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        flops=t.flops,
        wall_s=t.wall_s,
        cpu_s=t.cpu_s,
        energy_j=t.energy_j,
        cost_usd=t.cost_usd,
        calls=len(t.calls),
        stopped_for_budget=answer.stopped_for_budget,
        question=item.question,
        kind=item.kind,
    )


def run_bench(
    engine: Engine,
    items: Sequence[BenchItem],
    strategies: Sequence[str],
    *,
    out: Path,
    model: str,
    seed: int = 0,
    max_tokens: int | None = None,
    resume: bool = False,
    cache: CompletionCache | None = None,
    sources: Sequence[str] = (),
    on_result: Callable[[ItemResult], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> list[ItemResult]:
    """Run every pending item × strategy; return all results (earlier ones included)."""
    meta = RunMeta(model, seed, tuple(strategies), max_tokens, tuple(sources), len(items))
    done = prepare_run(out, meta, resume=resume)
    todo = list(pending(items, strategies, done))
    if on_start:
        on_start(len(done), len(todo))
    results = list(done)
    writer = ResultWriter(out / RESULTS, append=bool(done))
    try:
        for item, strategy in todo:
            result = run_one(
                engine, item, strategy, model=model, seed=seed, max_tokens=max_tokens, cache=cache
            )
            writer.write(result)
            results.append(result)
            if on_result:
                on_result(result)
    finally:
        writer.close()
    return results
