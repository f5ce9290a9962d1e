"""`apportion bench`: parse the options, plan and run the benchmark (`apportion.bench.session`),
and show its progress and summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from apportion.cli.common import (
    ConfigOption,
    DeterministicOption,
    LoggedProgress,
    MemoryLimitOption,
    NCtxOption,
    PolicyOption,
    RichPullProgress,
    err,
    fail,
    out,
    warnings_as_lines,
    with_model_options,
)
from apportion.config import Settings
from apportion.errors import ApportionError

if TYPE_CHECKING:
    from apportion.bench.runner import ItemResult

bench_app = typer.Typer(
    help=(
        "Run datasets through strategies; chart accuracy against compute.\n\n"
        "Example: apportion bench --dataset gsm8k --limit 50 "
        "--strategies direct,cot,program,symbolic --out runs/gsm8k"
    ),
)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="A JSONL file: one {question, answer, id?, kind?, choices?, aliases?} per line. "
            "Repeatable.",
        ),
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="A named set from the shared data dir: gsm8k, svamp, mawps, multiarith, aqua, "
            "squad, mmlu, commonsenseqa, strategyqa, bbh:<task>, bigbench_arithmetic, "
            "deepmind_mathematics (its number and true/false answers), logic_grid_puzzle. "
            "Repeatable.",
        ),
    ] = None,
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            help="Comma-separated strategy specs, parameters included: "
            "direct,cot,program,symbolic,auto,cot:temperature=0.7",
        ),
    ] = "direct,cot,program,symbolic",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model id or .gguf path.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Items per data source (a seeded sample).")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for sampling items and generation.")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for results and report.")
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            "--corpus",
            help="Documents for retrieval strategies (rag): a JSONL of {id, text, title?}, or "
            "'squad' for the SQuAD dev paragraphs. Indexed once into its own store.",
        ),
    ] = None,
    store_uri: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Where to index --corpus (default: $APPORTION_HOME/bench-stores/NAME-DIGEST"
            ".sqlite); also milvus-lite:DIR or a Milvus server URL.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run in --out; only the command that made it (same "
            "data, strategies, model, seed, corpus, limit) can.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the run in a non-empty --out (refused without it)."
        ),
    ] = False,
    resume_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--resume-from",
            help="Archived traces of this same command (benchmarks/traces/*.jsonl.gz, or a "
            "results.jsonl), e.g. from another machine: their rows of this run's items and "
            "strategies are written to --out as done and not run again. Repeatable.",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Cap on generated tokens per model call.")
    ] = None,
    cache_path: Annotated[
        Path | None,
        typer.Option(
            "--cache", help="Completion cache (default: $APPORTION_HOME/bench-cache.sqlite)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where named datasets live (also $APPORTION_DATA_DIR)."),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            help="Items run at once, for remote engines that serve calls in parallel (vLLM, "
            "SGLang, a pool of servers). Results, cache keys and --resume are those of a "
            "sequential run.",
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes for a model in this process, each with its own copy of it and "
            "threads/N threads (more memory; see the README for what it gains here).",
        ),
    ] = 1,
    n_ctx: NCtxOption = None,
    deterministic: DeterministicOption = False,
    memory_limit: MemoryLimitOption = None,
    policy: PolicyOption = None,
    config: ConfigOption = None,
) -> None:
    """Benchmark strategies on datasets: results.jsonl, summary.json, frontier plots, report.html.

    Every completion is cached, so re-running a command (into a new --out, or with --overwrite)
    replays in seconds. Ctrl-C saves what is done and exits 130, and a crash leaves a state
    that the same command with --resume continues; an item that raises is an error row.
    """
    if ctx.invoked_subcommand is not None:
        return
    from apportion.bench.session import Tally, plan_bench
    from apportion.errors import UsageError
    from apportion.runtime import Runtime

    try:
        if out is None:
            raise UsageError("--out is required", "e.g. --out runs/first")
        if not data and not dataset:
            raise UsageError("give at least one --data FILE or --dataset NAME")
        settings = with_model_options(
            Settings.load(config), n_ctx=n_ctx, deterministic=deterministic,
            memory_limit=memory_limit,
        )
        if store_uri is not None:
            settings.store = store_uri  # a setting, so sandboxed programs cannot read it
        # the store a run searches is its corpus's, indexed below; never the configured one
        engine = Runtime.from_settings(
            settings, policy=policy, pull_progress=RichPullProgress(err), documents="given"
        )
        run = plan_bench(
            engine, data=data or [], datasets=dataset or [], strategies=strategies, out=out,
            model=model, limit=limit, seed=seed, corpus=corpus, data_dir=data_dir, resume=resume,
            overwrite=overwrite, max_tokens=max_tokens,
            policy=None if policy is None else str(policy), resume_from=resume_from or [],
        )  # fmt: skip
        if run.adopt:
            err.print(
                f"{len(run.adopt)} traced rows of this run's items taken from --resume-from",
                highlight=False,
            )
        run.check_workers(workers, concurrency)
        run.check_concurrency(concurrency)
        if run.corpus is not None:
            with LoggedProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                indexing = bar.add_task(f"indexing {run.corpus.label}", total=None)
                indexed = run.index_corpus(
                    store_uri,
                    progress=lambda done, total: bar.update(indexing, completed=done, total=total),
                )
            err.print(
                f"corpus {indexed.label}: {indexed.report.written} document(s) indexed, "
                f"{indexed.report.skipped} unchanged; {indexed.chunks} chunks in {indexed.uri}",
                highlight=False,
                soft_wrap=True,
            )
    except ApportionError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print("interrupted before the run began; no result was written", highlight=False)
        raise typer.Exit(130) from None
    cache = run.open_cache(cache_path)
    progress = LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
    )
    task = progress.add_task("bench", total=None, status="")
    tally = Tally()

    def on_start(done: int, todo: int) -> None:
        progress.update(task, total=done + todo, completed=done)

    def on_result(result: ItemResult) -> None:
        tally.add(result)
        progress.update(task, advance=1, status=tally.line())

    results: list[ItemResult] = []
    interrupted = False
    try:
        with progress, warnings_as_lines():
            results = run.execute(
                cache, on_start=on_start, on_result=on_result, concurrency=concurrency,
                workers=workers,
            )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
    except ApportionError as e:
        fail(e)
    finally:
        cache.close()
        run.close()
    if interrupted:
        results = run.saved_results()
        err.print(
            f"interrupted: {len(results)} results are saved in {out}; "
            "run the same command with --resume to continue",
            highlight=False,
        )
    if not results:
        raise typer.Exit(130 if interrupted else 1)
    try:
        summary = run.write_report(results)
    except KeyboardInterrupt:
        # The results are on disk already; only the summary and plots are missing.
        err.print(
            f"interrupted while writing the report: {len(results)} results are saved in {out}; "
            "run the same command with --resume to finish and write it",
            highlight=False,
        )
        raise typer.Exit(130) from None
    print_summary(summary)
    err.print(
        f"wrote {out}/results.jsonl, summary.json, frontier.png, frontier_energy.png, "
        f"report.html (cache: {cache.hits} hits, {cache.misses} misses)",
        highlight=False,
        soft_wrap=True,
    )
    if interrupted:
        raise typer.Exit(130)


def print_summary(summary: dict[str, Any]) -> None:
    strategies = summary["strategies"]
    assert isinstance(strategies, dict)
    # Text answers (SQuAD-like) are scored by exact match; token F1 shows how near the rest came.
    with_f1 = any(s.get("text_f1") is not None for s in strategies.values())
    columns = ["strategy", "n", "exact match [95% CI]" if with_f1 else "accuracy [95% CI]"]
    columns += ["F1 (text)"] if with_f1 else []
    columns += ["mean FLOPs", "p95 FLOPs", "tokens", "wall s", "energy J", "errors"]
    table = Table(*columns)
    for name, s in strategies.items():
        lo, hi = s["accuracy_ci95"]
        cells = [name, str(s["n"]), f"{s['accuracy']:.1%} [{lo:.0%}, {hi:.0%}]"]
        if with_f1:
            cells.append("-" if s["text_f1"] is None else f"{s['text_f1']:.1%}")
        cells += [
            f"{s['flops']['mean']:.3g}", f"{s['flops']['p95']:.3g}", f"{s['tokens']['mean']:.0f}",
            f"{s['wall_s']['mean']:.2f}", f"{s['energy_j']['mean']:.1f}", str(s["errors"]),
        ]  # fmt: skip
        table.add_row(*cells)
    out.print(table)


@bench_app.command("convert")
def bench_convert(
    dataset: Annotated[str, typer.Argument(help="A named dataset, e.g. gsm8k or bbh:navigate.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write.")],
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Write a named dataset in the generic JSONL format that --data reads."""
    from apportion.bench.datasets import write_jsonl
    from apportion.bench.session import load_bench_items

    try:
        items, _ = load_bench_items([], [dataset], limit, seed, data_dir)
        n = write_jsonl(items, output)
    except ApportionError as e:
        fail(e)
    out.print(f"wrote {n} items to {output}", highlight=False)
