"""Every path that reads user or model text returns within a safety bound on 200,000 characters
of pathological input: a regex that backtracks (quadratic or worse) on some input holds the
interpreter lock, and in the server one such request stalls every other.

The bound is a generous safety margin, not a speed target: it is checked on the calling thread's
CPU time, so a busy machine does not make it flaky, and a quadratic path takes minutes here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion import answers
from apportion.bench import scoring
from apportion.router import features, intent
from apportion.strategies import program, prompts, rag
from apportion.strategies.cot import ChainOfThought
from apportion.strategies.direct import Direct
from apportion.tools import logic, safe_math, solver
from apportion.tools.store import chunking, ingest
from apportion.tools.store.base import Hit, keywords
from apportion.types import AnswerKind, Query

SIZE = 200_000
BOUND_S = 2.0


def _fill(unit: str, tail: str = "") -> str:
    return (unit * (SIZE // len(unit) + 1))[: SIZE - len(tail)] + tail


# The list (repeated "?", "(", digits, spaces, "not (", unicode digits, mixed), then
# the shapes that broke a pattern found in the audit.
INPUTS = {
    "question marks": _fill("?", "x"),
    "open brackets": _fill("("),
    "digits": _fill("9"),
    "digits then a letter": _fill("9", "x"),
    "spaces": _fill(" ", "x"),
    "not (": _fill("not ("),
    "unicode digits": _fill("٣"),
    "newlines": _fill("\n", "A)"),
    "boxed": _fill("\\boxed{"),
    "frac and spaces": "\\frac{" + _fill(" ", "}")[6:],
    "abbreviations": _fill("Dr. "),
    "initials": _fill("a."),
    "periods": _fill(".", "x"),
    "thousands": _fill("1,"),
    "fractions": _fill("1/"),
    "powers": _fill("10**"),
    "exponent": "1e" + _fill("9")[2:],
    "not found": _fill("not found "),
    "markers": _fill("answer is "),
    "heading": "# a" + _fill(" ", "b")[3:],
    "one-letter sentences": _fill("A. "),
    "mixed": _fill("not (1e9? 2x+(٣, \\boxed{Dr. a.\n(A) answer is 1/2 10^{ "),
}


def _hit(text: str) -> Hit:
    return Hit(doc_id="d", chunk_id="d#0", score=1.0, text=text)


def _parse_math(text: str) -> None:
    with contextlib.suppress(safe_math.MathParseError):
        safe_math.parse_system(text)


CHOICES = ("bank", "library")
# (kind, gold, choices) for each answer kind
KINDS = (("number", "42", ()), ("text", "Denver Broncos", ()), ("choice", "B", CHOICES),
         ("boolean", "yes", ()))  # fmt: skip


def _reader(kind: AnswerKind | None, choices: tuple[str, ...]) -> Callable[[str], object]:
    return lambda text: (
        answers.extract_answer(text, kind, choices),
        answers.vote_key(text, kind),
    )


def _scorer(kind: AnswerKind, gold: str, choices: tuple[str, ...]) -> Callable[[str], object]:
    return lambda text: (
        scoring.score(text, gold, kind=kind, choices=choices),
        scoring.score(gold, text, kind=kind, choices=choices),
    )


def _read_heading(text: str, tmp: Path) -> None:
    path = tmp / "doc.md"
    path.write_text(text, encoding="utf-8")
    list(ingest.read_documents(path))


PATHS: dict[str, Callable[[str], object]] = {
    "logic.evaluate_boolean": logic.evaluate_boolean,
    "safe_math.parse_system": _parse_math,
    "solver.extract_math": solver.extract_math,
    "solver.solve": solver.solve,
    "answers: untyped": _reader(None, ()),
    **{f"answers: {kind}": _reader(kind, choices) for kind, _, choices in KINDS},
    "answers.parse_number": answers.parse_number,
    "answers.canonical_number": answers.canonical_number,
    "answers.match_options": lambda t: answers.match_options(t, ("yes", t[:50])),
    "answers.normalize_text": answers.normalize_text,
    **{f"scoring: {kind}": _scorer(kind, gold, choices) for kind, gold, choices in KINDS},
    "scoring.infer_kind": scoring.infer_kind,
    "scoring.token_f1": lambda t: scoring.token_f1(t, t),
    "router.features.extract_features": features.extract_features,
    "router.intent.hashed_features": lambda t: intent.hashed_features(t, has_math_expression=True),
    "rag.select_sentences": lambda t: rag.select_sentences(t, [_hit(t)], 40),
    "rag.term_overlap": lambda t: rag.term_overlap(t, t),
    "rag.messages": lambda t: rag.Rag().messages(Query(t), [_hit(t)]),
    "rag: not-found reply": rag._says_not_found,
    "store.keywords": keywords,
    "chunking.chunk_document": lambda t: chunking.chunk_document("d", t),
    "prompts.with_options": lambda t: prompts.with_options(t, ("yes", t[:100])),
    "direct/cot/program messages": lambda t: [
        s.messages(Query(t, kind="number")) for s in (Direct(), ChainOfThought(), program.Program())
    ],
    "program: code and result": lambda t: (
        program.extract_code(t),
        program.extract_script(t),
        program.parse_result(t),
        program.last_printed(t),
        program._looks_numeric(t),
    ),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_each_text_path_returns_within_the_bound(path: str) -> None:
    read = PATHS[path]
    for name, text in INPUTS.items():
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        read(text)
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        assert cpu < BOUND_S, f"{path} on {name!r}: {cpu:.2f} s CPU ({wall:.2f} s wall)"


def test_document_titles_are_read_within_the_bound(tmp_path: Path) -> None:
    for name, text in INPUTS.items():
        cpu0 = time.thread_time()
        _read_heading(text, tmp_path)
        cpu = time.thread_time() - cpu0
        assert cpu < BOUND_S, f"ingest.read_documents on {name!r}: {cpu:.2f} s CPU"


# The patterns the linear code replaced, as the reference for what it must still read. On the
# short inputs below their backtracking costs nothing.
OLD_NOT_FOUND = re.compile(
    r"\bnot\s+(?:found|mentioned|given|stated)\b.*\b(?:document|passage)", re.IGNORECASE
)
OLD_NUMERIC = re.compile(r"-?[\d,]*\.?\d+(e-?\d+)?")
OLD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
PIECES = st.sampled_from(
    ["not", " ", "  ", "\n", "\t", "found", "Stated", "document", "passages", "undocumented",
     "-", "1", "9", ",", ".", "e", "x", "#", "##", "#######", "Title", "a b"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(PIECES, max_size=14).map("".join))
def test_linear_rewrites_read_what_the_old_patterns_read(text: str) -> None:
    assert rag._says_not_found(text) == (OLD_NOT_FOUND.search(text) is not None)
    assert program._looks_numeric(text) == (OLD_NUMERIC.fullmatch(text.strip()) is not None)
    heading = OLD_HEADING.search(text)
    # a heading of spaces alone no longer counts as a title (the file name is used instead)
    title = heading.group(1) if heading and heading.group(1).strip() else None
    assert ingest._title(text) == title


@pytest.mark.parametrize("unit", ["? ", " !", ". ", "= ", "q: ", " is", "not (", "(", "9"])
def test_paths_with_a_length_cap_are_checked_just_under_it(unit: str) -> None:
    capped: list[tuple[int, Callable[[str], object]]] = [
        (solver.MAX_QUESTION_CHARS, solver.extract_math),
        (logic.MAX_CHARS, logic.evaluate_boolean),
        (safe_math.MAX_LENGTH, _parse_math),
    ]
    for cap, read in capped:
        text = (unit * cap)[:cap]
        cpu0 = time.thread_time()
        read(text)
        cpu = time.thread_time() - cpu0
        assert cpu < BOUND_S, f"{read} on {cap} characters of {unit!r}: {cpu:.2f} s CPU"
