"""Runs items × strategies through the Engine, scores them and persists each result at once.

Durability: each result is one JSON line, appended and fsync'd before the next item starts, so a
kill -9 loses at most the item in flight; `--resume` skips what `results.jsonl` already holds
(a torn last line is dropped). Model calls go through the SQLite completion cache, so re-running
the same command replays instead of regenerating.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apportion.bench.datasets import BenchItem
from apportion.bench.scoring import score
from apportion.errors import UsageError
from apportion.runtime import Hooks, Request

# The trace record and its file are apportion.traces' (calibrate reads them too); bench code
# imports them from here as well.
from apportion.traces import RESULTS as RESULTS
from apportion.traces import ItemResult as ItemResult
from apportion.traces import ResultWriter as ResultWriter
from apportion.traces import read_results as read_results

if TYPE_CHECKING:
    from apportion.bench.workers import WorkerPool
    from apportion.engines.layers import CompletionCache
    from apportion.runtime import Engine

RUN_META = "run.json"
# Everything a run writes into its folder: what --overwrite removes.
RUN_FILES = (
    RESULTS,
    RUN_META,
    "summary.json",
    "frontier.png",
    "frontier_energy.png",
    "report.html",
)


@dataclass(frozen=True)
class RunMeta:
    """What made a run: `--resume` continues only a run the same command made."""

    model: str
    seed: int
    strategies: tuple[str, ...]
    max_tokens: int | None
    sources: tuple[str, ...]
    n_items: int
    # The data as the command named it ("--data /abs/x.jsonl", "--dataset gsm8k"), and a digest
    # of the items themselves, so a data file edited in place is other data too.
    data: tuple[str, ...] = ()
    items_digest: str = ""
    limit: int | None = None
    corpus: str | None = None
    policy: str | None = None
    # Whether model calls read every prompt afresh (deterministic mode), and so whether a
    # local model reused cached prompt prefixes (None: a remote server's own business).
    deterministic: bool = False
    prefix_reuse: bool | None = True

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> tuple[RunMeta, frozenset[str]]:
        """The stored meta, and which of its fields the file held (older runs lack some)."""
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        for name in ("strategies", "sources", "data"):
            if name in fields:
                fields[name] = tuple(fields[name])
        defaults: dict[str, Any] = {"model": "", "seed": 0, "strategies": (), "max_tokens": None,
                                    "sources": (), "n_items": 0}  # fmt: skip
        return cls(**(defaults | fields)), frozenset(fields)

    def differences(self, other: RunMeta, *, compare: frozenset[str] | None = None) -> list[str]:
        """What differs from `other`, as "what X here vs Y there", in the order a user reads
        them; `compare` limits it to the fields the stored run recorded (older runs lack some)."""
        diffs = []
        for name, label in _COMPARED:
            if compare is not None and name not in compare:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine == theirs:
                continue
            if name == "items_digest":
                diffs.append("items (the data's questions or answers changed)")
            else:
                diffs.append(f"{label} {_show(mine)} here vs {_show(theirs)} there")
        return diffs


# Compared on --resume, with the name the refusal gives each. `sources` and `n_items` follow from
# data, limit and the items; `max_tokens` is the model-call cap.
_COMPARED = (
    ("data", "data"),
    ("items_digest", "items"),
    ("limit", "limit"),
    ("corpus", "corpus"),
    ("strategies", "strategies"),
    ("model", "model"),
    ("seed", "seed"),
    ("max_tokens", "max_tokens"),
    ("policy", "policy"),
    ("deterministic", "deterministic"),
)


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    return "(none)" if value is None else str(value)


def items_digest(items: Sequence[BenchItem]) -> str:
    """A digest of the items in order: ids, questions, gold answers, kinds and options."""
    h = hashlib.sha256()
    for item in items:
        record = [item.dataset, item.id, item.question, item.answer, item.kind,
                  list(item.choices), list(item.aliases)]  # fmt: skip
        h.update(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def check_run_dir(out: Path, meta: RunMeta, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse, before any work, a run that would mix with another: a run is resumed only by
    the command that made it, and a folder that holds anything is written into only with
    --resume or --overwrite."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "give one of them")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder", "give a folder for the run")
    occupied = out.is_dir() and any(out.iterdir())
    if not occupied or overwrite:
        return
    if not resume:
        raise UsageError(
            f"--out {out} is not empty",
            "add --resume to continue the run in it, --overwrite to replace it, or give "
            "another --out",
        )
    meta_path = out / RUN_META
    if not meta_path.is_file():
        raise UsageError(
            f"{out} holds no {RUN_META}, so it is not a run that --resume can continue",
            "use another --out, or --overwrite to start a new run there",
        )
    try:
        previous, stored = RunMeta.from_json(json.loads(meta_path.read_text()))
    except (ValueError, TypeError, AttributeError) as e:
        raise UsageError(
            f"{meta_path} is unreadable ({e})", "use another --out, or --overwrite"
        ) from e
    diffs = meta.differences(previous, compare=stored)
    if diffs:
        raise UsageError(
            f"{out} holds a run made by a different command, so it cannot be resumed: "
            + "; ".join(diffs),
            "repeat the original command with --resume, use another --out, or --overwrite to "
            "replace that run",
        )


def prepare_run(
    out: Path, meta: RunMeta, *, resume: bool, overwrite: bool = False
) -> list[ItemResult]:
    """Check DIR (see `check_run_dir`), create or reopen it; return the results already done
    (empty unless resuming)."""
    check_run_dir(out, meta, resume=resume, overwrite=overwrite)
    done: list[ItemResult] = []
    if resume:
        done = read_results(out / RESULTS, repair=True)
    elif overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_META).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return done


def run_meta(
    items: Sequence[BenchItem],
    strategies: Sequence[str],
    *,
    model: str,
    seed: int = 0,
    max_tokens: int | None = None,
    sources: Sequence[str] = (),
    data: Sequence[str] = (),
    limit: int | None = None,
    corpus: str | None = None,
    policy: str | None = None,
    deterministic: bool = False,
    prefix_reuse: bool | None = True,
) -> RunMeta:
    return RunMeta(
        model, seed, tuple(strategies), max_tokens, tuple(sources), len(items), data=tuple(data),
        items_digest=items_digest(items), limit=limit, corpus=corpus, policy=policy,
        deterministic=deterministic, prefix_reuse=prefix_reuse,
    )  # fmt: skip


def prefix_reuse(engine: Engine, model: str) -> bool | None:
    """Whether the run's model calls reuse cached prompt prefixes: not in deterministic mode;
    None for a remote server, whose prompt cache is its own."""
    return None if engine.is_remote(model) else not engine.settings.deterministic


def pending(
    items: Sequence[BenchItem], strategies: Sequence[str], done: Sequence[ItemResult]
) -> Iterator[tuple[BenchItem, str]]:
    """Item-major order, so an interrupted run still compares every strategy on the same items."""
    finished = {r.key for r in done}
    for item in items:
        for strategy in strategies:
            if (item.dataset, item.id, strategy) not in finished:
                yield item, strategy


def adopt_rows(
    rows: Sequence[ItemResult],
    items: Sequence[BenchItem],
    strategies: Sequence[str],
    done: Sequence[ItemResult] = (),
) -> list[ItemResult]:
    """The rows of archived traces (`--resume-from`) that this run would make and has not: one
    per item × strategy of the run, with the item's question and gold answer (archives keep
    neither). A row whose question differs from the item's was made from other data: refused."""
    by_key = {(item.dataset, item.id): item for item in items}
    wanted = set(strategies)
    have = {r.key for r in done}
    adopted: list[ItemResult] = []
    for row in rows:
        item = by_key.get((row.dataset, row.item_id))
        if item is None or row.strategy not in wanted or row.key in have:
            continue
        if row.question and row.question != item.question:
            raise UsageError(
                f"the traced row {row.dataset}/{row.item_id} asks another question than this "
                "run's item of that id",
                "the traces were made from another version of the data; leave --resume-from out",
            )
        have.add(row.key)
        adopted.append(replace(row, question=item.question, gold=item.answer, kind=item.kind))
    return adopted


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
    """One item × strategy. Whatever the item raises (an engine error, a context overflow, a
    number a parser cannot hold) becomes an error row: one item never ends a run."""
    try:
        return _run_one(
            engine, item, strategy, model=model, seed=seed, max_tokens=max_tokens, cache=cache
        )
    except Exception as e:  # recorded in the row, with its type; Ctrl-C (not an Exception) passes
        kind = type(e).__name__
        return ItemResult(
            dataset=item.dataset, item_id=item.id, strategy=strategy, gold=item.answer,
            answer=None, correct=False, f1=0.0, confidence=0.0, route=strategy, intent=None,
            error=f"{kind}: {e}", calls=0, question=item.question, kind=item.kind,
            error_type=kind,
        )  # fmt: skip


def _run_one(
    engine: Engine,
    item: BenchItem,
    strategy: str,
    *,
    model: str,
    seed: int,
    max_tokens: int | None,
    cache: CompletionCache | None,
) -> ItemResult:
    request = Request(
        item.question, strategy=strategy, model=model, max_tokens=max_tokens, kind=item.kind,
        choices=tuple(item.choices), seed=seed,
    )  # fmt: skip
    answer = engine.answer(request, Hooks(cache=cache))
    predicted = answer.answer if not answer.error else None
    s = score(predicted, item.answer, kind=item.kind, aliases=item.aliases, choices=item.choices)
    t = answer.ledger
    return ItemResult(
        **t.cost_fields(),
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
        calls=len(t.calls),
        stopped_for_budget=answer.stopped_for_budget,
        question=item.question,
        kind=item.kind,
        abstained=answer.abstained,
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
    overwrite: bool = False,
    cache: CompletionCache | None = None,
    sources: Sequence[str] = (),
    data: Sequence[str] = (),
    limit: int | None = None,
    corpus: str | None = None,
    policy: str | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    concurrency: int = 1,
    workers: WorkerPool | None = None,
    adopt: Sequence[ItemResult] = (),
) -> list[ItemResult]:
    """Run every pending item × strategy; return all results (earlier ones included).

    `adopt` holds rows of archived traces that this same command made on another machine
    (`--resume-from`): those of its items × strategies that the run lacks are written first,
    as done, so the run folder holds the whole run and a later --resume needs no archive.

    `data`, `limit`, `corpus` and `policy` describe the command (with the rest, what --resume
    must match); `sources` is how the report names the data. With `concurrency` > 1, that many
    items run at once (for engines that serve calls in parallel); with `workers`, the items run
    in those worker processes (bench/workers.py) instead of this one. Either way, rows are
    written in the order a sequential run writes them, each as soon as all before it are done,
    so the results file, the cache keys and --resume are those of a sequential run."""
    meta = run_meta(
        items, strategies, model=model, seed=seed, max_tokens=max_tokens, sources=sources,
        data=data, limit=limit, corpus=corpus, policy=policy,
        deterministic=engine.settings.deterministic, prefix_reuse=prefix_reuse(engine, model),
    )  # fmt: skip
    done = prepare_run(out, meta, resume=resume, overwrite=overwrite)
    adopted = adopt_rows(adopt, items, strategies, done)
    writer = ResultWriter(out / RESULTS, append=bool(done))
    for row in adopted:
        writer.write(row)
    done = [*done, *adopted]
    todo = list(pending(items, strategies, done))
    if on_start:
        on_start(len(done), len(todo))
    results = list(done)

    def one(item: BenchItem, strategy: str) -> ItemResult:
        return run_one(
            engine, item, strategy, model=model, seed=seed, max_tokens=max_tokens, cache=cache
        )

    try:
        for result in _in_order(one, todo, concurrency, workers):
            writer.write(result)
            results.append(result)
            if on_result:
                on_result(result)
    finally:
        writer.close()
    return results


def _in_order(
    one: Callable[[BenchItem, str], ItemResult],
    todo: Sequence[tuple[BenchItem, str]],
    concurrency: int,
    workers: WorkerPool | None = None,
) -> Iterator[ItemResult]:
    """The results of `todo`, in order: one at a time, `concurrency` at once, or in `workers`.
    When the caller stops (Ctrl-C), items not started are dropped and the running ones are left
    to finish (or end with their worker): they are not written, and --resume runs them again."""
    if workers is not None:
        try:
            futures = [workers.submit(item, strategy) for item, strategy in todo]
            for future in futures:
                yield future.result()
        finally:
            workers.close()
        return
    if concurrency <= 1:
        for item, strategy in todo:
            yield one(item, strategy)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        futures = [pool.submit(one, item, strategy) for item, strategy in todo]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
