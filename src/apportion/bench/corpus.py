"""The document corpus a bench run retrieves from (`bench --corpus`).

A corpus is a JSONL file of ``{id, text, title?}`` documents, or the name of a public corpus in
the shared data dir (``squad``: the SQuAD v1.1 dev paragraphs). It is indexed into a store of
its own, by default ``$APPORTION_HOME/bench-stores/<name>-<digest>.sqlite`` where the digest
covers the corpus bytes and the chunking, so re-runs reuse the index and a changed corpus gets
a fresh one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from apportion.bench.datasets import DATA_DIR_ENV, default_data_dir
from apportion.errors import UnknownNameError, UsageError
from apportion.tools.store.chunking import ChunkSpec
from apportion.tools.store.ingest import CHUNKER_VERSION, SourceDocument, read_documents

__all__ = ["NAMED_CORPORA", "BenchCorpus", "resolve_corpus"]

# name -> (file under the data dir, its id field)
NAMED_CORPORA: dict[str, tuple[str, str]] = {
    "squad": ("squad_v1.1_dev/corpus_paragraphs.jsonl", "pid"),
}


@dataclass(frozen=True)
class BenchCorpus:
    """A corpus to index: where it is, how its records name their id, and its identity."""

    label: str  # what reports call it: the name, or the file path
    path: Path
    id_field: str
    digest: str  # of the bytes and the chunk spec: equal digests index identically

    def documents(self) -> Iterator[SourceDocument]:
        return read_documents(self.path, id_field=self.id_field)

    def default_store(self, home: Path) -> Path:
        stem = Path(self.label).stem if self.label not in NAMED_CORPORA else self.label
        return home / "bench-stores" / f"{stem}-{self.digest}.sqlite"


def resolve_corpus(
    spec: str, *, data_dir: Path | None = None, chunking: ChunkSpec | None = None
) -> BenchCorpus:
    """A corpus by name (see NAMED_CORPORA) or by path to a JSONL file."""
    chunking = chunking or ChunkSpec()
    path = Path(spec).expanduser()
    if spec in NAMED_CORPORA and not path.exists():
        relative, id_field = NAMED_CORPORA[spec]
        path = (data_dir or default_data_dir()) / relative
        if not path.is_file():
            raise UsageError(f"corpus {spec!r} is missing: {path}", f"check {DATA_DIR_ENV}")
        label = spec
    elif path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise UsageError(
                f"a corpus is a .jsonl file, got {path}",
                'one document per line: {"id": "...", "text": "...", "title": "..."}',
            )
        id_field, label = "id", str(path)
    elif path.suffix:
        raise UsageError(f"corpus file not found: {path}")
    else:
        raise UnknownNameError("corpus", spec, [*NAMED_CORPORA, "<path/to/corpus.jsonl>"])
    digest = hashlib.sha256()
    digest.update(f"{CHUNKER_VERSION}|{chunking.words}|{chunking.overlap}|{id_field}|".encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return BenchCorpus(label, path, id_field, digest.hexdigest()[:12])
