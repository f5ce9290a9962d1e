"""The document store a server answers factual questions from (`rag`, and `auto`'s factual
route): `apportion serve --store URI`, else the `store` setting, else the default store that
`apportion index add` fills, if it exists. Opened once, when the server starts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apportion.config import Settings
from apportion.errors import UsageError

if TYPE_CHECKING:
    from apportion.tools.store.base import DocumentStore


def store_uri(settings: Settings, override: str | None) -> str | None:
    """Where the server's document store is, or None when it has none."""
    for uri in (override, settings.store):
        if uri is not None and uri.strip():
            return uri.strip()
    return str(settings.store_path) if settings.store_path.exists() else None


def open_configured_store(settings: Settings, override: str | None) -> DocumentStore | None:
    """Open the server's document store. A store file that does not exist is refused rather
    than created empty: a misspelt path would otherwise serve `not found` for every question."""
    uri = store_uri(settings, override)
    if uri is None:
        return None
    from apportion.tools.store import SQLITE, StoreRegistry, open_store, store_scheme

    schemes = StoreRegistry()
    if store_scheme(uri, schemes) == SQLITE:
        path = Path(uri.removeprefix("sqlite:")).expanduser()
        if not path.is_file():
            raise UsageError(
                f"no document store at {path}",
                f"index documents first: apportion index add DOCS --store {path}",
            )
    return open_store(uri, registry=schemes)
