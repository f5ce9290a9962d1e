"""What the sub-commands share: the progress bar that also reports into log files."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, TextColumn

from apportion.cli.common import LoggedProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(console: Console, clock: Clock) -> None:
    """Ten steps of 25 s each, with a loss field, as `experts train` reports them."""
    with LoggedProgress(
        TextColumn("{task.description}"), BarColumn(), console=console, get_time=clock,
        auto_refresh=False, every_s=60,
    ) as progress:  # fmt: skip
        task = progress.add_task("training pal-math", total=None, loss="-")
        for step in range(1, 11):
            clock.now += 25
            progress.update(task, completed=step, total=10, loss=f"{1 / step:.4f}")
        clock.now += 100
        progress.update(task, loss="0.1000")  # after the end: no second last line


def test_a_log_file_gets_a_line_a_minute_and_one_at_the_end() -> None:
    log = io.StringIO()
    _run(Console(file=log, force_terminal=False, width=200), Clock())
    lines = [line for line in log.getvalue().splitlines() if line.startswith("training")]
    # 60 s passes at steps 3 (75 s) and 6 (150 s), and 9 (225 s); then the last step
    assert [line.split(",")[0] for line in lines if ": " in line] == [
        "training pal-math: 3/10", "training pal-math: 6/10", "training pal-math: 9/10",
        "training pal-math: 10/10",
    ]  # fmt: skip
    assert "loss 0.3333" in lines[0] and "s left" in lines[0]
    assert "loss 0.1000" in lines[3] and "left" not in lines[3]


def test_a_terminal_gets_the_bar_and_no_lines() -> None:
    screen = io.StringIO()
    _run(Console(file=screen, force_terminal=True, width=200), Clock())
    assert "training pal-math: " not in screen.getvalue()
