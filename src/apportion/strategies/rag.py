"""rag: retrieve passages from the document store, answer from them, cite them.

The prompt gives the top ``k`` passages as context, compressed to their sentences that share
the most content words with the question (``context_words``), the best passage last (nearest
the question), and asks for the shortest phrase copied from them; the passages that hold the
answer are its citations. The model is not asked to number its sources or to say "not found"
itself: in a small probe with qwen2.5-coder-0.5b both made it copy the wrong span or abstain on
answerable questions, so abstention is left to the relevance gate. What compression does is
measured by `apportion bench --dataset squad --limit 200 --corpus squad --strategies
direct,rag,rag:context_words=0` (README, Retrieval).

The relevance gate decides, before any model call, whether the store knows anything about the
question, from the retrieved hits:

- with embeddings (hits carry ``dense``, the query-chunk cosine): a hit's relevance is its
  cosine plus half the share of the question's content words it contains; the gate passes when
  the best hit reaches ``min_score``. The cosine is absolute, so one threshold holds in every
  search mode and store; the word share catches off-topic questions that merely sound alike.
  On SQuAD with all-MiniLM-L6-v2, 0.7 let through about 92% of questions whose paragraph is
  indexed, no GSM8K word problem and about 5% of short assistant requests (CLINC150) or
  commonsense questions (see benchmarks/retrieval_squad.py); cosine alone at 0.4 let through
  as many SQuAD questions but twice as many off-topic ones.
- without embeddings (a BM25-only store): the best hit must contain ``min_overlap`` of the
  question's content words. Raw BM25 scores grow with the corpus, so they cannot be
  thresholded once for all stores. This gate is weaker for short questions.

Below the gate the strategy abstains with "not found in the documents": a valid answer, with
low confidence, so a cascade can still escalate.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

from apportion.answers import extract_answer, normalize_text
from apportion.errors import ToolError
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext
from apportion.strategies.prompts import answer_format
from apportion.tools.store.base import Hit, keywords
from apportion.types import Attempt, Message, Query

ABSTAIN = "not found in the documents"
ABSTAIN_CONFIDENCE = 0.05
# A reply that says so itself: "not found" (or mentioned, given, stated), then "document" or
# "passage" later on the same line. Matched in two linear passes, not as one pattern with ".*"
# between, which rescans the rest of the line from every "not found" (quadratic).
_NOT_FOUND_RE = re.compile(r"\bnot\s+(?:found|mentioned|given|stated)\b", re.IGNORECASE)
_DOCUMENT_RE = re.compile(r"\b(?:document|passage)", re.IGNORECASE)
_SUFFIXES = ("ing", "ed", "es", "s")
# a sentence ends at . ! or ? (perhaps inside a closing quote or bracket) before a capital
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Rag:
    # Read by `bench`, which refuses to run a store-reading strategy without --corpus.
    uses_store: ClassVar[bool] = True

    k: Annotated[int, Bounds(1, 50)] = 3
    # Least relevance (cosine + half the word share, see above) of the best hit, with embeddings.
    min_score: Annotated[float, Bounds(-1, 1.5)] = 0.7
    # Without embeddings: least share of the question's content words found in one passage.
    min_overlap: Annotated[float, Bounds(0, 1)] = 0.5
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None
    # Each passage is cut to this many words in the prompt, to fit small context windows.
    passage_words: Annotated[int, Bounds(1, 2000)] = 220
    # Context compression: keep only the sentences of the retrieved passages that share the
    # most content words with the question, about this many words in all (0: whole passages).
    # On 100 SQuAD dev questions (seed 1), EM was 33% at 40 and 60 words, 34% at 80, 33% at
    # 120, at 1.61e11, 1.90e11, 2.23e11, 2.88e11 FLOPs: the answer sentence is what counts
    # (README, Retrieval, has the command).
    context_words: Annotated[int, Bounds(0, 5000)] = 40

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if not -1.0 <= self.min_score <= 1.5:
            raise ValueError(f"min_score is in [-1, 1.5] (see the docs); got {self.min_score}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap is a share, in [0, 1]; got {self.min_overlap}")
        if self.passage_words < 1:
            raise ValueError(f"passage_words must be at least 1, got {self.passage_words}")
        if self.context_words < 0:
            raise ValueError(f"context_words must be 0 (off) or more, got {self.context_words}")

    @property
    def name(self) -> str:
        return "rag"

    def relevance(self, question: str, hits: Sequence[Hit]) -> tuple[bool, str]:
        """Whether the hits can answer `question`, and the evidence, for the rationale."""
        if not hits:
            return False, "no passage matched"
        overlaps = [term_overlap(question, f"{h.title} {h.text}") for h in hits]
        scored = [
            (h.dense + share / 2, h.dense, share)
            for h, share in zip(hits, overlaps, strict=True)
            if h.dense is not None
        ]
        if scored:
            best, cosine, share = max(scored)
            return best >= self.min_score, (
                f"best passage relevance {best:.3f} = cosine {cosine:.3f} + "
                f"{share:.0%} of the question's terms / 2 (min {self.min_score})"
            )
        best = max(overlaps)
        return (
            best >= self.min_overlap,
            f"best passage holds {best:.0%} of the question's terms (min {self.min_overlap:.0%})",
        )

    def messages(self, query: Query, hits: Sequence[Hit]) -> list[Message]:
        if query.kind in (None, "text"):
            instruction = (
                "Answer the question with the shortest phrase copied from the context. "
                "Reply with the phrase only."
            )
        else:
            instruction = (
                f"Answer the question from the context. Reply with {answer_format(query)}."
            )
        if self.context_words:
            passages = [
                (h, _clip(text, self.passage_words))
                for h, text in select_sentences(query.text, hits, self.context_words)
            ]
        else:
            passages = [(h, _clip(h.text, self.passage_words)) for h in hits]
        context = "\n\n".join(f"{_title(h)}{text}" for h, text in reversed(passages))
        user = f"Context:\n{context}\n\nQuestion: {query.text}"
        return [Message("system", instruction), Message("user", user)]

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        try:
            hits = ctx.search(query.text, k=self.k, detail="rag: retrieve")
        except ToolError as e:
            return Attempt(self.name, None, 0.0, error=f"retrieval: {e}")
        relevant, evidence = self.relevance(query.text, hits)
        if not relevant:
            return _abstain(self.name, evidence)
        (completion,) = ctx.generate(
            self.messages(query, hits),
            model=self.model,
            max_tokens=self.max_tokens,
            detail="rag: answer",
        )
        text = completion.text.strip()
        rationale = f"{evidence}\n{text}"
        if not text:
            return Attempt(self.name, None, 0.0, rationale=rationale, error="empty answer")
        if _says_not_found(text) or normalize_text(text).startswith(normalize_text(ABSTAIN)):
            return _abstain(self.name, rationale)
        answer = extract_answer(text, query.kind, query.choices)
        if not answer:
            return Attempt(self.name, None, 0.0, rationale=rationale, error="no answer")
        supporting = [h for h in hits if _contains(f"{h.title} {h.text}", answer)]
        # A span found verbatim in a passage is the grounded case. A number, a letter or
        # yes/no cannot be looked up verbatim, so it rests on retrieval alone.
        if supporting:
            confidence = 0.75
        elif query.kind not in (None, "text"):
            confidence = 0.5
        else:
            confidence = 0.3
        return Attempt(
            self.name,
            answer,
            confidence,
            candidates=(answer,),
            rationale=rationale,
            citations=tuple(h.chunk_id for h in supporting),
        )


def _says_not_found(text: str) -> bool:
    """Whether a "not found" in `text` has "document" or "passage" after it on its line."""
    heads = [m.end() for m in _NOT_FOUND_RE.finditer(text)]
    if not heads:
        return False
    words = [m.start() for m in _DOCUMENT_RE.finditer(text, heads[0])]
    breaks = [i for i, ch in enumerate(text) if ch == "\n"] if words else []
    for end in heads:
        i = bisect_left(words, end)
        if i == len(words):
            return False
        j = bisect_left(breaks, end)
        if j == len(breaks) or words[i] < breaks[j]:
            return True
    return False


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def term_overlap(question: str, passage: str) -> float:
    """Share of the question's content words (lightly stemmed) that occur in `passage`."""
    terms = _terms(question)
    if not terms:
        return 0.0
    return len(terms & _terms(passage)) / len(terms)


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in keywords(text)}


def _abstain(name: str, rationale: str) -> Attempt:
    """The reply when the store holds nothing that answers the question: a valid answer that
    says so (marked as an abstention), with low confidence, so a cascade can still escalate."""
    return Attempt(name, ABSTAIN, ABSTAIN_CONFIDENCE, rationale=rationale, abstained=True)


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def select_sentences(question: str, hits: Sequence[Hit], words: int) -> list[tuple[Hit, str]]:
    """The sentences of `hits` that share the most content words with `question`, best first
    until about `words` words are kept (at least one sentence), given back per hit, in the hits'
    order and each passage's own sentence order; hits with nothing kept are left out."""
    terms = _terms(question)
    ranked = []
    for rank, hit in enumerate(hits):
        for position, sentence in enumerate(split_sentences(hit.text)):
            shared = len(terms & _terms(sentence))
            # most shared terms first; then the better-ranked passage; then earlier sentences
            ranked.append((-shared, rank, position, sentence))
    ranked.sort()
    kept: dict[int, list[tuple[int, str]]] = {}
    total = 0
    for _, rank, position, sentence in ranked:
        if total >= words:
            break
        kept.setdefault(rank, []).append((position, sentence))
        total += len(sentence.split())
    return [(hits[rank], " ".join(s for _, s in sorted(kept[rank]))) for rank in sorted(kept)]


def _contains(passage: str, answer: str) -> bool:
    needle = normalize_text(answer)
    return bool(needle) and f" {needle} " in f" {normalize_text(passage)} "


def _title(hit: Hit) -> str:
    title = hit.title.replace("_", " ").strip()
    return f"({title}) " if title else ""


def _clip(text: str, words: int) -> str:
    parts = text.split()
    return text if len(parts) <= words else " ".join(parts[:words]) + " ..."
