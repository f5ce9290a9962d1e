"""A bench run as `apportion bench` asks for one, checked before any work and then run.

`plan_bench` turns the command's choices into a `BenchRun`: it loads the items (a seeded sample
per source), checks the strategy specs and the model, resolves the corpus, and refuses a run
that would mix with the one already in the output folder, all before a document is indexed or a
model called. The run then indexes its corpus (`index_corpus`), runs every item × strategy
(`execute`, which reports through callbacks), and writes the summary, plots and report.

The command line only parses options, builds the engine, calls these and prints; scripts
(benchmarks/*.py) load items the way the command does with `load_bench_items`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apportion.bench.datasets import BenchItem, load_jsonl, load_named
from apportion.bench.runner import (
    RESULTS,
    ItemResult,
    adopt_rows,
    check_run_dir,
    prefix_reuse,
    read_results,
    run_bench,
    run_meta,
)
from apportion.errors import UsageError

if TYPE_CHECKING:
    from apportion.bench.cache import SqliteCompletionCache
    from apportion.bench.corpus import BenchCorpus
    from apportion.bench.workers import WorkerPool
    from apportion.engines.layers import CompletionCache
    from apportion.runtime import Engine
    from apportion.tools.store.base import DocumentStore
    from apportion.tools.store.ingest import IngestReport

# (done, total): how far an indexing or a run has got.
ProgressCallback = Callable[[int, int], None]

CACHE_FILE = "bench-cache.sqlite"  # under $APPORTION_HOME unless --cache names another


def load_bench_items(
    data: Sequence[Path], names: Sequence[str], limit: int | None, seed: int, data_dir: Path | None
) -> tuple[list[BenchItem], list[str]]:
    """The items of JSONL files and named datasets, each source cut to a seeded sample of
    `limit`, and how the report names each source ("gsm8k (50)")."""
    groups: list[tuple[str, list[BenchItem]]] = []
    for path in data:
        if not path.is_file():
            raise UsageError(f"data file not found: {path}")
        groups.append((path.name, list(load_jsonl(path))))
    for name in names:
        groups.append((name, list(load_named(name, data_dir=data_dir))))
    items: list[BenchItem] = []
    sources = []
    for source, group in groups:
        if limit is not None and limit < len(group):
            # a seeded sample, in the file's order, so --limit takes a representative slice
            keep = sorted(random.Random(seed).sample(range(len(group)), limit))
            group = [group[i] for i in keep]
        items.extend(group)
        sources.append(f"{source} ({len(group)})")
    if not items:
        raise UsageError("the data sources hold no items")
    return items, sources


def command_data(data: Sequence[Path], names: Sequence[str]) -> tuple[str, ...]:
    """The data as the command named it, files by absolute path: part of what --resume checks."""
    return (*(f"--data {p.resolve()}" for p in data), *(f"--dataset {n}" for n in names))


def index_bench_corpus(
    corpus: BenchCorpus, uri: str, *, progress: ProgressCallback | None = None
) -> tuple[DocumentStore, IngestReport]:
    """Open the store at `uri` and bring `corpus` into it (unchanged documents are skipped);
    the store is closed again if indexing fails or is interrupted."""
    from apportion.tools.store import open_store
    from apportion.tools.store.ingest import count_documents, ingest_documents

    store = open_store(uri)
    try:
        total = count_documents([corpus.path])
        if progress is not None:
            progress(0, total)
        report = ingest_documents(store, corpus.documents(), total=total, progress=progress)
    except BaseException:
        store.close()
        raise
    return store, report


@dataclass(frozen=True)
class IndexedCorpus:
    """What indexing a run's corpus did: where, what it wrote, what the store now holds."""

    label: str
    uri: str
    report: IngestReport
    chunks: int


@dataclass
class Tally:
    """Accuracy so far per strategy, and how many of its items raised: the progress line."""

    correct: dict[str, list[bool]] = field(default_factory=dict)
    raised: dict[str, int] = field(default_factory=dict)

    def add(self, result: ItemResult) -> None:
        self.correct.setdefault(result.strategy, []).append(result.correct)
        if result.error_type is not None:
            self.raised[result.strategy] = self.raised.get(result.strategy, 0) + 1

    def line(self) -> str:
        return "  ".join(
            f"{k} {sum(v) / len(v):.0%}"
            + (f" ({self.raised[k]} failed)" if k in self.raised else "")
            for k, v in self.correct.items()
        )


@dataclass
class BenchRun:
    """A checked run: the items, the strategies and model they go through, and its folder.

    `data`, `limit`, `corpus_spec` and `policy` describe the command that made it (with the rest,
    what --resume must match); `sources` is how the report names the data."""

    engine: Engine
    items: list[BenchItem]
    sources: list[str]
    strategies: list[str]
    model: str
    out: Path
    seed: int
    max_tokens: int | None
    resume: bool
    overwrite: bool
    data: tuple[str, ...]
    limit: int | None
    corpus_spec: str | None
    corpus: BenchCorpus | None
    policy: str | None
    # Where the corpus was indexed, once it is (workers open the same store).
    store_uri: str | None = None
    # Rows of archived traces to take as done (--resume-from), those of this run's items.
    adopt: list[ItemResult] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.model} · seed {self.seed} · " + ", ".join(self.sources)

    def index_corpus(
        self, store_uri: str | None, *, progress: ProgressCallback | None = None
    ) -> IndexedCorpus:
        """Index the corpus (into `store_uri`, else its own store under $APPORTION_HOME) and
        give the store to the engine, so retrieval strategies read it."""
        if self.corpus is None:
            raise ValueError("this run has no corpus to index (no --corpus)")
        uri = store_uri or str(self.corpus.default_store(self.engine.settings.home))
        store, report = index_bench_corpus(self.corpus, uri, progress=progress)
        self.engine.store = store
        self.store_uri = uri
        self.sources.append(f"corpus {self.corpus.label}")
        return IndexedCorpus(self.corpus.label, uri, report, store.count())

    def open_cache(self, path: Path | None) -> SqliteCompletionCache:
        """The completion cache: `path`, else the one shared by all runs under $APPORTION_HOME."""
        from apportion.bench.cache import SqliteCompletionCache

        return SqliteCompletionCache(path or self.engine.settings.home / CACHE_FILE)

    def execute(
        self,
        cache: CompletionCache | None,
        *,
        on_start: Callable[[int, int], None] | None = None,
        on_result: Callable[[ItemResult], None] | None = None,
        concurrency: int = 1,
        workers: int = 1,
    ) -> list[ItemResult]:
        """Run every pending item × strategy; all results, earlier ones (--resume) included.
        `on_start(done, todo)` comes once before the first item, `on_result` after each;
        `concurrency` items run at once (see `check_concurrency`), or `workers` processes
        run them (see `check_workers`)."""
        from apportion.bench.cache import SqliteCompletionCache

        pool = self._worker_pool(cache, workers) if workers > 1 else None
        try:
            return run_bench(
                self.engine, self.items, self.strategies, out=self.out, model=self.model,
                seed=self.seed, max_tokens=self.max_tokens, resume=self.resume,
                overwrite=self.overwrite, cache=cache, sources=self.sources, data=self.data,
                limit=self.limit, corpus=self.corpus_spec, policy=self.policy,
                on_result=on_result, on_start=on_start, concurrency=concurrency, workers=pool,
                adopt=self.adopt,
            )  # fmt: skip
        finally:
            if pool is not None and isinstance(cache, SqliteCompletionCache):
                cache.count(*pool.cache_counts)  # the workers' lookups, on the same file

    def check_workers(self, workers: int, concurrency: int) -> None:
        """`workers` processes, each with its own copy of the model: not with --concurrency,
        and not with a store only one process may open (milvus-lite)."""
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if workers > 1 and concurrency > 1:
            raise UsageError(
                "--workers and --concurrency do not combine",
                "--workers for models in this process, --concurrency for remote engines",
            )
        if workers > 1 and self.store_uri is not None and self.store_uri.startswith("milvus-lite:"):
            raise UsageError(
                "--workers needs a store several processes can open; milvus-lite allows one",
                "index the corpus into the embedded store (the default) or a Milvus server",
            )

    def _worker_pool(self, cache: CompletionCache | None, workers: int) -> WorkerPool:
        from apportion.bench.cache import SqliteCompletionCache
        from apportion.bench.workers import WorkerPool, WorkerSetup, threads_each
        from apportion.engines import catalogue

        settings = self.engine.settings
        for model in self.models_called():  # pulled here once, not by every worker at once
            if not self.engine.is_remote(model) and model in catalogue.CATALOGUE:
                catalogue.resolve(model, settings.models_dir, progress=self.engine.pull_progress)
        shared = settings.model_copy(update={"threads": threads_each(settings.threads, workers)})
        setup = WorkerSetup(
            settings=shared.model_dump(mode="json"), policy=self.policy, store=self.store_uri,
            cache=str(cache.path) if isinstance(cache, SqliteCompletionCache) else None,
            model=self.model, seed=self.seed, max_tokens=self.max_tokens,
        )  # fmt: skip
        return WorkerPool(setup, workers)

    def check_concurrency(self, concurrency: int) -> None:
        """Running items at once pays only against engines that serve calls in parallel, and
        a model in this process would be charged the time its calls wait for each other:
        refuse `concurrency` > 1 unless every model the run may call is remote."""
        if concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
        if concurrency == 1:
            return
        local = [m for m in self.models_called() if not self.engine.is_remote(m)]
        if local:
            raise UsageError(
                f"--concurrency runs items at once against remote engines; {local[0]} runs in "
                "this process, where calls wait for each other (and would be charged for it)",
                "bench that model with --concurrency 1, or serve it behind an OpenAI-compatible "
                "server ([[engines]] in the config)",
            )

    def models_called(self) -> list[str]:
        """Every model the run's strategies may call. (`auto` calls the run's model: neither
        the shipped policy nor the rule ladders route to a cascade.)"""
        from apportion.strategies.registry import models_of

        settings = self.engine.settings
        models = [self.model]
        for spec in self.strategies:
            models += models_of(
                spec, model=self.model, small=settings.default_model, large=settings.large_model
            )
        return list(dict.fromkeys(models))

    def saved_results(self) -> list[ItemResult]:
        """The results on disk: what an interrupted run keeps."""
        return read_results(self.out / RESULTS)

    def write_report(self, results: Sequence[ItemResult]) -> dict[str, Any]:
        """summary.json, the frontier plots and report.html; the summary."""
        from apportion.bench.report import write_report

        return write_report(results, self.out, title=self.title)

    def close(self) -> None:
        """Close the corpus's store, if the run opened one."""
        if self.engine.store is not None:
            self.engine.store.close()


def plan_bench(
    engine: Engine,
    *,
    data: Sequence[Path],
    datasets: Sequence[str],
    strategies: str,
    out: Path,
    model: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    corpus: str | None = None,
    data_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_tokens: int | None = None,
    policy: str | None = None,
    resume_from: Sequence[Path] = (),
) -> BenchRun:
    """Check everything a run needs before any work: strategy names and parameters, the model,
    the corpus, the items, that --out holds no other run (see `check_run_dir`), and the
    archived traces of `resume_from` (rows of this run's items × strategies are taken as done)."""
    from apportion.strategies.registry import parse_spec, split_specs

    specs = split_specs(strategies)
    for spec in specs:
        if spec != "auto":
            engine.registry.build(spec)  # validate names and parameters before any work
        if parse_spec(spec).name in engine.registry.store_readers() and corpus is None:
            raise UsageError(
                f"{spec} retrieves from documents; give them with --corpus",
                "e.g. --dataset squad --corpus squad",
            )
    model_id = model or engine.settings.default_model
    engine.check_model(model_id)
    bench_corpus = None
    if corpus is not None:
        from apportion.bench.corpus import resolve_corpus

        bench_corpus = resolve_corpus(corpus, data_dir=data_dir)
    items, sources = load_bench_items(data, datasets, limit, seed, data_dir)
    named_data = command_data(data, datasets)
    # Refuse a run that would mix with the one in --out before indexing or loading anything.
    meta = run_meta(
        items, specs, model=model_id, seed=seed, max_tokens=max_tokens, data=named_data,
        limit=limit, corpus=corpus, policy=policy, deterministic=engine.settings.deterministic,
        prefix_reuse=prefix_reuse(engine, model_id),
    )  # fmt: skip
    check_run_dir(out, meta, resume=resume, overwrite=overwrite)
    traced: list[ItemResult] = []
    for path in resume_from:
        if not path.is_file():
            raise UsageError(
                f"--resume-from {path}: no such file",
                "give an archive of this command's traces (benchmarks/traces/*.jsonl.gz) or a "
                "run's results.jsonl",
            )
        traced += read_results(path)
    adopt = adopt_rows(traced, items, specs, read_results(out / RESULTS) if resume else [])
    if resume_from and not adopt and not resume:
        raise UsageError(
            "--resume-from holds no row of this run's items and strategies",
            "check that the traces were made by this command (same datasets, --limit, --seed "
            "and strategies)",
        )
    return BenchRun(
        engine=engine, items=items, sources=sources, strategies=specs, model=model_id, out=out,
        seed=seed, max_tokens=max_tokens, resume=resume, overwrite=overwrite, data=named_data,
        limit=limit, corpus_spec=corpus, corpus=bench_corpus, policy=policy, adopt=adopt,
    )  # fmt: skip
