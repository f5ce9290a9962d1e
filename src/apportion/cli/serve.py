"""`apportion serve`: the OpenAI-compatible server (see `apportion.server`).

    apportion serve --port 8000 --model smollm2-135m
    apportion serve --store docs.sqlite               # rag answers from an indexed store

Once the keys file (`apportion keys`) holds an active key, every request needs one.

This module imports nothing of the `server` extra at load time (the main CLI registers it
always): `serve` checks for the extra first and, without it, says in one line how to install it.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer
from rich.markup import escape

from apportion.cli.common import (
    ConfigOption,
    DeterministicOption,
    MemoryLimitOption,
    NCtxOption,
    PolicyOption,
    err,
    fail,
    with_model_options,
)
from apportion.cli.keys import KeysDbOption, StateOption, keys_path, state_location
from apportion.config import Settings
from apportion.errors import ApportionError

# What `apportion serve` needs: the `server` extra.
SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")
SERVER_INSTALL = "pip install 'apportion[server]'"


def missing_server_modules() -> list[str]:
    """The modules of the `server` extra that cannot be imported here."""
    missing = []
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (keep 127.0.0.1 unless proxied).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    config: ConfigOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Default model (routes use it unless a request names one)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="llama.cpp threads (default: free cores)."),
    ] = None,
    n_ctx: NCtxOption = None,
    deterministic: DeterministicOption = False,
    memory_limit: MemoryLimitOption = None,
    queue_depth: Annotated[
        int,
        typer.Option(
            "--queue-depth",
            min=0,
            help="Requests that may wait for the local model; more get 429 + Retry-After.",
        ),
    ] = 8,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds one request may take.")
    ] = 300.0,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1024, help="Largest request body.")
    ] = 1_000_000,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", min=1, help="Largest max_tokens a request may ask.")
    ] = 4096,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            min=0.0,
            help="Seconds an open stream may run on after SIGINT/SIGTERM to finish its answer; "
            "one still running then ends with an error event (503) that clients raise.",
        ),
    ] = 30.0,
    keys_db: KeysDbOption = None,
    state: StateOption = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="APPORTION_STORE",
            help="Document store that rag and auto's factual route answer from (a path, "
            "milvus-lite:DIR or a Milvus URL; default: the `store` setting, else the store "
            "`apportion index add` fills, if it exists).",
            show_default=False,
        ),
    ] = None,
    policy: PolicyOption = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn log level: debug, info, warning, error.")
    ] = "info",
) -> None:
    """Serve OpenAI-compatible chat completions: routed, budgeted, streamed and metered.

    Example: apportion serve --model smollm2-135m, then point any OpenAI client at
    http://127.0.0.1:8000/v1 with model "apportion-auto".
    """
    missing = missing_server_modules()
    if missing:
        # one line, however narrow the terminal: it is the command to run
        err.print(
            f"[bold red]error:[/] apportion serve needs the server extra "
            f"({', '.join(missing)} missing): {escape(SERVER_INSTALL)}",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    from apportion.runtime import Runtime
    from apportion.server.app import ServerOptions, create_app
    from apportion.server.auth import KeyStore
    from apportion.server.documents import open_configured_store, store_uri
    from apportion.server.process import serve as serve_app

    try:
        settings = with_model_options(
            Settings.load(config), threads=threads, n_ctx=n_ctx, deterministic=deterministic,
            memory_limit=memory_limit,
        )
        if model is not None:
            settings.default_model = model
        # Named in the settings, so that sandboxed programs cannot see them wherever they are.
        settings.keys_db = keys_path(settings, keys_db)
        if store is not None:
            settings.store = store
        engine = Runtime.from_settings(
            settings, policy=policy, documents="given",
            store=open_configured_store(settings, None),
        )  # fmt: skip
        engine.check_model(settings.default_model)
        keys = KeyStore(state_location(settings, keys_db, state))
        if engine.store is not None:
            where = store_uri(settings, None)
            err.print(f"documents: {where} ({engine.store.count()} chunks)", highlight=False)
        # Load (or pull) the default model now, so the first request does not wait for it.
        err.print(f"loading {settings.default_model} …", highlight=False)
        engine.engine_for(settings.default_model)
    except ApportionError as e:
        fail(e)
    options = ServerOptions(
        queue_depth=queue_depth,
        request_timeout_s=timeout,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
        shutdown_grace_s=shutdown_grace,
    )
    app = create_app(settings, engine=engine, options=options, keys=keys)
    auth = "on" if keys.enabled() else "off (no keys yet)"
    mode = " | deterministic" if settings.deterministic else ""
    err.print(
        f"apportion serving on http://{host}:{port}/v1 | default model "
        f"{settings.default_model} | API keys {auth} ({keys.path}){mode}",
        highlight=False,
    )
    try:
        serve_app(app, host=host, port=port, log_level=log_level)
    finally:
        engine.close()
        if engine.store is not None:
            engine.store.close()
        keys.close()
