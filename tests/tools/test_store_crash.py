"""A killed ingest leaves every document of the embedded store wholly old or wholly new.

Version 1 of N files is indexed first; then a subprocess re-indexes version 2 and is killed
with SIGKILL, once from inside a write transaction (deterministic) and once from outside at a
moment of the parent's choosing. After each kill the store must open, pass SQLite's and FTS5's
integrity checks, and hold for each document exactly the chunks of one version.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from apportion.tools.store.chunking import ChunkSpec, windows
from apportion.tools.store.embedded import EmbeddedStore
from apportion.tools.store.ingest import SourceDocument, content_hash

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

N_DOCS = 240
SPEC = ChunkSpec(words=50, overlap=10)
WORDS = {1: 100, 2: 160}  # version -> words per document

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time, zlib
    import numpy as np
    from apportion.tools.store.chunking import ChunkSpec
    from apportion.tools.store.embedded import EmbeddedStore
    from apportion.tools.store.ingest import ingest

    class HashEmbedder:
        # Bag-of-words hashing: deterministic across processes, and fast.
        name = "test-hash"
        dim = 16

        def embed(self, texts):
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for i, text in enumerate(texts):
                for word in text.split():
                    out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    store_path, docs, die_in_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pace = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if die_in_batch:
        original = EmbeddedStore._insert
        calls = [0]

        def dying_insert(self, conn, chunks, blobs):
            calls[0] += 1
            if calls[0] == die_in_batch:
                # Old chunks deleted, half the new ones written, transaction still open.
                half = len(chunks) // 2
                original(self, conn, chunks[:half], blobs[:half])
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, conn, chunks, blobs)

        EmbeddedStore._insert = dying_insert
    store = EmbeddedStore(store_path, embedder=HashEmbedder())

    def progress(done, total):
        print(done, total, flush=True)
        time.sleep(pace)  # lets the parent's kill land before the end

    ingest(store, [docs], spec=ChunkSpec(words=50, overlap=10), batch_chunks=12, progress=progress)
    print("finished", flush=True)
    """
)


def text_of(doc: int, version: int) -> str:
    return " ".join(f"v{version}d{doc}w{j}" for j in range(WORDS[version]))


def write_version(root: Path, version: int) -> None:
    root.mkdir(exist_ok=True)
    for i in range(N_DOCS):
        (root / f"doc{i:04d}.txt").write_text(text_of(i, version))


def run_child(script: Path, store: Path, docs: Path, die_in_batch: int = 0) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(script), str(store), str(docs), str(die_in_batch)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if die_in_batch:
        assert result.returncode == -signal.SIGKILL, result.stderr
    else:
        assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def versions_in_store(store_path: Path, docs: Path) -> dict[int, int]:
    """Document number -> its one version; fails on any mixed or damaged document."""
    db = EmbeddedStore(store_path, embedder=None)
    try:
        db.check_integrity()
        rows = db._conn.execute(
            "SELECT doc_id, chunk_id, position, text, vector IS NOT NULL FROM chunks"
        ).fetchall()
        by_doc: dict[str, list[tuple[str, int, str, int]]] = {}
        for doc_id, chunk_id, position, text, has_vector in rows:
            by_doc.setdefault(doc_id, []).append((chunk_id, position, text, has_vector))
        assert len(by_doc) == N_DOCS
        out: dict[int, int] = {}
        hashes = db.content_hashes(list(by_doc))
        for doc_id, chunks in by_doc.items():
            number = int(re.search(r"doc(\d+)\.txt$", doc_id).group(1))  # type: ignore[union-attr]
            found = {int(v) for _, _, text, _ in chunks for v in re.findall(r"\bv(\d)d", text)}
            assert len(found) == 1, f"{doc_id} mixes versions {found}"
            (version,) = found
            expected = windows(text_of(number, version), SPEC)
            assert sorted((p, t) for _, p, t, _ in chunks) == list(enumerate(expected))
            assert {c for c, *_ in chunks} == {f"{doc_id}#{p}" for p in range(len(expected))}
            assert all(has_vector for *_, has_vector in chunks)
            source = SourceDocument(doc_id, text_of(number, version), f"doc{number:04d}")
            assert hashes[doc_id] == content_hash(source, SPEC)
            out[number] = version
        assert (
            db.count()
            == len(rows)
            == sum(len(windows(text_of(n, v), SPEC)) for n, v in out.items())
        )
        # The full-text index agrees: a version-2 word only finds version-2 documents.
        for n, v in list(out.items())[:20]:
            hits = db.search(f"v2d{n}w0", k=3, mode="bm25")
            assert (len(hits) > 0) == (v == 2)
        return out
    finally:
        db.close()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store, docs = tmp_path / "store.sqlite", tmp_path / "docs"
    write_version(docs, 1)
    lines = run_child(script, store, docs)
    assert lines[-1] == "finished"
    assert set(versions_in_store(store, docs).values()) == {1}
    write_version(docs, 2)
    return script, store, docs


def test_kill_inside_a_write_transaction_rolls_the_batch_back(
    setup: tuple[Path, Path, Path],
) -> None:
    script, store, docs = setup
    lines = run_child(script, store, docs, die_in_batch=10)
    committed = int(lines[-1].split()[0])  # documents done when the 9th batch committed
    assert 0 < committed < N_DOCS
    state = versions_in_store(store, docs)
    assert sum(v == 2 for v in state.values()) == committed
    # A rerun finishes the job and skips what the killed run completed.
    assert run_child(script, store, docs)[-1] == "finished"
    assert set(versions_in_store(store, docs).values()) == {2}


def test_sigkill_from_outside_mid_ingest_leaves_whole_documents(
    setup: tuple[Path, Path, Path],
) -> None:
    script, store, docs = setup
    child = subprocess.Popen(
        [sys.executable, str(script), str(store), str(docs), "0", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("finished"):
                pytest.fail("the ingest finished before it could be killed")
            if int(line.split()[0]) >= N_DOCS // 4:
                break
        # Land somewhere in the next batches: inside or between transactions.
        time.sleep(random.Random(child.pid).uniform(0.0, 0.03))
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    state = versions_in_store(store, docs)
    assert 2 in state.values() and 1 in state.values()
    assert run_child(script, store, docs)[-1] == "finished"
    assert set(versions_in_store(store, docs).values()) == {2}
