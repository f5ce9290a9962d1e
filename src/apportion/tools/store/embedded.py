"""The default document store: one SQLite file, no server.

- Full text: an FTS5 index (porter stemming, unicode61) ranked with ``bm25()``.
- Dense: float32 vectors as BLOBs; a search multiplies the query by a matrix of all vectors
  held in memory (about 1.5 KB per chunk at 384 dimensions: 150 MB and tens of milliseconds per
  query at 100k chunks, the intended ceiling; beyond that use the Milvus store). The matrix is
  reloaded when a write, from any process, has bumped the store's generation counter.
- Hybrid: reciprocal rank fusion (k=60) of the bm25 and dense top lists.

Every write is one transaction in WAL mode, so a crash or kill leaves each document wholly in
its old or its new state, and readers in other processes never see a half-written one.
``synchronous=NORMAL`` keeps that guarantee for a killed process; after a power loss the last
commits may be missing, never torn.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.errors import ToolError, UsageError
from apportion.private_files import private_file
from apportion.tools.store.base import (
    RRF_K,
    Chunk,
    DocumentVersion,
    Hit,
    batches,
    check_add,
    check_k,
    check_mode,
    check_versions,
    fusion_depth,
    group_by_doc,
    keywords,
    rrf_fuse,
)
from apportion.tools.store.embed import (
    DenseFallback,
    Embedder,
    Vectors,
    check_write_embedder,
    dense_unavailable,
    embed_passages,
)

SCHEMA_VERSION = "1"
_IN_BATCH = 500  # SQLite host parameters per IN (...) list

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
    doc_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, position);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    title, text, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text)
    VALUES ('delete', old.id, old.title, old.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_au AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text)
    VALUES ('delete', old.id, old.title, old.text);
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
"""


@dataclass(frozen=True)
class _Matrix:
    """All stored vectors, as loaded at one generation of the store."""

    generation: int
    ids: npt.NDArray[np.int64]
    vectors: Vectors
    row_of: dict[int, int]


def _fts_query(text: str) -> str:
    """Any-term FTS5 query: each keyword quoted, so user text is never FTS syntax."""
    terms = dict.fromkeys(keywords(text))  # dedupe, keep order
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class EmbeddedStore:
    """A DocumentStore in one SQLite file (see the module docstring)."""

    def __init__(
        self, path: str | Path, *, embedder: Embedder | None = None, timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path).expanduser()
        self.embedder = embedder
        if self.path.is_dir():
            raise UsageError(
                f"{self.path} is a directory, not a SQLite store file",
                "give a file path, e.g. store.sqlite (a milvus-lite store is milvus-lite:DIR)",
            )
        # 0600 in 0700 folders (SQLite gives its -wal and -shm files the database's mode)
        private_file(self.path, sqlite=True)
        self._lock = threading.RLock()
        self._fallback = DenseFallback()
        self._matrix: _Matrix | None = None
        try:
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
            self._conn = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # executescript commits any open transaction, so the script carries its own.
            self._conn.executescript(
                "BEGIN IMMEDIATE;\n"
                + _SCHEMA
                + f"INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '{SCHEMA_VERSION}');\n"
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0');\n"
                "COMMIT;"
            )
        except sqlite3.DatabaseError as e:
            raise ToolError(
                f"cannot open the store {self.path}: {e}",
                "is it a SQLite store file? Point --store at a new path to start afresh",
            ) from e
        schema = self._meta("schema")
        if schema != SCHEMA_VERSION:
            raise ToolError(f"{self.path} has store schema {schema}, this version reads 1")

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _bump(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _generation(self) -> int:
        return int(self._meta("generation") or 0)

    def _write_embedder(self) -> Embedder | None:
        """The embedder for new chunks: the store keeps one model (or none) for life, fixed by
        its first write, so its vectors are always comparable and cover every chunk."""
        recorded = self._meta("embedder")
        if recorded is None:
            return self.embedder
        if recorded == "":
            return None  # a BM25-only store stays BM25-only
        return check_write_embedder(str(self.path), recorded, self.embedder)

    def _record_embedder(self, conn: sqlite3.Connection, embedder: Embedder | None) -> None:
        name = "" if embedder is None else embedder.name
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('embedder', ?)", (name,))
        if self._meta("embedder") != name:  # another process wrote first, with another model
            raise UsageError(f"{self.path} was just initialised with another embedding model")

    def _embed(self, embedder: Embedder | None, chunks: Sequence[Chunk]) -> list[bytes | None]:
        if embedder is None or not chunks:
            return [None] * len(chunks)
        return [v.astype(np.float32).tobytes() for v in embed_passages(embedder, chunks)]

    def _insert(
        self, conn: sqlite3.Connection, chunks: Sequence[Chunk], blobs: list[bytes | None]
    ) -> None:
        try:
            conn.executemany(
                "INSERT INTO chunks(chunk_id, doc_id, position, title, text, vector) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(chunk_id) DO UPDATE SET doc_id = excluded.doc_id, "
                "position = excluded.position, title = excluded.title, text = excluded.text, "
                "vector = excluded.vector",
                [
                    (c.chunk_id, c.doc_id, c.position, c.title, c.text, blob)
                    for c, blob in zip(chunks, blobs, strict=True)
                ],
            )
        except sqlite3.IntegrityError as e:
            raise UsageError(f"cannot store chunks: {e}") from e

    # -- writes -----------------------------------------------------------------------------

    def add(self, chunks: Sequence[Chunk]) -> int:
        """Insert chunks; a chunk whose id exists is overwritten. Clears the touched
        documents' content hashes (their content no longer matches what was hashed)."""
        if not chunks:
            return 0
        check_add(chunks)
        embedder = self._write_embedder()
        blobs = self._embed(embedder, chunks)
        now = time.time()
        with self._transaction() as conn:
            self._record_embedder(conn, embedder)
            self._insert(conn, chunks, blobs)
            conn.executemany(
                "INSERT INTO docs(doc_id, content_hash, updated) VALUES (?, '', ?) "
                "ON CONFLICT(doc_id) DO UPDATE SET content_hash = '', updated = excluded.updated",
                [(doc_id, now) for doc_id in group_by_doc(chunks)],
            )
            self._bump(conn)
        return len(chunks)

    def replace(self, doc_id: str, chunks: Sequence[Chunk]) -> None:
        self.replace_documents([DocumentVersion(doc_id, tuple(chunks))])

    def replace_documents(self, docs: Sequence[DocumentVersion]) -> None:
        """Swap each document's chunks for new ones, all in one transaction."""
        if not docs:
            return
        chunks = check_versions(docs)
        # Embed before the transaction: never hold the write lock while the model runs.
        embedder = self._write_embedder()
        blobs = self._embed(embedder, chunks)
        now = time.time()
        with self._transaction() as conn:
            self._record_embedder(conn, embedder)
            for batch in batches([d.doc_id for d in docs], _IN_BATCH):
                conn.execute(
                    f"DELETE FROM chunks WHERE doc_id IN ({','.join('?' * len(batch))})", batch
                )
            self._insert(conn, chunks, blobs)
            conn.executemany(
                "INSERT INTO docs(doc_id, content_hash, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(doc_id) DO UPDATE SET content_hash = excluded.content_hash, "
                "updated = excluded.updated",
                [(d.doc_id, d.content_hash, now) for d in docs],
            )
            self._bump(conn)

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents and their chunks; returns how many of them existed."""
        found: set[str] = set()
        with self._transaction() as conn:
            for batch in batches(list(dict.fromkeys(doc_ids)), _IN_BATCH):
                marks = ",".join("?" * len(batch))
                found.update(
                    r[0]
                    for r in conn.execute(
                        f"SELECT doc_id FROM docs WHERE doc_id IN ({marks}) UNION "
                        f"SELECT doc_id FROM chunks WHERE doc_id IN ({marks})",
                        [*batch, *batch],
                    )
                )
                conn.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", batch)
                conn.execute(f"DELETE FROM docs WHERE doc_id IN ({marks})", batch)
            if found:
                self._bump(conn)
        return len(found)

    # -- reads ------------------------------------------------------------------------------

    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._lock:
            for batch in batches(list(dict.fromkeys(doc_ids)), _IN_BATCH):
                out.update(
                    self._conn.execute(
                        f"SELECT doc_id, content_hash FROM docs WHERE content_hash != '' "
                        f"AND doc_id IN ({','.join('?' * len(batch))})",
                        batch,
                    ).fetchall()
                )
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def stats(self) -> dict[str, object]:
        with self._lock:
            docs = self._conn.execute("SELECT count(*) FROM docs").fetchone()[0]
            chunks, with_vectors = self._conn.execute(
                "SELECT count(*), count(vector) FROM chunks"
            ).fetchone()
            embedder = self._meta("embedder")
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {
            "backend": "sqlite",
            "location": str(self.path),
            "documents": int(docs),
            "chunks": int(chunks),
            "chunks_with_vectors": int(with_vectors),
            "embedder": embedder or None,
            "dense_search": self._dense_ready() is None,
            "bytes": size,
        }

    def _dense_ready(self) -> str | None:
        """Why dense search cannot run now, or None when it can."""
        return dense_unavailable(self._meta("embedder"), self.embedder)

    def _load_matrix(self) -> _Matrix:
        """The in-memory vector matrix, reloaded when the store has changed since."""
        generation = self._generation()
        if self._matrix is not None and self._matrix.generation == generation:
            return self._matrix
        assert self.embedder is not None
        dim = self.embedder.dim
        rows = self._conn.execute(
            "SELECT id, vector FROM chunks WHERE vector IS NOT NULL ORDER BY id"
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r[1] for r in rows)
        if len(blob) != 4 * dim * len(rows):
            raise ToolError(f"{self.path}: stored vectors are not all {dim}-dimensional")
        vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(rows), dim)
        self._matrix = _Matrix(generation, ids, vectors, {int(i): n for n, i in enumerate(ids)})
        return self._matrix

    def _bm25(self, text: str, limit: int) -> list[tuple[int, float]]:
        query = _fts_query(text)
        if not query:
            return []
        rows = self._conn.execute(
            "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY s LIMIT ?",
            (query, limit),
        ).fetchall()
        # bm25() is lower-is-better (negative); flip it so higher is better like the others.
        return [(int(r[0]), -float(r[1])) for r in rows]

    def search(self, text: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The `k` best chunks for `text`, best first; scores as in `tools.store.base`."""
        chosen = check_mode(mode)
        check_k(k)
        if not text.strip():
            raise UsageError("the search text is empty")
        with self._lock:
            if chosen != "bm25":
                why = self._dense_ready()
                if why is None and self._load_matrix().ids.size == 0:
                    why = "the store holds no vectors"
                if why is not None:
                    chosen = self._fallback(chosen, why)
            dense_of: dict[int, float] = {}
            if chosen == "bm25":
                ranked = self._bm25(text, k)
            else:
                assert self.embedder is not None
                matrix = self._load_matrix()
                query = self.embedder.embed([text])[0]
                sims = matrix.vectors @ query
                depth = k if chosen == "dense" else fusion_depth(k)
                top = _top_indices(sims, depth)
                dense_ranked = [(int(matrix.ids[i]), float(sims[i])) for i in top]
                if chosen == "dense":
                    ranked = dense_ranked
                else:
                    bm25_ranked = self._bm25(text, depth)
                    fused = rrf_fuse(
                        [[str(i) for i, _ in bm25_ranked], [str(i) for i, _ in dense_ranked]],
                        k=RRF_K,
                    )
                    ranked = [(int(key), score) for key, score in fused[:k]]
                for row_id, _ in ranked:
                    row = matrix.row_of.get(row_id)
                    if row is not None:
                        dense_of[row_id] = float(sims[row])
            return self._hits(ranked, dense_of)

    def _hits(self, ranked: list[tuple[int, float]], dense_of: dict[int, float]) -> list[Hit]:
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        rows = {
            int(r[0]): r[1:]
            for r in self._conn.execute(
                f"SELECT id, doc_id, chunk_id, text, title FROM chunks WHERE id IN ({marks})",
                [i for i, _ in ranked],
            )
        }
        return [
            Hit(
                doc_id=rows[i][0],
                chunk_id=rows[i][1],
                score=score,
                text=rows[i][2],
                title=rows[i][3],
                dense=dense_of.get(i),
            )
            for i, score in ranked
            if i in rows
        ]

    def check_integrity(self) -> None:
        """Raise ToolError unless SQLite and the FTS index agree that the file is sound."""
        with self._lock:
            result = self._conn.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise ToolError(f"{self.path} is damaged: {result}")
            try:
                self._conn.execute(
                    "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)"
                )
            except sqlite3.DatabaseError as e:
                raise ToolError(f"{self.path}: the full-text index is out of step: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._matrix = None
            self._conn.close()

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _top_indices(scores: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k largest scores, largest first."""
    if scores.size <= k:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
