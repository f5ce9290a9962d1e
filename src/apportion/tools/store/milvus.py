"""The DocumentStore protocol on Milvus: milvus-lite in-process, or a Milvus server for scale.

One collection holds the chunks: the text, "title: text" analysed by a BM25 function into a
sparse vector under a SPARSE_INVERTED_INDEX, and, when the store has an embedding model, a dense
vector under HNSW/COSINE. Hybrid search is Milvus's ``hybrid_search`` with ``RRFRanker(60)``.
pymilvus is imported only here, so the rest of the package works without it.

Milvus has no transactions, so ``replace`` writes the new version's rows (each row carries a
version tag) and only then deletes the rows of other versions. A reader never sees a document
with chunks missing, but between those two calls (and forever, if the process dies there) it
may see both versions' chunks. Such a document reports no content hash, so the next ingest of
it replaces it again and removes the stale rows; searches drop duplicate chunk ids meanwhile.

milvus-lite 3.x applies the analyzer's lowercase and stop-word filters but not its stemmer
(a Milvus server applies all three), so its BM25 misses "cats" for "cat" where the SQLite
store's porter tokenizer matches.

milvus-lite 3.x returns BM25 scores negated (best is most negative) where servers return them
positive; the order is right in both, and hits carry ``abs(score)`` so higher is better.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from apportion.errors import ToolError, UsageError
from apportion.private_files import private_dir, private_tree, private_umask
from apportion.tools.store.base import (
    RRF_K,
    STOPWORDS,
    Chunk,
    DocumentVersion,
    Hit,
    SearchMode,
    batches,
    check_add,
    check_k,
    check_mode,
    check_versions,
    fusion_depth,
)
from apportion.tools.store.embed import (
    DenseFallback,
    Embedder,
    check_write_embedder,
    dense_unavailable,
    embed_passages,
    passage_text,
)

DEFAULT_COLLECTION = "apportion_chunks"
MILVUS_EXTRA_HINT = "install the milvus extra: pip install 'apportion[milvus]'"
_EMBEDDER_PROPERTY = "apportion.embedder"
_MAX_ID = 4096
_MAX_TEXT = 65535
_INSERT_BATCH = 512
_FILTER_BATCH = 200
_QUERY_LIMIT = 16384  # Milvus's largest query window
_OUTPUT = ["chunk_id", "doc_id", "title", "text"]


def _milvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise ToolError(f"pymilvus is not installed ({e})", MILVUS_EXTRA_HINT) from e
    return pymilvus


def _lit(value: str | list[str]) -> str:
    """A Milvus filter literal. JSON escaping is what Milvus's expression parser reads (this
    milvus-lite has no filter templates)."""
    return json.dumps(value, ensure_ascii=False)


class MilvusStore:
    """A DocumentStore in a Milvus collection (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        *,
        location: str,
        backend: str,
        collection: str = DEFAULT_COLLECTION,
        embedder: Embedder | None = None,
    ) -> None:
        self._client = client
        self.location = location
        self.backend = backend
        self.collection = collection
        self.embedder = embedder
        self._lock = threading.RLock()
        self._fallback = DenseFallback()
        self._dense_field = False
        self._stored_embedder: str | None = None
        self._private_root: Path | None = None  # a milvus-lite database folder, kept private
        self._create_or_load()

    @classmethod
    def lite(cls, path: Path, *, embedder: Embedder | None = None) -> MilvusStore:
        """milvus-lite in this process. `path` is a folder; the database lives in
        ``path/milvus.db`` (itself a folder), or in `path` when it already ends with .db."""
        pymilvus = _milvus()
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} is a file; milvus-lite needs a folder")
        db = path if path.suffix == ".db" else path / "milvus.db"
        # milvus-lite writes its files with the process's umask as it goes: the database
        # folder is made 0700 (so nothing in it can be reached by others meanwhile), and what
        # is in it is tightened to 0600/0700 on open (a store made before) and on close.
        private_dir(db)
        private_tree(db)
        try:
            with private_umask():
                client = pymilvus.MilvusClient(str(db))
        except pymilvus.exceptions.MilvusException as e:
            raise ToolError(
                f"cannot open the milvus-lite store {path}: {e.message}",
                "milvus-lite lets one process at a time open a database; stop the other one "
                "(a running server?), or use the SQLite store, which processes can share",
            ) from e
        with private_umask():  # the collection's folders and first files
            store = cls(client, location=str(path), backend="milvus-lite", embedder=embedder)
        store._private_root = db
        return store

    @classmethod
    def server(
        cls,
        uri: str,
        *,
        token: str = "",
        collection: str = DEFAULT_COLLECTION,
        embedder: Embedder | None = None,
    ) -> MilvusStore:
        pymilvus = _milvus()
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token, timeout=30)
        except pymilvus.exceptions.MilvusException as e:
            raise ToolError(
                f"cannot reach the Milvus server at {uri}: {e.message}",
                "is it running? set $MILVUS_TOKEN if it needs credentials",
            ) from e
        return cls(client, location=uri, backend="milvus", collection=collection, embedder=embedder)

    # -- schema -----------------------------------------------------------------------------

    def _create_or_load(self) -> None:
        c = self._client
        if c.has_collection(self.collection):
            info = c.describe_collection(self.collection)
            fields = {f["name"] for f in info["fields"]}
            if not {"pk", "chunk_id", "doc_id", "version", "search_text", "sparse"} <= fields:
                raise ToolError(
                    f"collection {self.collection!r} at {self.location} was not made by apportion",
                    "pick another collection with ?collection=NAME",
                )
            self._dense_field = "dense" in fields
            props = info.get("properties") or {}
            self._stored_embedder = props.get(_EMBEDDER_PROPERTY) if self._dense_field else None
            c.load_collection(self.collection)
            return
        m = _milvus()
        dtype = m.DataType
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", dtype.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("chunk_id", dtype.VARCHAR, max_length=_MAX_ID)
        schema.add_field("doc_id", dtype.VARCHAR, max_length=_MAX_ID)
        schema.add_field("title", dtype.VARCHAR, max_length=_MAX_ID)
        schema.add_field("position", dtype.INT64)
        schema.add_field("version", dtype.VARCHAR, max_length=64)
        schema.add_field("content_hash", dtype.VARCHAR, max_length=128)
        schema.add_field("text", dtype.VARCHAR, max_length=_MAX_TEXT)
        # BM25 reads "title: text", as the SQLite store's FTS index sees both columns.
        schema.add_field(
            "search_text",
            dtype.VARCHAR,
            max_length=_MAX_TEXT,
            enable_analyzer=True,
            # Servers apply all of these; milvus-lite 3.x applies lowercase and the stop list
            # and ignores the stemmer.
            analyzer_params={
                "tokenizer": "standard",
                "filter": [
                    "lowercase",
                    {"type": "stemmer", "language": "english"},
                    {"type": "stop", "stop_words": sorted(STOPWORDS)},
                ],
            },
        )
        schema.add_field("sparse", dtype.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            m.Function(
                name="text_bm25",
                function_type=m.FunctionType.BM25,
                input_field_names=["search_text"],
                output_field_names=["sparse"],
            )
        )
        index = c.prepare_index_params()
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        properties: dict[str, str] = {}
        if self.embedder is not None:
            schema.add_field("dense", dtype.FLOAT_VECTOR, dim=self.embedder.dim)
            index.add_index(
                field_name="dense",
                index_type="HNSW",
                metric_type="COSINE",
                params={"M": 16, "efConstruction": 200},
            )
            properties[_EMBEDDER_PROPERTY] = self.embedder.name
            self._dense_field = True
            self._stored_embedder = self.embedder.name
        c.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties=properties,
        )

    # -- writes -----------------------------------------------------------------------------

    def _write_embedder(self) -> Embedder | None:
        """The store keeps the model it was created with (or none) for life."""
        if not self._dense_field:
            return None
        return check_write_embedder(self.location, str(self._stored_embedder), self.embedder)

    def _rows(
        self, chunks: Sequence[Chunk], version: str, hashes: dict[str, str]
    ) -> list[dict[str, Any]]:
        embedder = self._write_embedder()
        for c in chunks:
            if len(passage_text(c.title, c.text).encode()) > _MAX_TEXT:
                raise UsageError(
                    f"chunk {c.chunk_id!r} is longer than Milvus's {_MAX_TEXT} bytes",
                    "use a smaller --chunk-words",
                )
            if max(len(c.chunk_id.encode()), len(c.doc_id.encode())) > _MAX_ID:
                raise UsageError(f"id {c.chunk_id[:80]!r}... is longer than {_MAX_ID} bytes")
        vectors = embed_passages(embedder, chunks) if embedder is not None and chunks else None
        rows: list[dict[str, Any]] = []
        for i, c in enumerate(chunks):
            row: dict[str, Any] = {
                "pk": uuid.uuid4().hex,
                "chunk_id": c.chunk_id,
                "doc_id": c.doc_id,
                "title": c.title[:_MAX_ID],
                "position": c.position,
                "version": version,
                "content_hash": hashes.get(c.doc_id, ""),
                "text": c.text,
                "search_text": passage_text(c.title, c.text),
            }
            if vectors is not None:
                row["dense"] = vectors[i].tolist()
            rows.append(row)
        return rows

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        for i in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[i : i + _INSERT_BATCH])

    def add(self, chunks: Sequence[Chunk]) -> int:
        """Insert chunks; a chunk whose id exists is overwritten (new row first, then the old
        one is deleted)."""
        if not chunks:
            return 0
        ids = check_add(chunks)
        version = uuid.uuid4().hex
        with self._lock:
            self._insert(self._rows(chunks, version, {}))
            for batch in batches(ids, _FILTER_BATCH):
                self._client.delete(
                    self.collection,
                    filter=f"chunk_id in {_lit(batch)} and version != {_lit(version)}",
                )
        return len(chunks)

    def replace(self, doc_id: str, chunks: Sequence[Chunk]) -> None:
        self.replace_documents([DocumentVersion(doc_id, tuple(chunks))])

    def replace_documents(self, docs: Sequence[DocumentVersion]) -> None:
        if not docs:
            return
        chunks = check_versions(docs)
        version = uuid.uuid4().hex
        hashes = {d.doc_id: d.content_hash for d in docs}
        with self._lock:
            self._insert(self._rows(chunks, version, hashes))
            # The crash window: both versions are visible until this delete lands.
            for batch in batches([d.doc_id for d in docs], _FILTER_BATCH):
                self._client.delete(
                    self.collection,
                    filter=f"doc_id in {_lit(batch)} and version != {_lit(version)}",
                )

    def delete(self, doc_ids: Sequence[str]) -> int:
        unique = list(dict.fromkeys(doc_ids))
        with self._lock:
            found = {r["doc_id"] for r in self._rows_of(unique, ["doc_id"])}
            for batch in batches(unique, _FILTER_BATCH):
                self._client.delete(self.collection, filter=f"doc_id in {_lit(batch)}")
        return len(found)

    # -- reads ------------------------------------------------------------------------------

    def _rows_of(self, doc_ids: list[str], fields: list[str]) -> Iterator[dict[str, Any]]:
        for batch in batches(doc_ids, _FILTER_BATCH):
            yield from self._client.query(
                self.collection,
                filter=f"doc_id in {_lit(batch)}",
                output_fields=fields,
                limit=_QUERY_LIMIT,
            )

    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Hashes of documents whose rows all come from one replace (see the module doc)."""
        seen: dict[str, set[tuple[str, str]]] = {}
        with self._lock:
            for row in self._rows_of(
                list(dict.fromkeys(doc_ids)), ["doc_id", "content_hash", "version"]
            ):
                seen.setdefault(row["doc_id"], set()).add((row["content_hash"], row["version"]))
        out: dict[str, str] = {}
        for doc_id, versions in seen.items():
            if len(versions) == 1:
                ((content_hash, _),) = versions
                if content_hash:
                    out[doc_id] = content_hash
        return out

    def count(self) -> int:
        with self._lock:
            rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def stats(self) -> dict[str, object]:
        with self._lock:
            docs = self._all_doc_ids()
            chunks = self.count()
        return {
            "backend": self.backend,
            "location": self.location,
            "collection": self.collection,
            "documents": len(docs),
            "chunks": chunks,
            "chunks_with_vectors": chunks if self._dense_field else 0,
            "embedder": self._stored_embedder,
            "dense_search": self._dense_ready() is None,
        }

    def _all_doc_ids(self) -> set[str]:
        if self.backend == "milvus-lite":
            # milvus-lite answers an unlimited query, and its query iterator logs a warning
            # about session timestamps it does not keep.
            rows = self._client.query(self.collection, filter='pk != ""', output_fields=["doc_id"])
            return {r["doc_id"] for r in rows}
        docs: set[str] = set()
        iterator = self._client.query_iterator(
            self.collection, batch_size=1000, filter="", output_fields=["doc_id"]
        )
        try:
            while batch := iterator.next():
                docs.update(r["doc_id"] for r in batch)
        finally:
            iterator.close()
        return docs

    def _dense_ready(self) -> str | None:
        """Why dense search cannot run now, or None when it can."""
        return dense_unavailable(self._stored_embedder, self.embedder)

    def search(self, text: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        chosen = check_mode(mode)
        check_k(k)
        if not text.strip():
            raise UsageError("the search text is empty")
        if chosen != "bm25" and (why := self._dense_ready()) is not None:
            chosen = self._fallback(chosen, why)
        # Ask for a few more than k: duplicates from a replace in flight are dropped below.
        limit = k + 4
        m = _milvus()
        with self._lock:
            if chosen == "bm25":
                result = self._client.search(
                    self.collection,
                    data=[text],
                    anns_field="sparse",
                    limit=limit,
                    search_params={"metric_type": "BM25"},
                    output_fields=_OUTPUT,
                )
                return _hits(result[0], k, "bm25")
            assert self.embedder is not None
            query = self.embedder.embed([text])[0]
            dense_params = {"metric_type": "COSINE", "params": {"ef": max(64, limit)}}
            if chosen == "dense":
                result = self._client.search(
                    self.collection,
                    data=[query.tolist()],
                    anns_field="dense",
                    limit=limit,
                    search_params=dense_params,
                    output_fields=_OUTPUT,
                )
                return _hits(result[0], k, "dense")
            depth = max(fusion_depth(k), limit)
            requests = [
                m.AnnSearchRequest(
                    data=[text], anns_field="sparse", param={"metric_type": "BM25"}, limit=depth
                ),
                m.AnnSearchRequest(
                    data=[query.tolist()], anns_field="dense", param=dense_params, limit=depth
                ),
            ]
            result = self._client.hybrid_search(
                self.collection,
                requests,
                m.RRFRanker(RRF_K),
                limit=limit,
                output_fields=[*_OUTPUT, "dense"],
            )
            return _hits(result[0], k, "hybrid", query)

    def close(self) -> None:
        with self._lock:
            self._client.close()
            if self._private_root is not None:
                private_tree(self._private_root)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hits(raw: Any, k: int, mode: SearchMode, query: Any = None) -> list[Hit]:
    """Milvus results as Hits, keeping the first row of each chunk id. Scores: BM25 as its
    magnitude (see the module doc), the cosine for dense, the RRF sum for hybrid; `dense` is
    the cosine, computed from the returned vector for hybrid hits."""
    import numpy as np

    out: list[Hit] = []
    seen: set[str] = set()
    for item in raw:
        entity = item["entity"]
        if entity["chunk_id"] in seen:
            continue
        seen.add(entity["chunk_id"])
        distance = float(item["distance"])
        dense: float | None = None
        if mode == "dense":
            dense = distance
        elif mode == "hybrid" and entity.get("dense") is not None:
            dense = float(np.dot(np.asarray(entity["dense"], dtype=np.float32), query))
        out.append(
            Hit(
                doc_id=entity["doc_id"],
                chunk_id=entity["chunk_id"],
                score=abs(distance) if mode == "bm25" else distance,
                text=entity["text"],
                title=entity.get("title", ""),
                dense=dense,
            )
        )
        if len(out) == k:
            break
    return out
