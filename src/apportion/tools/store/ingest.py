"""Read files into a store: .txt, .md, .jsonl, and folders of them (recursively).

- A .txt or .md file is one document; its id is the resolved path, its title the first
  Markdown heading or else the file name.
- A .jsonl file holds one document per line: ``{"id": ..., "text": ..., "title": ...}``
  (title optional); its id is the ``id`` field.

Each document's content hash (of its text, title and the chunking settings) is kept in the
store: an unchanged document is skipped, a changed one replaced whole (atomically). Documents
are written in batches so the embedding model sees many chunks per call.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from apportion.errors import UsageError
from apportion.tools.store.base import DocumentStore, DocumentVersion
from apportion.tools.store.chunking import ChunkSpec, chunk_document

SUFFIXES = (".txt", ".md", ".markdown", ".jsonl")
# Bump when chunking output changes, so stores re-chunk documents whose text did not change.
CHUNKER_VERSION = 1

ProgressCallback = Callable[[int, int], None]
"""Called as ``(documents_done, documents_total)`` after each batch."""

# A Markdown heading's line; its closing "#"s and spaces are trimmed in code (`_title`): as a
# pattern, "(.+?)\s*#*\s*$" takes cubic time on a heading with a long run of spaces.
_HEADING_RE = re.compile(r"^#{1,6}\s+(\S[^\n]*)", re.MULTILINE)


def _title(text: str) -> str | None:
    """The first Markdown heading's text ("# Title ##" -> "Title"), or None."""
    heading = _HEADING_RE.search(text)
    if heading is None:
        return None
    line = heading.group(1)
    return line.rstrip().rstrip("#").rstrip() or line[:1]


@dataclass(frozen=True)
class SourceDocument:
    doc_id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class IngestReport:
    documents: int  # read from the sources
    written: int  # new or changed, now stored
    skipped: int  # unchanged since the last ingest
    chunks: int  # chunks written
    seconds: float

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


def find_files(paths: Iterable[str | Path]) -> list[Path]:
    """The readable files under `paths`, folders expanded recursively, in a stable order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise UsageError(
                    f"cannot index {path}: unsupported file type {path.suffix or '(none)'}",
                    f"supported: {', '.join(SUFFIXES)}",
                )
            files.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    return list(dict.fromkeys(files))


def read_documents(path: Path, *, id_field: str = "id") -> Iterator[SourceDocument]:
    """The documents in one file; a .jsonl names each document's id in `id_field`."""
    if path.suffix.lower() == ".jsonl":
        yield from _read_jsonl(path, id_field)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    heading = _title(text) if path.suffix.lower() != ".txt" else None
    title = heading or path.stem
    yield SourceDocument(str(path.resolve()), text, title)


def _read_jsonl(path: Path, id_field: str) -> Iterator[SourceDocument]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{where} is not valid JSON: {e.msg}") from e
            if not isinstance(record, dict) or id_field not in record or "text" not in record:
                raise UsageError(
                    f"{where} needs an object with '{id_field}' and 'text'",
                    f'one document per line: {{"{id_field}": "...", "text": "...", '
                    '"title": "..."}',
                )
            if not isinstance(record["text"], str):
                raise UsageError(f"{where}: 'text' must be a string")
            yield SourceDocument(
                str(record[id_field]), record["text"], str(record.get("title") or "")
            )


def count_documents(files: Sequence[Path]) -> int:
    """How many documents `files` hold (a .jsonl counts its non-blank lines)."""
    total = 0
    for path in files:
        if path.suffix.lower() == ".jsonl":
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        else:
            total += 1
    return total


def content_hash(doc: SourceDocument, spec: ChunkSpec) -> str:
    payload = json.dumps([CHUNKER_VERSION, spec.words, spec.overlap, doc.title, doc.text])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def ingest(
    store: DocumentStore,
    paths: Iterable[str | Path],
    *,
    spec: ChunkSpec | None = None,
    batch_chunks: int = 256,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Index every document under `paths` into `store`; see the module docstring."""
    files = find_files(paths)
    total = count_documents(files)
    return ingest_documents(
        store,
        (doc for path in files for doc in read_documents(path)),
        total=total,
        spec=spec,
        batch_chunks=batch_chunks,
        progress=progress,
    )


def ingest_documents(
    store: DocumentStore,
    docs: Iterable[SourceDocument],
    *,
    total: int = 0,
    spec: ChunkSpec | None = None,
    batch_chunks: int = 256,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Index documents from any source; `total` only feeds the progress callback."""
    spec = spec or ChunkSpec()
    started = time.perf_counter()
    seen = written = skipped = chunks = 0
    # doc_id -> (document, hash); a later duplicate id in one batch wins, as it would across
    # batches.
    pending: dict[str, tuple[SourceDocument, str]] = {}
    pending_chunks = 0  # an estimate: chunking waits until the skip check

    def flush() -> None:
        nonlocal written, skipped, chunks, pending_chunks
        if not pending:
            return
        stored = store.content_hashes(list(pending))
        versions = [
            DocumentVersion(
                doc.doc_id,
                tuple(chunk_document(doc.doc_id, doc.text, title=doc.title, spec=spec)),
                digest,
            )
            for doc, digest in pending.values()
            if stored.get(doc.doc_id) != digest
        ]
        store.replace_documents(versions)
        written += len(versions)
        skipped += len(pending) - len(versions)
        chunks += sum(len(v.chunks) for v in versions)
        pending.clear()
        pending_chunks = 0
        if progress is not None:
            progress(seen, max(total, seen))

    for doc in docs:
        seen += 1
        pending[doc.doc_id] = (doc, content_hash(doc, spec))
        pending_chunks += max(1, -(-len(doc.text.split()) // spec.words))
        if pending_chunks >= batch_chunks:
            flush()
    flush()
    return IngestReport(seen, written, skipped, chunks, time.perf_counter() - started)
