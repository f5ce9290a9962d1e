"""The `memory:` store scheme: a document store held in this process, searched by keywords.

``memory:`` opens an empty store; ``memory:PATH`` opens one filled with the documents under
PATH (.txt, .md, .jsonl files or folders of them, read as `apportion index add` reads them).
Nothing is written anywhere: the store lives as long as the process that opened it (one
`apportion ask`, one `apportion bench` run, one `apportion serve`).

It ranks chunks by BM25 only. Asked for dense or hybrid search, it says once (with a
RetrievalFallbackWarning, as apportion's stores do without an embedding model) and answers
with BM25.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from apportion.tools.store import Embedder
from apportion.tools.store.base import (
    Chunk,
    DocumentVersion,
    Hit,
    RetrievalFallbackWarning,
    check_add,
    check_chunks,
    check_k,
    check_mode,
    check_versions,
    keywords,
)

SCHEME = "memory:"
# BM25's usual constants: term-frequency saturation and length normalisation.
K1 = 1.2
B = 0.75


class MemoryStore:
    """A `DocumentStore` (apportion/tools/store/base.py) in a dict. Thread-safe: a server's
    requests search it from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: dict[str, Chunk] = {}
        self._terms: dict[str, Counter[str]] = {}  # chunk id → its keywords, counted
        self._hashes: dict[str, str] = {}  # doc id → content hash
        self._warned = False

    # -- writing --------------------------------------------------------------------------

    def _put(self, chunk: Chunk) -> None:
        self._chunks[chunk.chunk_id] = chunk
        self._terms[chunk.chunk_id] = Counter(keywords(f"{chunk.title} {chunk.text}"))

    def _drop(self, doc_id: str) -> bool:
        ids = [cid for cid, c in self._chunks.items() if c.doc_id == doc_id]
        for cid in ids:
            del self._chunks[cid], self._terms[cid]
        known = doc_id in self._hashes
        self._hashes.pop(doc_id, None)
        return bool(ids) or known

    def add(self, chunks: Sequence[Chunk]) -> int:
        check_add(chunks)
        with self._lock:
            for chunk in chunks:
                self._put(chunk)
        return len(chunks)

    def replace(self, doc_id: str, chunks: Sequence[Chunk]) -> None:
        check_chunks(doc_id, chunks)
        with self._lock:
            self._drop(doc_id)
            for chunk in chunks:
                self._put(chunk)

    def replace_documents(self, docs: Sequence[DocumentVersion]) -> None:
        check_versions(docs)
        with self._lock:
            for doc in docs:
                self._drop(doc.doc_id)
                for chunk in doc.chunks:
                    self._put(chunk)
                if doc.content_hash:
                    self._hashes[doc.doc_id] = doc.content_hash

    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {d: self._hashes[d] for d in doc_ids if d in self._hashes}

    def delete(self, doc_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(self._drop(doc_id) for doc_id in dict.fromkeys(doc_ids))

    # -- reading --------------------------------------------------------------------------

    def search(self, text: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The `k` best chunks for `text` by BM25, best first; chunks sharing no keyword with
        it are left out."""
        if check_mode(mode) != "bm25" and not self._warned:
            self._warned = True
            warnings.warn(
                f"{mode} search is not available: the memory: store ranks by keywords only. "
                "Searching with bm25 only.",
                RetrievalFallbackWarning,
                stacklevel=2,
            )
        check_k(k)
        query = set(keywords(text))
        with self._lock:
            n = len(self._terms)
            if not n or not query:
                return []
            mean_length = sum(sum(t.values()) for t in self._terms.values()) / n
            frequency = {q: sum(1 for t in self._terms.values() if q in t) for q in query}
            scored: list[tuple[float, str]] = []
            for cid, terms in self._terms.items():
                length = sum(terms.values())
                score = 0.0
                for q in query:
                    tf = terms.get(q, 0)
                    if not tf:
                        continue
                    idf = math.log(1 + (n - frequency[q] + 0.5) / (frequency[q] + 0.5))
                    norm = K1 * (1 - B + B * length / max(mean_length, 1e-9))
                    score += idf * tf * (K1 + 1) / (tf + norm)
                if score > 0:
                    scored.append((score, cid))
            scored.sort(key=lambda sc: (-sc[0], sc[1]))
            return [
                Hit(c.doc_id, c.chunk_id, score, c.text, c.title)
                for score, c in ((s, self._chunks[cid]) for s, cid in scored[:k])
            ]

    def count(self) -> int:
        with self._lock:
            return len(self._chunks)

    def stats(self) -> dict[str, object]:
        with self._lock:
            docs = len({c.doc_id for c in self._chunks.values()})
            return {"backend": "memory", "chunks": len(self._chunks), "documents": docs,
                    "search": "bm25"}  # fmt: skip

    def close(self) -> None:
        """Nothing to release: the store goes with the process."""


def open_memory_store(uri: str, *, embedder: Embedder | None) -> MemoryStore:
    """What the `apportion.stores` entry point `memory` names: opens ``memory:`` (empty) or
    ``memory:PATH`` (filled from PATH). It ranks by keywords, so `embedder` goes unused."""
    store = MemoryStore()
    seed = uri.strip()[len(SCHEME) :]
    if seed:
        from apportion.tools.store.ingest import ingest

        ingest(store, [Path(seed).expanduser()])
    return store
