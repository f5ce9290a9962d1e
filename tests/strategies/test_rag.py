"""rag on a real embedded store with a scripted engine: prompts, citations, abstention, and
retrieval charged to the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.rag import ABSTAIN, Rag, select_sentences, split_sentences, term_overlap
from apportion.tools.store.base import DocumentVersion, Hit
from apportion.tools.store.chunking import chunk_document
from apportion.tools.store.embed import Embedder, MiniLMEmbedder, minilm_available
from apportion.tools.store.embedded import EmbeddedStore
from apportion.types import Budget, Query
from fakes import ScriptedEngine

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine

# Most tests use a BM25-only store on purpose (no model load); its fallback warning is expected.
pytestmark = pytest.mark.filterwarnings(
    "ignore::apportion.tools.store.base.RetrievalFallbackWarning"
)

CORPUS = {
    "sb50": (
        "Super_Bowl_50",
        "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50 at "
        "Levi's Stadium in Santa Clara, California.",
    ),
    "eiffel": (
        "Eiffel_Tower",
        "The Eiffel Tower in Paris was completed in 1889 as the entrance arch to the World's Fair.",
    ),
    "rhine": (
        "Rhine",
        "The Rhine rises in the Swiss Alps and flows through Germany and the Netherlands "
        "into the North Sea.",
    ),
}


def fill(store: EmbeddedStore) -> EmbeddedStore:
    store.replace_documents(
        [
            DocumentVersion(d, tuple(chunk_document(d, text, title=title)))
            for d, (title, text) in CORPUS.items()
        ]
    )
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    db = fill(EmbeddedStore(tmp_path / "bm25.sqlite", embedder=None))
    yield db
    db.close()


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    if not minilm_available():
        pytest.skip("the embed extra (sentence-transformers, model package) is not installed")
    return MiniLMEmbedder(threads=1)


@pytest.fixture
def dense_store(tmp_path: Path, minilm: Embedder) -> Iterator[EmbeddedStore]:
    db = fill(EmbeddedStore(tmp_path / "dense.sqlite", embedder=minilm))
    yield db
    db.close()


def ctx_for(engine: ScriptedEngine, store: EmbeddedStore | None) -> RunContext:
    return RunContext.over(
        engine_for=lambda _: cast("TextEngine", engine),  # ScriptedEngine has no stream()
        default_model=engine.model_id,
        ledger=Ledger(budget=Budget()),
        max_tokens=32,
        store=store,
    )


def test_answers_from_the_passage_that_holds_it(store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["Denver Broncos"])
    ctx = ctx_for(engine, store)
    attempt = Rag(k=2).run(Query("Which team won Super Bowl 50?", kind="text"), ctx)
    assert attempt.ok and attempt.answer == "Denver Broncos"
    assert attempt.citations == ("sb50#0",)
    assert attempt.confidence == 0.75  # the span is copied from a retrieved passage
    (messages,) = engine.calls
    assert "shortest phrase copied from the context" in messages[0].content
    assert messages[1].content.endswith("Question: Which team won Super Bowl 50?")


def test_the_best_passage_sits_next_to_the_question() -> None:
    hits = [Hit("a", "a#0", 0.9, "First passage.", "A"), Hit("b", "b#0", 0.5, "Second one.")]
    (_, user) = Rag().messages(Query("Which?"), hits)
    assert user.content == "Context:\nSecond one.\n\n(A) First passage.\n\nQuestion: Which?"


def test_retrieval_and_generation_are_both_charged(store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["1889"])
    ctx = ctx_for(engine, store)
    attempt = Rag().run(Query("When was the Eiffel Tower completed?", kind="number"), ctx)
    assert (attempt.answer, attempt.citations) == ("1889", ("eiffel#0",))
    assert not attempt.abstained
    calls = ctx.ledger.totals().calls
    assert [(c.kind, c.name, c.detail) for c in calls] == [
        ("tool", "retrieval", "rag: retrieve"),
        ("model", "scripted", "rag: answer"),
    ]
    assert calls[0].wall_s >= 0 and calls[0].flops == 0


def test_unrelated_question_abstains_without_calling_the_model(store: EmbeddedStore) -> None:
    engine = ScriptedEngine([])
    ctx = ctx_for(engine, store)
    attempt = Rag().run(Query("How long should sourdough bread proof?"), ctx)
    assert attempt.ok and attempt.answer == ABSTAIN and attempt.abstained
    assert attempt.confidence < 0.1 and attempt.citations == ()
    assert engine.calls == []
    assert [c.name for c in ctx.ledger.totals().calls] == ["retrieval"]


def test_a_partial_keyword_match_is_not_enough(store: EmbeddedStore) -> None:
    # "Paris" matches the Eiffel passage, but one of four content words is below the gate.
    attempt = Rag().run(
        Query("What is the best bakery in Paris for croissants?"),
        ctx_for(ScriptedEngine([]), store),
    )
    assert attempt.answer == ABSTAIN
    assert "25%" in attempt.rationale


def test_model_saying_not_found_is_an_abstention(store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["Not found in the documents."])
    attempt = Rag().run(Query("Who designed the Eiffel Tower in Paris?"), ctx_for(engine, store))
    assert (attempt.answer, attempt.citations, attempt.abstained) == (ABSTAIN, (), True)
    assert attempt.confidence < 0.1 and len(engine.calls) == 1


def test_uncited_answer_cites_the_passages_that_hold_it(store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["the Netherlands"])
    attempt = Rag().run(
        Query("Through which countries does the Rhine flow to the North Sea?"),
        ctx_for(engine, store),
    )
    assert attempt.answer == "the Netherlands"
    assert attempt.citations == ("rhine#0",)


def test_an_answer_in_no_passage_is_unsure_and_cites_nothing(store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["Green Bay Packers"])
    attempt = Rag(k=2).run(Query("Who lost Super Bowl 50?"), ctx_for(engine, store))
    assert attempt.answer == "Green Bay Packers"
    assert attempt.citations == () and attempt.confidence == 0.3


def test_a_missing_store_is_reported_not_raised() -> None:
    attempt = Rag().run(Query("anything?"), ctx_for(ScriptedEngine([]), None))
    assert not attempt.ok and attempt.error is not None and "store" in attempt.error


def test_dense_gate_with_real_embeddings(dense_store: EmbeddedStore) -> None:
    engine = ScriptedEngine(["Santa Clara"])
    ctx = ctx_for(engine, dense_store)
    answered = Rag().run(Query("Where did the Broncos win the Super Bowl?"), ctx)
    assert answered.answer == "Santa Clara" and "cosine" in answered.rationale
    abstained = Rag().run(Query("How long should sourdough bread proof?"), ctx)
    assert abstained.answer == ABSTAIN and len(engine.calls) == 1


def test_term_overlap() -> None:
    assert term_overlap("Which rivers flow north?", "The river flows to the north sea") == 1.0
    assert term_overlap("the of and", "nothing shared") == 0.0
    assert term_overlap("Paris bakeries", "Paris is big") == 0.5


@pytest.mark.parametrize("bad", ["k=0", "min_score=2.0", "min_overlap=1.5"])
def test_bad_parameters(bad: str) -> None:
    key, value = bad.split("=")
    with pytest.raises(ValueError):
        Rag(**{key: float(value) if "." in value or key != "k" else int(value)})  # type: ignore[arg-type]


def test_context_keeps_the_sentences_that_share_the_question_terms() -> None:
    first = Hit(
        "sb50", "sb50#0", 0.9,
        "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina "
        "Panthers 24-10. The game was played on February 7, 2016. It was held at Levi's Stadium.",
        "Super_Bowl_50",
    )  # fmt: skip
    second = Hit("nfl", "nfl#0", 0.5, "The NFL has 32 teams. Its season runs from September.")
    kept = select_sentences("Which team did the Denver Broncos defeat?", [first, second], 8)
    assert kept == [(first, "The Denver Broncos defeated the Carolina Panthers 24-10.")]
    # a larger budget adds sentences by shared terms, printed in each passage's own order
    kept = select_sentences("When was the Super Bowl 50 game played?", [first, second], 16)
    assert kept == [
        (first, "Super Bowl 50 was an American football game. The game was played on February "
         "7, 2016."),
    ]  # fmt: skip
    # the prompt holds only what was kept; 0 turns compression off
    (_, user) = Rag(context_words=10).messages(Query("Who did the Broncos defeat?"), [first])
    assert "Levi's" not in user.content and "Carolina Panthers" in user.content
    (_, user) = Rag(context_words=0).messages(Query("Who did the Broncos defeat?"), [first])
    assert "Levi's" in user.content


def test_split_sentences_keeps_abbreviation_free_text_whole() -> None:
    assert split_sentences("One. Two? Three! 4 is a number. \"Quoted.\" (Aside.)") == [
        "One.", "Two?", "Three!", "4 is a number.", '"Quoted."', "(Aside.)",
    ]  # fmt: skip
    assert split_sentences("Version 2.5 shipped. e.g. lower case stays.") == [
        "Version 2.5 shipped. e.g. lower case stays."
    ]
