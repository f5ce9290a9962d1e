"""The `apportion` command line: one Typer app, and a thin adapter per command.

Each command's module parses its options, builds what the core needs, calls it and prints.
Importing this package loads Typer, Rich and the settings, but no engine, bench or server
code: a command imports what it runs when it runs, so `apportion ask` starts quickly.
"""

from __future__ import annotations

from typing import Annotated

import typer

from apportion.cli import ask, bench, calibrate, experts, index, keys, models, serve
from apportion.cli.common import out

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


# `apportion --help` lists the commands, then the groups, each in the order registered here.
app.command()(ask.ask)
app.command()(calibrate.calibrate)
app.command()(serve.serve)
app.add_typer(models.models_app, name="models")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(index.index_app, name="index")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(experts.experts_app, name="experts")

__all__ = ["app"]
