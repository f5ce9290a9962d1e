"""Document stores for retrieval: index chunks, search them by keywords, meaning, or both.

Store URIs, as `open_store` and ``--store`` take them:

- ``PATH`` or ``sqlite:PATH`` — the embedded store, one SQLite file (the default,
  ``$APPORTION_HOME/store.sqlite``). Several processes may read and write it at once.
- ``milvus-lite:DIR`` — Milvus in this process (pymilvus + milvus-lite 3.x); DIR is a folder,
  and only one process at a time may open it.
- ``http://HOST:19530`` or ``https://...`` — a Milvus server; a token is read from
  ``$MILVUS_TOKEN`` when set. Add ``?collection=NAME`` to pick a collection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from apportion.errors import UsageError
from apportion.tools.store.base import Chunk, DocumentStore, DocumentVersion, Hit
from apportion.tools.store.embed import Embedder, default_embedder

__all__ = [
    "Chunk",
    "DocumentStore",
    "DocumentVersion",
    "Embedder",
    "Hit",
    "open_store",
]

MILVUS_LITE = "milvus-lite:"


def open_store(
    uri: str | Path, *, embedder: Embedder | Literal["auto"] | None = "auto"
) -> DocumentStore:
    """Open (creating if needed) the store at `uri`.

    `embedder`: "auto" uses all-MiniLM-L6-v2 when the embed extra is installed, else none;
    None means BM25 only.
    """
    chosen = default_embedder() if embedder == "auto" else embedder
    if isinstance(uri, Path):
        return _embedded(uri, chosen)
    text = uri.strip()
    if not text:
        raise UsageError("the store location is empty")
    if text.startswith(MILVUS_LITE):
        path = text[len(MILVUS_LITE) :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise UsageError("milvus-lite: needs a folder, e.g. milvus-lite:/data/store")
        from apportion.tools.store.milvus import MilvusStore

        return MilvusStore.lite(Path(path).expanduser(), embedder=chosen)
    if text.startswith(("http://", "https://")):
        from apportion.tools.store.milvus import DEFAULT_COLLECTION, MilvusStore

        parts = urlsplit(text)
        collection = parse_qs(parts.query).get("collection", [DEFAULT_COLLECTION])[0]
        server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return MilvusStore.server(
            server,
            token=os.environ.get("MILVUS_TOKEN", ""),
            collection=collection,
            embedder=chosen,
        )
    if text.startswith("sqlite:"):
        text = text[len("sqlite:") :]
    elif "://" in text:
        raise UsageError(
            f"unknown store URI {uri!r}",
            "use a file path, sqlite:PATH, milvus-lite:DIR or http(s)://HOST:PORT",
        )
    return _embedded(Path(text).expanduser(), chosen)


def _embedded(path: Path, embedder: Embedder | None) -> DocumentStore:
    from apportion.tools.store.embedded import EmbeddedStore

    return EmbeddedStore(path, embedder=embedder)
