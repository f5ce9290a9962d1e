"""`apportion keys`: the API keys `apportion serve` checks, with their daily budgets.

    apportion keys add alice --budget-flops 1e15      # prints the key once
    apportion keys list
    apportion keys revoke alice

Keys live in SQLite (`--keys-db`, default `$APPORTION_HOME/keys.sqlite3`, created 0600 in a
0700 folder), or in PostgreSQL that several server replicas share (`--state postgresql://...`,
or the `state` setting); once the store holds an active key, every request needs one.

    apportion keys usage alice --since 2026-12-01       # spend per key, day and route
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from apportion.cli.common import ConfigOption, err, fail, out
from apportion.config import Settings
from apportion.errors import ApportionError

if TYPE_CHECKING:
    from apportion.server.auth import KeyStore

KeysDbOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-db",
        help="SQLite file of API keys (default: the keys_db setting, else "
        "$APPORTION_HOME/keys.sqlite3).",
        show_default=False,
    ),
]


StateOption = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="Where keys, quotas and the spend log live: a postgresql:// URL that several "
        "servers share, or a SQLite file (default: the state setting, else --keys-db).",
        show_default=False,
    ),
]


def keys_path(settings: Settings, keys_db: Path | None) -> Path:
    """The keys file: --keys-db, else the keys_db setting, else $APPORTION_HOME/keys.sqlite3."""
    return (keys_db or settings.keys_db or settings.home / "keys.sqlite3").expanduser()


def state_location(settings: Settings, keys_db: Path | None, state: str | None) -> str | Path:
    """Where the key store is: --state, else the state setting, else the keys file."""
    return state or settings.state or keys_path(settings, keys_db)


def open_keys(config: Path | None, keys_db: Path | None, state: str | None) -> KeyStore:
    from apportion.server.auth import KeyStore

    return KeyStore(state_location(Settings.load(config), keys_db, state))


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
    state: StateOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it. Only its sha256 is stored: copy it now."""
    try:
        store = open_keys(config, keys_db, state)
        try:
            _, secret = store.add(name, daily_flops=budget_flops, daily_usd=budget_usd)
        finally:
            store.close()
    except ApportionError as e:
        fail(e)
    out.print(secret, highlight=False, markup=False)
    err.print(f"key {name!r} added to {store.path}; it is shown only this once", highlight=False)


@keys_app.command("list")
def keys_list(
    keys_db: KeysDbOption = None, state: StateOption = None, config: ConfigOption = None
) -> None:
    """Keys, their daily budgets and what they spent today."""
    try:
        store = open_keys(config, keys_db, state)
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
    state: StateOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key; requests with it get 401 from then on (on every server sharing the
    store: the next request is checked against it)."""
    try:
        store = open_keys(config, keys_db, state)
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


@keys_app.command("usage")
def keys_usage(
    name: Annotated[str | None, typer.Argument(help="One key's name (default: every key).")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this UTC day on (YYYY-MM-DD).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    keys_db: KeysDbOption = None,
    state: StateOption = None,
    config: ConfigOption = None,
) -> None:
    """What each key spent, per UTC day and route, from the spend log of settled requests."""
    import json
    from dataclasses import asdict
    from datetime import date

    from apportion.errors import UsageError

    try:
        if since is not None:
            try:
                date.fromisoformat(since)
            except ValueError:
                raise UsageError(f"--since takes a day as YYYY-MM-DD, got {since!r}") from None
        store = open_keys(config, keys_db, state)
        try:
            rows = store.spend_report(key=name, since=since)
        finally:
            store.close()
    except ApportionError as e:
        fail(e)
    if as_json:
        for row in rows:
            out.print(json.dumps(asdict(row)), highlight=False, markup=False, soft_wrap=True)
        return
    table = Table("key", "day", "route", "requests", "tokens", "FLOPs", "$")
    for row in rows:
        table.add_row(row.key, row.day, row.route or "-", str(row.requests),
                      f"{row.prompt_tokens}+{row.completion_tokens}", f"{row.flops:.3g}",
                      f"{row.usd:.4g}")  # fmt: skip
    out.print(table)
