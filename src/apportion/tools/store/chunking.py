"""Split documents into overlapping word windows that end on sentence boundaries.

A text of at most ``words + overlap`` words stays one chunk (a SQuAD paragraph, ~120 words, is
one chunk with the defaults). Longer texts become windows of at most ``words`` words; each
window ends at a sentence end when one lies in its second half, and the next window starts
``overlap`` words back (moved forward to a sentence start when one is near), so a fact cut by
one boundary is whole in a neighbour. Chunk ids are ``f"{doc_id}#{position}"``: the same text
chunked with the same settings always gets the same ids.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from apportion.errors import UsageError
from apportion.tools.store.base import Chunk

DEFAULT_WORDS = 200
DEFAULT_OVERLAP = 40

_PARAGRAPH_RE = re.compile(r"\n\s*\n")
# A word that ends a sentence: ends with . ! or ?, perhaps followed by closing quotes/brackets.
_SENTENCE_END_RE = re.compile(r"[.!?][\"'”’)\]]*$")
_SENTENCE_START_RE = re.compile(r"^[\"'“‘(\[]*[A-Z0-9]")


@dataclass(frozen=True)
class ChunkSpec:
    """How to cut documents: window size and overlap, in words."""

    words: int = DEFAULT_WORDS
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.words < 1:
            raise UsageError(f"chunk size must be at least 1 word, got {self.words}")
        if not 0 <= self.overlap < self.words:
            raise UsageError(
                f"overlap must be between 0 and the chunk size - 1 ({self.words - 1}), "
                f"got {self.overlap}"
            )


def _words_and_boundaries(text: str) -> tuple[list[str], set[int]]:
    """All words, and the indices of words that start a sentence or paragraph."""
    words: list[str] = []
    starts: set[int] = set()
    for paragraph in _PARAGRAPH_RE.split(text):
        tokens = paragraph.split()
        if not tokens:
            continue
        starts.add(len(words))
        for i, token in enumerate(tokens):
            if i > 0 and _SENTENCE_END_RE.search(tokens[i - 1]) and _SENTENCE_START_RE.match(token):
                starts.add(len(words) + i)
        words.extend(tokens)
    return words, starts


def windows(text: str, spec: ChunkSpec = ChunkSpec()) -> list[str]:
    """The chunk texts of `text` (whitespace collapsed), in order; [] for a blank text."""
    words, boundary_set = _words_and_boundaries(text)
    # Sorted, so each window finds its nearest boundary by bisection: scanning every boundary
    # per window took quadratic time on long texts of short sentences.
    starts = sorted(boundary_set)
    n = len(words)
    if n == 0:
        return []
    if n <= spec.words + spec.overlap:
        return [" ".join(words)]
    out: list[str] = []
    start = 0
    while True:
        end = min(start + spec.words, n)
        if end < n:
            # End at the last sentence start in the window's second half, if there is one.
            i = bisect_right(starts, end) - 1
            if i >= 0 and starts[i] > start + spec.words // 2:
                end = starts[i]
        out.append(" ".join(words[start:end]))
        if end >= n:
            return out
        nxt = end - spec.overlap
        # Start the next window at a sentence start inside the overlap, when one is there.
        i = bisect_left(starts, nxt)
        if i < len(starts) and starts[i] < end:
            nxt = starts[i]
        start = max(nxt, start + 1)


def chunk_document(
    doc_id: str, text: str, *, title: str = "", spec: ChunkSpec = ChunkSpec()
) -> list[Chunk]:
    """`text` as Chunks with ids ``doc_id#0``, ``doc_id#1``, ..."""
    return [
        Chunk(chunk_id=f"{doc_id}#{i}", doc_id=doc_id, text=piece, title=title, position=i)
        for i, piece in enumerate(windows(text, spec))
    ]
