"""What every `apportion` sub-command shares: the consoles, the common options, error output,
and the progress bar of a model pull."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.errors import ApportionError

err = Console(stderr=True)
out = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML settings file (also $APPORTION_CONFIG).", show_default=False
    ),
]

PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        envvar="APPORTION_POLICY",
        help="Routing policy for auto: a policy.json from `apportion calibrate`, 'rules' for "
        "the fixed rule ladders, or 'predictor' for the shipped per-question predictor "
        "(default: the shipped calibrated policy, a plan per intent and difficulty).",
        show_default=False,
    ),
]


NCtxOption = Annotated[
    int | None,
    typer.Option(
        "--n-ctx",
        min=256,
        help="Context window of local models, in tokens (config: n_ctx; default 4096). Raise "
        "it for long questions, up to what the model was trained on.",
        show_default=False,
    ),
]

MemoryLimitOption = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        help="Most memory the local models keep resident together, e.g. 1.5GB (config: "
        "memory_limit). Models are then loaded and evicted in turn, each load charged to the "
        "request that caused it; memory_policy = \"skip\" leaves out plans that cannot fit.",
    ),
]
DeterministicOption = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        help="The same request gives the same tokens whatever ran before: no model call "
        "reuses a prompt prefix cached by an earlier one (config: deterministic; costs "
        "re-reading every prompt, see the README's platform section).",
    ),
]


def with_model_options(
    settings: Settings,
    *,
    threads: int | None = None,
    n_ctx: int | None = None,
    deterministic: bool = False,
    memory_limit: str | None = None,
) -> Settings:
    """Settings with the command line's model options laid over the file's."""
    update: dict[str, object] = {}
    if memory_limit is not None:
        from apportion.engines.memory import parse_bytes

        parse_bytes(memory_limit)  # a UsageError naming the units, before any work
        update["memory_limit"] = memory_limit
    if threads is not None:
        update["threads"] = threads
    if n_ctx is not None:
        update["n_ctx"] = n_ctx
    if deterministic:
        update["deterministic"] = True
    return settings.model_copy(update=update) if update else settings


def fail(error: ApportionError) -> NoReturn:
    """Print the error as one line (and its hint), then exit with the error's code."""
    # Escaped: messages quote user input and file paths, which may hold [brackets].
    err.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False)
    if error.hint:
        err.print(f"  {escape(error.hint)}", highlight=False)
    raise typer.Exit(error.exit_code)


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each warning raised inside (e.g. a store falling back to BM25) as one line on
    stderr, as it happens: not Python's file:line, category and source line."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class LoggedProgress(Progress):
    """A rich progress bar that also reports where no bar can be drawn: on a console that is
    not a terminal (output sent to a log file, under nohup, in CI) rich shows nothing until the
    end, so an hour of training or benchmarking in the background would say nothing. There,
    each task gets a plain line every `every_s` seconds and one when it completes: its
    description, count, time left and fields (`status=...`, `loss=...`)."""

    def __init__(
        self, *columns: str | ProgressColumn, every_s: float = 60.0, **options: Any
    ) -> None:
        super().__init__(*columns, **options)
        self.every_s = every_s
        self._last_line: dict[TaskID, float] = {}
        self._ended: set[TaskID] = set()  # tasks whose last line is printed

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        super().update(
            task_id, total=total, completed=completed, advance=advance, description=description,
            visible=visible, refresh=refresh, **fields,
        )  # fmt: skip
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None or task.completed == 0 or task_id in self._ended:
            return
        now = self.get_time()
        last = self._last_line.setdefault(task_id, task.start_time or now)
        finished = task.total is not None and task.completed >= task.total
        if now - last < self.every_s and not finished:
            return
        self._last_line[task_id] = now
        if finished:
            self._ended.add(task_id)
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        parts = [f"{task.description}: {done}"]
        if task.elapsed is not None:
            parts.append(f"{task.elapsed:.0f} s")
        if not finished and task.time_remaining is not None:
            parts.append(f"about {task.time_remaining:.0f} s left")
        parts += [f"{k} {v}" for k, v in task.fields.items() if str(v)]
        self.console.print(", ".join(parts), highlight=False, markup=False, soft_wrap=True)


class RichPullProgress(catalogue.PullProgress):
    """Shows a byte progress bar while a model's packages are fetched and joined."""

    def __init__(self, console: Console) -> None:
        self._progress = LoggedProgress(
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
