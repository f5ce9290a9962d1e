"""`apportion experts`: distil training data, train LoRA experts, and list, show and remove
them (apportion.experts)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from apportion.cli.common import ConfigOption, LoggedProgress, RichPullProgress, err, fail, out
from apportion.config import Settings
from apportion.errors import ApportionError, UsageError

experts_app = typer.Typer(
    help=(
        "LoRA experts on a local model: distil examples, train, list, show, remove.\n\n"
        "An expert is asked for as a model (--model pal-math) or by a strategy "
        "(--strategy program:expert=pal-math).\n\n"
        "Example:\n\n"
        "  apportion experts distil --model qwen2.5-coder-1.5b --strategy program "
        "--dataset svamp --out runs/pal.jsonl\n\n"
        "  apportion experts train pal-math --base qwen2.5-coder-0.5b --data runs/pal.jsonl"
    ),
    no_args_is_help=True,
)


def _command() -> str:
    return shlex.join(["apportion", *sys.argv[1:]])


def _missing_extra(e: ImportError) -> UsageError:
    return UsageError(
        f"training experts needs torch, transformers, peft and gguf ({e.name} is missing)",
        "pip install 'apportion[experts]'",
    )


@experts_app.command("train")
def experts_train(
    name: Annotated[str, typer.Argument(help="The expert's name, e.g. pal-math.")],
    base: Annotated[
        str, typer.Option("--base", help="The model it adapts: a catalogue id or a .gguf file.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help='Chat examples, JSONL: {"messages": [...]} per line, the last the '
            "assistant's (what is learned). `apportion experts distil` writes them.",
        ),
    ],
    rank: Annotated[int, typer.Option(min=1, max=256, help="LoRA rank r.")] = 8,
    alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha (scale = alpha / rank).")] = 16,
    targets: Annotated[
        str, typer.Option(help="Comma-separated projections to adapt.")
    ] = "q_proj,v_proj",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the data.")] = 1,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-4,
    batch: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    max_tokens: Annotated[
        int, typer.Option(min=16, help="Tokens of an example kept (the rest is cut).")
    ] = 512,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many steps.", show_default=False)
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 where the CPU has AVX-512 BF16 or AMX, else float32), "
            "float32 or bfloat16."
        ),
    ] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    strategy: Annotated[
        str | None,
        typer.Option(help="The strategy whose prompts the data uses (recorded, e.g. program)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order and the initial adapter.")] = 0,
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over instead of resuming a checkpoint.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Train a LoRA adapter on the CPU, convert it to GGUF and install it as expert NAME.

    Interrupted training resumes from its last checkpoint when rerun with the same data and
    settings."""
    from apportion.experts.train import TrainConfig

    try:
        settings = Settings.load(config)
        train_config = TrainConfig(
            rank=rank, alpha=alpha, targets=tuple(t.strip() for t in targets.split(",") if t),
            epochs=epochs, learning_rate=learning_rate, batch=batch, max_tokens=max_tokens,
            dtype=dtype, seed=seed, max_steps=max_steps, threads=threads,
        )  # fmt: skip
        try:
            from apportion.experts.train import train_expert
        except ImportError as e:
            raise _missing_extra(e) from e
        with LoggedProgress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=err,
        ) as progress:  # fmt: skip
            task = progress.add_task(f"training {name}", total=None, loss="-")

            def on_step(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, loss=f"{loss:.4f}")

            try:
                expert = train_expert(
                    name, base_model=base, data=data, config=train_config, home=settings.home,
                    models_dir=settings.models_dir, strategy=strategy, commands=[_command()],
                    resume=not restart, on_step=on_step, pull_progress=RichPullProgress(err),
                )  # fmt: skip
            except ImportError as e:
                raise _missing_extra(e) from e
    except ApportionError as e:
        fail(e)
    m = expert.manifest
    out.print(
        f"expert {m.name}: {m.adapter_bytes / 1e6:.1f} MB adapter on {m.base_model}, "
        f"{m.data.examples} examples, {m.training['steps']} steps, loss "
        f"{m.metrics['loss_first']:.3f} → {m.metrics['loss_last']:.3f} ({m.training['dtype']})\n"
        f"use it: apportion ask --model {m.name} \"...\"   or   --strategy program:expert={m.name}",
        highlight=False,
    )


@experts_app.command("distil")
def experts_distil(
    out_path: Annotated[
        Path, typer.Option("--out", help="The JSONL file examples are appended to.")
    ],
    model: Annotated[
        str, typer.Option("--model", help="The teacher model.")
    ] = "qwen2.5-coder-1.5b",
    strategy: Annotated[
        str, typer.Option("--strategy", help="program, cot or direct, with parameters.")
    ] = "program",
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="A named set from the shared data dir (svamp, mawps, multiarith, aqua, ...). "
            "Repeatable. Keep the sets you test on out.",
        ),
    ] = None,
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="A JSONL question file. Repeatable.")
    ] = None,
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs",
            help="A bench --out folder: the items it ran with --strategy, whose model calls "
            "the completion cache replays. Repeatable.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Items per source (a seeded sample).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="The shared data dir.", show_default=False)
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="Completion cache (default: the bench's, so bench runs are reused)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the model calls.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Write chat examples from the items a strategy gets right on a teacher model (for
    program: programs whose sandboxed result is the gold answer). Rerun to resume."""
    from apportion.bench.cache import SqliteCompletionCache
    from apportion.bench.session import CACHE_FILE, load_bench_items
    from apportion.experts.distil import distil, items_of_runs
    from apportion.runtime import Runtime

    try:
        settings = Settings.load(config)
        if not dataset and not data and not runs:
            raise UsageError("no questions given", "pass --dataset NAME, --data FILE or --runs DIR")
        items, sources = [], []
        if runs:
            items = items_of_runs(runs, strategy)
            sources = [f"{len(items)} items of {', '.join(map(str, runs))}"]
        if dataset or data:
            more, named = load_bench_items(data or [], dataset or [], limit, seed, data_dir)
            items, sources = [*items, *more], [*sources, *named]
        runtime = Runtime.from_settings(settings, pull_progress=RichPullProgress(err),
                                        documents="given")  # fmt: skip
        runtime.check_model(model)
        completions = SqliteCompletionCache(cache or settings.home / CACHE_FILE)
        err.print(f"distilling {strategy} on {model} over {', '.join(sources)}", highlight=False)
        with LoggedProgress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"), TextColumn("kept {task.fields[kept]}"),
            TimeRemainingColumn(), console=err,
        ) as progress:  # fmt: skip
            task = progress.add_task("distil", total=len(items), kept=0)

            def on_item(report: object) -> None:
                kept = getattr(report, "kept", 0)
                done = sum(getattr(report, k, 0) for k in ("done", "skipped", "repeated"))
                progress.update(task, completed=done, kept=kept)

            report = distil(
                runtime, items, strategy=strategy, model=model, out=out_path,
                cache=completions, seed=seed, on_item=on_item,
            )  # fmt: skip
        runtime.close()
    except ApportionError as e:
        fail(e)
    out.print(
        f"{report.kept} examples kept of {report.done} items run "
        f"({report.skipped} done before, {report.repeated} repeating an example's question, "
        f"{report.errors} errors) → {out_path}",
        highlight=False,
    )


@experts_app.command("list")
def experts_list(config: ConfigOption = None) -> None:
    """The experts installed here and shipped with apportion."""
    from apportion.experts.book import ExpertBook

    try:
        settings = Settings.load(config)
        experts = ExpertBook(settings.home).all()
    except ApportionError as e:
        fail(e)
    table = Table("name", "base model", "rank", "examples", "adapter", "where")
    for expert in experts:
        m = expert.manifest
        table.add_row(
            m.name, m.base_model, str(m.rank), str(m.data.examples),
            f"{m.adapter_bytes / 1e6:.1f} MB",
            "shipped" if expert.shipped else str(expert.directory),
        )  # fmt: skip
    out.print(table)
    if not experts:
        out.print("no experts yet: apportion experts train NAME --base MODEL --data FILE")


@experts_app.command("show")
def experts_show(
    name: Annotated[str, typer.Argument(help="An expert's name.")], config: ConfigOption = None
) -> None:
    """An expert's manifest: base model, adapter, data, hyper-parameters, metrics, commands."""
    from apportion.experts.book import ExpertBook

    try:
        expert = ExpertBook(Settings.load(config).home).find(name)
    except ApportionError as e:
        fail(e)
    record = expert.manifest.model_dump(mode="json")
    record["directory"] = str(expert.directory)
    record["shipped"] = expert.shipped
    out.print_json(json.dumps(record))


@experts_app.command("rm")
def experts_rm(
    name: Annotated[str, typer.Argument(help="An installed expert's name.")],
    config: ConfigOption = None,
) -> None:
    """Remove an installed expert (its adapter and manifest)."""
    from apportion.experts.book import ExpertBook

    try:
        expert = ExpertBook(Settings.load(config).home).remove(name)
    except ApportionError as e:
        fail(e)
    out.print(f"removed expert {expert.name} ({expert.directory})", highlight=False)
