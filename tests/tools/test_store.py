"""Both document stores through one protocol: the embedded SQLite store and milvus-lite.

Every test runs against each store; dense and hybrid tests use the real all-MiniLM-L6-v2
model, loaded once for the session.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from apportion.errors import UsageError
from apportion.tools.store import open_store
from apportion.tools.store.base import (
    Chunk,
    DocumentStore,
    DocumentVersion,
    RetrievalFallbackWarning,
)
from apportion.tools.store.chunking import ChunkSpec, chunk_document
from apportion.tools.store.embed import Embedder, MiniLMEmbedder, minilm_available

CORPUS = {
    "broncos": (
        "Super_Bowl_50",
        "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50, "
        "played on February 7, 2016 at Levi's Stadium in Santa Clara, California.",
    ),
    "photosynthesis": (
        "Photosynthesis",
        "Plants convert sunlight, water and carbon dioxide into glucose and oxygen inside "
        "their chloroplasts.",
    ),
    "eiffel": (
        "Eiffel_Tower",
        "The Eiffel Tower, a wrought-iron lattice tower on the Champ de Mars in Paris, was "
        "completed in 1889 as the entrance to the World's Fair.",
    ),
    "rhine": (
        "Rhine",
        "The Rhine river rises in the Swiss Alps and flows through Germany and the "
        "Netherlands into the North Sea.",
    ),
    "python": (
        "Python",
        "Python is a programming language created by Guido van Rossum, known for readable "
        "code and significant indentation.",
    ),
}


@pytest.fixture(scope="session")
def minilm() -> Embedder | None:
    if not minilm_available():
        return None
    embedder = MiniLMEmbedder(threads=1)  # the test machine's other core may be busy
    embedder.embed(["load the model once"])
    return embedder


KINDS = ["embedded", "milvus-lite"]


def make_uri(kind: str, folder: Path) -> str:
    if kind == "milvus-lite":
        pytest.importorskip("pymilvus", reason="pymilvus is not installed (the milvus extra)")
        pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (milvus extra)")
        return f"milvus-lite:{folder / 'milvus'}"
    return str(folder / "store.sqlite")


@pytest.fixture(params=KINDS)
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_uri(request.param, tmp_path)


def versions(corpus: dict[str, tuple[str, str]]) -> list[DocumentVersion]:
    return [
        DocumentVersion(doc_id, tuple(chunk_document(doc_id, text, title=title)), f"h-{doc_id}")
        for doc_id, (title, text) in corpus.items()
    ]


@pytest.fixture
def store(uri: str, minilm: Embedder | None) -> Iterator[DocumentStore]:
    """A fresh store holding CORPUS, for tests that change it."""
    db = open_store(uri, embedder=minilm)
    db.replace_documents(versions(CORPUS))
    yield db
    db.close()


@pytest.fixture(scope="module", params=KINDS)
def shared(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    minilm: Embedder | None,
) -> Iterator[DocumentStore]:
    """One store holding CORPUS per kind, for the read-only tests (milvus-lite setup is slow)."""
    db = open_store(make_uri(request.param, tmp_path_factory.mktemp("shared")), embedder=minilm)
    db.replace_documents(versions(CORPUS))
    yield db
    db.close()


def needs_embedder(minilm: Embedder | None) -> Embedder:
    if minilm is None:
        pytest.skip("the embed extra (sentence-transformers, model package) is not installed")
    return minilm


def test_each_paragraph_is_one_chunk(shared: DocumentStore) -> None:
    assert shared.count() == len(CORPUS)
    assert shared.stats()["chunks"] == len(CORPUS)
    assert shared.stats()["documents"] == len(CORPUS)


def test_bm25_ranks_the_keyword_match_first(shared: DocumentStore) -> None:
    hits = shared.search("Who created the Python language, Guido?", k=3, mode="bm25")
    assert hits[0].doc_id == "python" and hits[0].chunk_id == "python#0"
    assert "Guido van Rossum" in hits[0].text and hits[0].title == "Python"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(h.dense is None for h in hits)  # bm25 mode never embeds the query


def test_bm25_matches_titles(shared: DocumentStore) -> None:
    # "Photosynthesis" is only in the title; "Super_Bowl_50" must split on underscores.
    assert [h.doc_id for h in shared.search("photosynthesis", k=1, mode="bm25")] == [
        "photosynthesis"
    ]
    hits = shared.search("Eiffel Tower", k=1, mode="bm25")
    assert hits[0].doc_id == "eiffel" and hits[0].title == "Eiffel_Tower"


def test_bm25_stems_words_in_the_embedded_store(tmp_path: Path) -> None:
    db = open_store(tmp_path / "s.sqlite", embedder=None)
    db.replace_documents(versions(CORPUS))
    # "converting plant" only matches "convert ... Plants" through the porter stemmer.
    assert db.search("converting plant", k=1, mode="bm25")[0].doc_id == "photosynthesis"
    db.close()


def test_bm25_ignores_query_syntax(shared: DocumentStore) -> None:
    hits = shared.search('"Rhine" AND (NEAR OR * -', k=2, mode="bm25")
    assert hits and hits[0].doc_id == "rhine"


def test_dense_finds_a_paraphrase_without_shared_words(
    shared: DocumentStore, minilm: Embedder | None
) -> None:
    needs_embedder(minilm)
    hits = shared.search("How do green leaves make food from light?", k=2, mode="dense")
    assert hits[0].doc_id == "photosynthesis"
    assert hits[0].score == pytest.approx(hits[0].dense or 0.0)
    assert -1.0 <= hits[1].score <= hits[0].score <= 1.0


def test_hybrid_fuses_both_lists(shared: DocumentStore, minilm: Embedder | None) -> None:
    needs_embedder(minilm)
    hits = shared.search("which team won the championship game in Santa Clara", k=3)
    assert hits[0].doc_id == "broncos"
    assert 0 < hits[0].score <= 2 / 61 + 1e-9  # a reciprocal-rank-fusion sum
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.dense is not None for h in hits)
    assert hits[0].dense is not None and hits[0].dense > hits[-1].dense  # type: ignore[operator]


def test_unrelated_query_has_a_low_cosine(shared: DocumentStore, minilm: Embedder | None) -> None:
    needs_embedder(minilm)
    related = shared.search("When was the Eiffel Tower finished?", k=1)[0]
    unrelated = shared.search("How many eggs go into a sponge cake?", k=1)[0]
    assert related.doc_id == "eiffel"
    assert related.dense is not None and unrelated.dense is not None
    assert related.dense > 0.5 > 0.25 > unrelated.dense


def test_replace_swaps_the_whole_document(store: DocumentStore) -> None:
    long_text = " ".join(f"Sentence {i} is about barges on the Rhine." for i in range(60))
    store.replace("rhine", chunk_document("rhine", long_text, spec=ChunkSpec(100, 20)))
    new_count = len(chunk_document("rhine", long_text, spec=ChunkSpec(100, 20)))
    assert new_count > 1
    assert store.count() == len(CORPUS) - 1 + new_count
    assert all(h.doc_id != "rhine" for h in store.search("Netherlands Sea", k=5, mode="bm25"))
    hits = store.search("barges", k=10, mode="bm25")
    assert {h.doc_id for h in hits} == {"rhine"}
    assert {h.chunk_id for h in hits} == {f"rhine#{i}" for i in range(new_count)}
    # A plain replace has no content hash: the next ingest must not skip it.
    assert "rhine" not in store.content_hashes(["rhine"])


def test_replace_with_fewer_chunks_leaves_no_stale_ones(store: DocumentStore) -> None:
    text = " ".join(f"Word{i}." for i in range(300))
    store.replace("python", chunk_document("python", text, spec=ChunkSpec(50, 10)))
    store.replace("python", [Chunk("python#0", "python", "Python is short now.")])
    assert store.count() == len(CORPUS)
    assert [h.chunk_id for h in store.search("Word150", k=5, mode="bm25")] == []


def test_replace_rejects_chunks_of_another_document(store: DocumentStore) -> None:
    with pytest.raises(UsageError):
        store.replace("rhine", [Chunk("x#0", "eiffel", "text")])
    assert store.count() == len(CORPUS)


def test_delete_removes_documents_and_counts_what_existed(store: DocumentStore) -> None:
    assert store.delete(["eiffel", "no-such-doc", "eiffel"]) == 1
    assert store.count() == len(CORPUS) - 1
    assert all(h.doc_id != "eiffel" for h in store.search("Eiffel Paris", k=5, mode="bm25"))
    assert store.delete(["eiffel"]) == 0


def test_add_overwrites_a_chunk_with_the_same_id(store: DocumentStore) -> None:
    assert store.add([Chunk("rhine#0", "rhine", "The Danube flows into the Black Sea.")]) == 1
    assert store.count() == len(CORPUS)
    hit = store.search("Danube Black Sea", k=1, mode="bm25")[0]
    assert (hit.chunk_id, hit.doc_id) == ("rhine#0", "rhine")
    assert all(h.doc_id != "rhine" for h in store.search("Swiss Alps", k=3, mode="bm25"))
    # The document was edited chunk-wise: its stored hash no longer vouches for it.
    assert "rhine" not in store.content_hashes(["rhine"])
    assert store.content_hashes(["eiffel"]) == {"eiffel": "h-eiffel"}


def test_data_survives_reopening(uri: str, minilm: Embedder | None) -> None:
    db = open_store(uri, embedder=minilm)
    db.replace_documents(versions(CORPUS))
    db.close()
    db = open_store(uri, embedder=minilm)
    try:
        assert db.count() == len(CORPUS)
        assert db.search("Guido van Rossum", k=1, mode="bm25")[0].doc_id == "python"
        assert db.content_hashes(list(CORPUS)) == {d: f"h-{d}" for d in CORPUS}
        if minilm is not None:
            assert db.search("green leaves and light", k=1, mode="dense")[0].doc_id == (
                "photosynthesis"
            )
    finally:
        db.close()


def test_without_an_embedder_hybrid_falls_back_to_bm25_and_warns_once(uri: str) -> None:
    db = open_store(uri, embedder=None)
    db.replace_documents(versions(CORPUS))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = db.search("Guido van Rossum", k=2)
            second = db.search("Guido van Rossum", k=2, mode="dense")
        assert [w.category for w in caught] == [RetrievalFallbackWarning]
        assert "bm25" in str(caught[0].message)
        assert first == second == db.search("Guido van Rossum", k=2, mode="bm25")
        assert db.stats()["dense_search"] is False
    finally:
        db.close()


class OtherEmbedder:
    name = "other-model"
    dim = 384

    def embed(self, texts: object) -> np.ndarray:
        raise AssertionError("must not embed with a model the store was not built with")


def test_a_store_keeps_its_embedding_model(uri: str, minilm: Embedder | None) -> None:
    needs_embedder(minilm)
    db = open_store(uri, embedder=minilm)
    db.replace_documents(versions(CORPUS))
    db.close()
    db = open_store(uri, embedder=OtherEmbedder())
    try:
        with pytest.raises(UsageError, match="all-MiniLM"):
            db.add([Chunk("x#0", "x", "text")])
        assert db.count() == len(CORPUS)
    finally:
        db.close()


def test_bad_arguments_are_usage_errors(shared: DocumentStore) -> None:
    with pytest.raises(UsageError, match="mode"):
        shared.search("x", mode="fuzzy")
    with pytest.raises(UsageError):
        shared.search("x", k=0)
    with pytest.raises(UsageError):
        shared.search("   ")


def test_a_second_process_gets_a_clear_error_on_a_milvus_lite_store(tmp_path: Path) -> None:
    uri = make_uri("milvus-lite", tmp_path)
    db = open_store(uri, embedder=None)
    try:
        probe = (
            "import sys\n"
            "from apportion.errors import ToolError\n"
            "from apportion.tools.store import open_store\n"
            "try:\n"
            f"    open_store({uri!r}, embedder=None)\n"
            "except ToolError as e:\n"
            "    print(e.hint); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 3, result.stderr
        assert "one process at a time" in result.stdout
    finally:
        db.close()
