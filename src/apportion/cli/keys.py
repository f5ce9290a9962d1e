"""`apportion keys`: the API keys `apportion serve` checks, with their daily budgets.

    apportion keys add alice --budget-flops 1e15      # prints the key once
    apportion keys list
    apportion keys revoke alice

Keys live in SQLite (`--keys-db`, default `$APPORTION_HOME/keys.sqlite3`, created 0600 in a
0700 folder); once the file holds an active key, every request to the server needs one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from apportion.cli.common import ConfigOption, err, fail, out
from apportion.config import Settings
from apportion.errors import ApportionError

KeysDbOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-db",
        help="SQLite file of API keys (default: the keys_db setting, else "
        "$APPORTION_HOME/keys.sqlite3).",
        show_default=False,
    ),
]


def keys_path(settings: Settings, keys_db: Path | None) -> Path:
    """The keys file: --keys-db, else the keys_db setting, else $APPORTION_HOME/keys.sqlite3."""
    return (keys_db or settings.keys_db or settings.home / "keys.sqlite3").expanduser()


keys_app = typer.Typer(
    help="API keys for `apportion serve`: add (with daily budgets), list, revoke.",
    no_args_is_help=True,
)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="A name for the key's holder.")],
    budget_flops: Annotated[
        float | None,
        typer.Option("--budget-flops", help="FLOPs the key may spend per UTC day."),
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="Dollars the key may spend per UTC day.")
    ] = None,
    keys_db: KeysDbOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it. Only its sha256 is stored: copy it now."""
    from apportion.server.auth import KeyStore

    try:
        store = KeyStore(keys_path(Settings.load(config), keys_db))
        try:
            _, secret = store.add(name, daily_flops=budget_flops, daily_usd=budget_usd)
        finally:
            store.close()
    except ApportionError as e:
        fail(e)
    out.print(secret, highlight=False, markup=False)
    err.print(f"key {name!r} added to {store.path}; it is shown only this once", highlight=False)


@keys_app.command("list")
def keys_list(keys_db: KeysDbOption = None, config: ConfigOption = None) -> None:
    """Keys, their daily budgets and what they spent today."""
    from apportion.server.auth import KeyStore

    try:
        store = KeyStore(keys_path(Settings.load(config), keys_db))
    except ApportionError as e:
        fail(e)
    table = Table("name", "daily FLOPs", "daily $", "FLOPs today", "$ today", "requests", "state")
    try:
        for key in store.all_keys():
            used = store.usage(key.id)
            table.add_row(
                key.name,
                "-" if key.daily_flops is None else f"{key.daily_flops:.3g}",
                "-" if key.daily_usd is None else f"{key.daily_usd:.4g}",
                f"{used.flops:.3g}",
                f"{used.usd:.4g}",
                str(used.requests),
                "revoked" if key.revoked else "active",
            )
    finally:
        store.close()
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    keys_db: KeysDbOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from apportion.server.auth import KeyStore

    try:
        store = KeyStore(keys_path(Settings.load(config), keys_db))
        try:
            revoked = store.revoke(name)
        finally:
            store.close()
    except ApportionError as e:
        fail(e)
    if not revoked:
        err.print(f"[bold red]error:[/] no active key named {name!r}", highlight=False)
        raise typer.Exit(1)
    err.print(f"key {name!r} revoked", highlight=False)
