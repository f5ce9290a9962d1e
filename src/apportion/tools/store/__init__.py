"""Document stores for retrieval: index chunks, search them by keywords, meaning, or both.

Store URIs, as `open_store` and ``--store`` take them; the scheme picks the store:

- ``PATH`` or ``sqlite:PATH`` — the embedded store, one SQLite file (the default,
  ``$APPORTION_HOME/store.sqlite``). Several processes may read and write it at once.
- ``milvus-lite:DIR`` — Milvus in this process (pymilvus + milvus-lite 3.x); DIR is a folder,
  and only one process at a time may open it.
- ``http://HOST:19530`` or ``https://...`` — a Milvus server; a token is read from
  ``$MILVUS_TOKEN`` when set. Add ``?collection=NAME`` to pick a collection.
- ``SCHEME:...`` — a store a plug-in registers under SCHEME in the ``apportion.stores``
  entry-point group: an opener ``open(uri: str, *, embedder: Embedder | None) ->
  DocumentStore``, given the whole URI (`apportion.plugins`).

A text whose prefix is no registered scheme is a path (``notes:v2.sqlite`` is a file), unless
it has ``://``, which only a URL has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from apportion.errors import UnknownNameError, UsageError
from apportion.plugins import STORES, PluginIndex, Registry
from apportion.tools.store.base import Chunk, DocumentStore, DocumentVersion, Hit
from apportion.tools.store.embed import Embedder, default_embedder

__all__ = [
    "Chunk",
    "DocumentStore",
    "DocumentVersion",
    "Embedder",
    "Hit",
    "StoreOpener",
    "StoreRegistry",
    "open_store",
    "store_scheme",
]

MILVUS_LITE = "milvus-lite:"
SQLITE = "sqlite"

# Opens (creating if needed) the store a URI names, with an embedder or None (BM25 only).
StoreOpener = Callable[..., DocumentStore]  # (uri: str, *, embedder: Embedder | None)

# What a URI scheme looks like (RFC 3986); single letters are left out, as drive letters.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def _open_sqlite(uri: str, *, embedder: Embedder | None) -> DocumentStore:
    path = uri[len(SQLITE) + 1 :] if uri[: len(SQLITE) + 1].lower() == f"{SQLITE}:" else uri
    return _embedded(Path(path).expanduser(), embedder)


def _open_milvus_lite(uri: str, *, embedder: Embedder | None) -> DocumentStore:
    path = uri[len(MILVUS_LITE) :]
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise UsageError("milvus-lite: needs a folder, e.g. milvus-lite:/data/store")
    from apportion.tools.store.milvus import MilvusStore

    return MilvusStore.lite(Path(path).expanduser(), embedder=embedder)


def _open_milvus_server(uri: str, *, embedder: Embedder | None) -> DocumentStore:
    from apportion.tools.store.milvus import DEFAULT_COLLECTION, MilvusStore

    parts = urlsplit(uri)
    collection = parse_qs(parts.query).get("collection", [DEFAULT_COLLECTION])[0]
    server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return MilvusStore.server(
        server,
        token=os.environ.get("MILVUS_TOKEN", ""),
        collection=collection,
        embedder=embedder,
    )


def builtin_openers() -> dict[str, StoreOpener]:
    return {
        SQLITE: _open_sqlite,
        "milvus-lite": _open_milvus_lite,
        "http": _open_milvus_server,
        "https": _open_milvus_server,
    }


class StoreRegistry:
    """URI scheme → store opener: the built-ins, then the ``apportion.stores`` plug-ins (from
    `plugins`, else the installed packages, read only for a scheme that is not built in)."""

    def __init__(self, plugins: PluginIndex | None = None) -> None:
        self._openers: Registry[StoreOpener] = Registry(
            group=STORES,
            what="store URI scheme",
            builtins=builtin_openers(),
            plugins=PluginIndex() if plugins is None else plugins,
            accepts=callable,
            expected="a store opener (a callable taking the URI and an embedder)",
        )

    def names(self) -> list[str]:
        return self._openers.names()

    def scheme(self, uri: str) -> str:
        """The scheme that opens `uri`: "sqlite" for a plain path; UnknownNameError for a URL
        (``://``) of a scheme none registers."""
        text = uri.strip()
        if not text:
            raise UsageError("the store location is empty")
        match = _SCHEME.match(text)
        if match is None:
            return SQLITE
        scheme = match.group(1).lower()
        if scheme in self._openers:
            return scheme
        broken = self._openers.failures().get(scheme)
        if broken is not None:
            raise broken  # an installed scheme whose plug-in is broken: not a file name
        if "://" in text:
            raise UnknownNameError("store URI scheme", scheme, self.names())
        return SQLITE  # a file whose name has a colon in it

    def open(self, uri: str, *, embedder: Embedder | None) -> DocumentStore:
        text = uri.strip()
        scheme = self.scheme(text)
        return self._openers.get(scheme)(text, embedder=embedder)


def store_scheme(uri: str | Path, registry: StoreRegistry | None = None) -> str:
    """The scheme of a store URI ("sqlite" for a plain path or a Path), as `open_store` reads
    it: a server refuses to create a missing sqlite store, say."""
    if isinstance(uri, Path):
        return SQLITE
    return (registry or StoreRegistry()).scheme(uri)


def open_store(
    uri: str | Path,
    *,
    embedder: Embedder | Literal["auto"] | None = "auto",
    registry: StoreRegistry | None = None,
) -> DocumentStore:
    """Open (creating if needed) the store at `uri`, by its scheme (see the module docstring).

    `embedder`: "auto" uses all-MiniLM-L6-v2 when the embed extra is installed, else none;
    None means BM25 only. `registry`: the schemes to open it with (default: the built-ins and
    the installed plug-ins).
    """
    chosen = default_embedder() if embedder == "auto" else embedder
    if isinstance(uri, Path):
        return _embedded(uri, chosen)
    return (registry or StoreRegistry()).open(uri, embedder=chosen)


def _embedded(path: Path, embedder: Embedder | None) -> DocumentStore:
    from apportion.tools.store.embedded import EmbeddedStore

    return EmbeddedStore(path, embedder=embedder)
