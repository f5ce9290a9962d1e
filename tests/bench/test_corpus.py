"""Resolving `bench --corpus`: a named corpus or a JSONL path, and its identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apportion.bench.corpus import resolve_corpus
from apportion.errors import UnknownNameError, UsageError


def write(path: Path, docs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_a_jsonl_path_reads_its_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [{"id": "a", "text": "Alpha.", "title": "A"}])
    corpus = resolve_corpus(str(path))
    (doc,) = corpus.documents()
    assert (doc.doc_id, doc.text, doc.title) == ("a", "Alpha.", "A")
    store = corpus.default_store(tmp_path)
    assert store.parent == tmp_path / "bench-stores" and store.name.startswith("c-")


def test_the_digest_follows_the_content(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [{"id": "a", "text": "Alpha."}])
    first = resolve_corpus(str(path)).digest
    assert resolve_corpus(str(path)).digest == first
    write(path, [{"id": "a", "text": "Alpha, changed."}])
    assert resolve_corpus(str(path)).digest != first


def test_the_named_squad_corpus_maps_its_ids(tmp_path: Path) -> None:
    folder = tmp_path / "squad_v1.1_dev"
    folder.mkdir()
    write(folder / "corpus_paragraphs.jsonl", [{"pid": "SB#0", "title": "SB", "text": "Hi."}])
    corpus = resolve_corpus("squad", data_dir=tmp_path)
    assert corpus.label == "squad" and corpus.default_store(tmp_path).name.startswith("squad-")
    assert [d.doc_id for d in corpus.documents()] == ["SB#0"]


def test_bad_corpora_are_refused_with_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="squad"):
        resolve_corpus("wikipedia")
    with pytest.raises(UsageError, match="not found"):
        resolve_corpus(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match=r"\.jsonl"):
        resolve_corpus(str(tmp_path / "notes.txt"))
    with pytest.raises(UsageError, match="missing"):
        resolve_corpus("squad", data_dir=tmp_path)
