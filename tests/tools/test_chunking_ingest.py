"""Chunking (windows, overlap, stable ids) and ingestion (formats, skip/replace, progress)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.errors import UsageError
from apportion.tools.store.chunking import ChunkSpec, chunk_document, windows
from apportion.tools.store.embedded import EmbeddedStore
from apportion.tools.store.ingest import count_documents, find_files, ingest

SQUAD_PARAGRAPH = (
    "Super Bowl 50 was an American football game to determine the champion of the National "
    "Football League (NFL) for the 2015 season. The American Football Conference (AFC) "
    "champion Denver Broncos defeated the National Football Conference (NFC) champion "
    "Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on "
    "February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
    "California. As this was the 50th Super Bowl, the league emphasized the golden "
    'anniversary" with various gold-themed initiatives, as well as temporarily suspending the '
    "tradition of naming each Super Bowl game with Roman numerals."
)


def sentences(n: int, words_each: int = 10) -> str:
    """n sentences of exactly `words_each` words, each word unique (s3w7 = sentence 3 word 7)."""
    return " ".join(
        " ".join(f"s{i}w{j}" for j in range(words_each - 1)) + f" s{i}end." for i in range(n)
    )


# -- chunking ---------------------------------------------------------------------------------


def test_a_squad_paragraph_stays_one_chunk() -> None:
    chunks = chunk_document("Super_Bowl_50#0", SQUAD_PARAGRAPH, title="Super_Bowl_50")
    assert len(chunks) == 1
    (chunk,) = chunks
    assert chunk.chunk_id == "Super_Bowl_50#0#0" and chunk.position == 0
    assert chunk.text == " ".join(SQUAD_PARAGRAPH.split())
    assert chunk.title == "Super_Bowl_50"


def test_up_to_size_plus_overlap_is_one_chunk_beyond_that_two() -> None:
    spec = ChunkSpec(words=100, overlap=20)
    assert len(windows(" ".join(f"w{i}" for i in range(120)), spec)) == 1
    assert len(windows(" ".join(f"w{i}" for i in range(121)), spec)) == 2


def test_long_text_windows_end_on_sentences_and_overlap() -> None:
    text = sentences(60)  # 600 words
    spec = ChunkSpec(words=100, overlap=20)
    pieces = windows(text, spec)
    assert len(pieces) > 5
    for piece in pieces:
        words = piece.split()
        assert len(words) <= 100
        assert words[0].endswith("w0")  # starts at a sentence start
        assert words[-1].endswith("end.")  # ends at a sentence end
    for before, after in itertools.pairwise(pieces):
        a, b = before.split(), after.split()
        shared = [w for w in b if w in set(a)]
        assert 10 <= len(shared) <= 20  # the overlap, snapped to whole sentences
        assert a[-len(shared) :] == b[: len(shared)]
    # Nothing lost: every word of the text is in some chunk.
    assert set(text.split()) == {w for p in pieces for w in p.split()}


def test_text_without_sentence_ends_is_cut_by_words() -> None:
    text = " ".join(f"w{i}" for i in range(250))
    pieces = windows(text, ChunkSpec(words=100, overlap=30))
    assert [len(p.split()) for p in pieces] == [100, 100, 100, 40]
    assert pieces[1].split()[0] == "w70"  # 100 - 30
    assert pieces[-1].split()[-1] == "w249"


def test_paragraph_breaks_count_as_sentence_boundaries() -> None:
    paragraph = " ".join(f"p{{}}w{j}" for j in range(30))
    text = "\n\n".join(paragraph.format(*([i] * 30)) for i in range(8))  # 240 words, no dots
    pieces = windows(text, ChunkSpec(words=100, overlap=10))
    assert all(p.split()[-1].endswith("w29") for p in pieces)


def test_chunk_ids_are_stable_and_positional() -> None:
    text = sentences(80)
    first = chunk_document("doc", text, spec=ChunkSpec(words=120, overlap=30))
    again = chunk_document("doc", text, spec=ChunkSpec(words=120, overlap=30))
    assert first == again
    assert [c.chunk_id for c in first] == [f"doc#{i}" for i in range(len(first))]
    assert [c.position for c in first] == list(range(len(first)))


def test_blank_text_has_no_chunks() -> None:
    assert chunk_document("d", "  \n\n \t") == []


@pytest.mark.parametrize(("words", "overlap"), [(0, 0), (50, 50), (50, 80), (10, -1)])
def test_bad_chunk_specs_are_usage_errors(words: int, overlap: int) -> None:
    with pytest.raises(UsageError):
        ChunkSpec(words=words, overlap=overlap)


# -- ingestion --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    db = EmbeddedStore(tmp_path / "store.sqlite", embedder=None)
    yield db
    db.close()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "cats.md").write_text("# All about cats\n\nCats purr when content.\n")
    (root / "nested" / "eiffel.txt").write_text("The Eiffel Tower was completed in 1889.\n")
    (root / "nested" / "deeper" / "long.txt").write_text(sentences(50))
    (root / "nested" / "image.png").write_bytes(b"\x89PNG not text")
    (root / ".hidden" / "secret.txt").write_text("must not be indexed")
    records = [
        {"id": "sb50", "text": SQUAD_PARAGRAPH, "title": "Super_Bowl_50"},
        {"id": 42, "text": "Photosynthesis makes sugar from light."},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return root


def doc_ids(store: EmbeddedStore) -> set[str]:
    return {r[0] for r in store._conn.execute("SELECT doc_id FROM docs")}


def test_folders_are_read_recursively_skipping_hidden_and_unknown_files(docs: Path) -> None:
    files = find_files([docs])
    names = [f.name for f in files]
    assert sorted(names) == ["cats.md", "corpus.jsonl", "eiffel.txt", "long.txt"]
    assert count_documents(files) == 5  # the .jsonl holds two documents


def test_ingest_sets_ids_titles_and_chunks(store: EmbeddedStore, docs: Path) -> None:
    report = ingest(store, [docs], spec=ChunkSpec(words=200, overlap=40))
    assert (report.documents, report.written, report.skipped) == (5, 5, 0)
    long_chunks = len(windows(sentences(50), ChunkSpec(200, 40)))
    assert report.chunks == store.count() == 4 + long_chunks
    cats = str((docs / "cats.md").resolve())
    assert doc_ids(store) == {
        cats,
        str((docs / "nested" / "eiffel.txt").resolve()),
        str((docs / "nested" / "deeper" / "long.txt").resolve()),
        "sb50",
        "42",
    }
    hit = store.search("purr", k=1, mode="bm25")[0]
    assert (hit.doc_id, hit.chunk_id, hit.title) == (cats, f"{cats}#0", "All about cats")
    assert store.search("Broncos", k=1, mode="bm25")[0].title == "Super_Bowl_50"
    assert store.search("photosynthesis", k=1, mode="bm25")[0].doc_id == "42"
    assert store.search("Eiffel", k=1, mode="bm25")[0].title == "eiffel"


def test_reingest_skips_unchanged_and_replaces_changed(store: EmbeddedStore, docs: Path) -> None:
    ingest(store, [docs])
    before = store.count()
    again = ingest(store, [docs])
    assert (again.written, again.skipped, again.chunks) == (0, 5, 0)
    assert store.count() == before

    (docs / "nested" / "eiffel.txt").write_text("The Eiffel Tower is 330 metres tall.\n")
    changed = ingest(store, [docs])
    assert (changed.written, changed.skipped) == (1, 4)
    assert store.count() == before
    assert store.search("1889", k=3, mode="bm25") == []
    assert store.search("metres", k=1, mode="bm25")[0].doc_id.endswith("eiffel.txt")


def test_new_chunk_settings_rechunk_everything(store: EmbeddedStore, docs: Path) -> None:
    ingest(store, [docs], spec=ChunkSpec(200, 40))
    report = ingest(store, [docs], spec=ChunkSpec(60, 10))
    assert report.written == 5
    assert store.count() > 4 + len(windows(sentences(50), ChunkSpec(200, 40)))


def test_progress_reports_batches_up_to_the_total(store: EmbeddedStore, docs: Path) -> None:
    seen: list[tuple[int, int]] = []
    ingest(store, [docs], batch_chunks=1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # one document per batch


def test_an_explicit_unsupported_file_is_a_usage_error(store: EmbeddedStore, docs: Path) -> None:
    with pytest.raises(UsageError, match="unsupported file type"):
        ingest(store, [docs / "nested" / "image.png"])
    with pytest.raises(UsageError, match="no such file"):
        ingest(store, [docs / "missing.txt"])
    assert store.count() == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [("not json", "not valid JSON"), ('{"text": "no id"}', "'id' and 'text'"), ("[1]", "'id'")],
)
def test_bad_jsonl_lines_name_the_file_and_line(
    store: EmbeddedStore, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(UsageError, match=message) as info:
        ingest(store, [path])
    assert f"{path}:2" in info.value.message
