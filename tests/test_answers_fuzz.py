"""Fuzzing the answer parsers and scorers (Hypothesis): no input raises, and numbers are read
consistently: exactly, whatever their size, and equal however they are written."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.answers import (
    bare_letter,
    canonical_number,
    extract_answer,
    gold_letters,
    is_bare_number,
    match_options,
    normalize_text,
    parse_number,
    predicted_letters,
    read_boolean,
    vote_key,
)
from apportion.bench.scoring import Score, infer_kind, score, token_f1
from apportion.types import AnswerKind

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS: tuple[AnswerKind | None, ...] = (None, "number", "choice", "boolean", "text")
RIGHT = Score(correct=True, f1=1.0, exact=True)

# Text that looks like model output about numbers: digits of several scripts, signs, separators,
# exponents, powers, LaTeX, answer markers.
FRAGMENTS = st.sampled_from(
    [
        "0", "1", "7", "9", "٣", "３", "𝟗", "²", ".", ",", "-", "−", "+", "e", "E", "^", "**", "/",
        "%", "$", "€", " ", "\n", "x", "×", "10^", "\\times", "\\frac{", "}{", "}", "{",
        "\\boxed{", "(", ")", "(B)", "A.", "yes", "no", "True", "The answer is ", "####", "=",
        "Dr.", "not found", "1e400", "9" * 40,
    ]
)  # fmt: skip
NUMBERISH = st.lists(FRAGMENTS, max_size=30).map("".join)
TEXT = st.one_of(st.text(max_size=300), NUMBERISH)
CHOICES = st.lists(st.text(max_size=20), max_size=5).map(tuple)

# Integers up to ~3,000 digits: well beyond float range, within what the parser reads.
HUGE = st.integers(min_value=-(10**3000), max_value=10**3000)


@FUZZ
@given(TEXT, CHOICES)
def test_no_parser_raises(text: str, choices: tuple[str, ...]) -> None:
    for kind in KINDS:
        extract_answer(text, kind, choices)
        vote_key(text, kind)
    parse_number(text)
    canonical_number(text)
    match_options(text, choices)
    normalize_text(text)
    bare_letter(text, choices)
    gold_letters(text, choices)
    predicted_letters(text, choices)
    read_boolean(text)
    is_bare_number(text)


@FUZZ
@given(TEXT, TEXT, CHOICES)
def test_no_scorer_raises(predicted: str, gold: str, choices: tuple[str, ...]) -> None:
    for kind in ("number", "choice", "boolean", "text"):
        result = score(predicted, gold, kind=kind, choices=choices)  # type: ignore[arg-type]
        assert 0.0 <= result.f1 <= 1.0
    infer_kind(gold, choices)
    assert 0.0 <= token_f1(predicted, gold) <= 1.0


@FUZZ
@given(TEXT)
def test_an_answer_is_right_against_itself(text: str) -> None:
    if text.strip():
        assert score(text, text, kind="text").correct
    if parse_number(text) is not None:
        assert score(text, text, kind="number").correct
    if read_boolean(text) is not None:
        assert score(text, text, kind="boolean").correct


@FUZZ
@given(HUGE)
def test_an_integer_is_read_exactly_however_it_is_written(n: int) -> None:
    forms = [str(n), f"{n:,}", f"{n}.0", f"{n}.000", f"{n}e0", f"${n}" if n >= 0 else f"-${-n}"]
    for form in forms:
        assert parse_number(form) == n, form
        assert canonical_number(form) == str(n)
    assert len({vote_key(f, "number") for f in forms}) == 1
    assert score(forms[1], forms[0], kind="number") == RIGHT


@FUZZ
@given(st.integers(min_value=-(10**200), max_value=10**200), st.integers(-2500, 2500))
def test_a_power_of_ten_is_the_same_number_in_every_notation(m: int, k: int) -> None:
    # huge (k > 0) and tiny (k < 0) alike, far beyond float range both ways
    value = m * Fraction(10) ** k
    forms = (f"{m}e{k}", f"{m}E{k:+d}", f"{m} × 10^{k}", f"{m}*10**{k}", f"{m}\\times 10^{{{k}}}")
    for form in forms:
        assert parse_number(form) == value, form
    if k >= 0:
        assert score(forms[0], str(value), kind="number") == RIGHT
    assert score(forms[0], forms[2], kind="number") == RIGHT


@FUZZ
@given(st.integers(-(10**500), 10**500), st.integers(1, 10**500))
def test_a_fraction_is_exact(p: int, q: int) -> None:
    assert parse_number(f"{p}/{q}") == Fraction(p, q)
    canon = canonical_number(f"{p}/{q}")
    assert canon is not None
    # the canonical form is the value to 15 significant digits
    back = parse_number(canon)
    assert back is not None
    assert abs(back - Fraction(p, q)) <= abs(Fraction(p, q)) * Fraction(1, 10**13)


@FUZZ
@given(st.integers(0, 10**50), st.sampled_from(["٠١٢٣٤٥٦٧٨٩", "０１２３４５６７８９"]))
def test_unicode_digits_read_as_their_value(n: int, digits: str) -> None:
    written = str(n).translate(str.maketrans("0123456789", digits))
    assert parse_number(written) == n
    assert canonical_number(written) == str(n)


@FUZZ
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_reads_back_as_itself(x: float) -> None:
    value = parse_number(repr(x))
    assert value is not None and float(value) == x


@FUZZ
@given(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
)
def test_ordinary_numbers_keep_the_float_tolerance(a: float, b: float) -> None:
    expected = math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    assert score(repr(a), repr(b), kind="number").correct == expected


@FUZZ
@given(HUGE, HUGE)
def test_huge_numbers_compare_exactly_with_the_same_tolerance(a: int, b: int) -> None:
    expected = abs(a - b) <= max(Fraction(1e-4) * max(abs(a), abs(b)), Fraction(1e-6))
    assert score(str(a), str(b), kind="number").correct == expected
    assert score(str(a), str(a), kind="number") == RIGHT
