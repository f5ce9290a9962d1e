"""extract_answer / canonical_number / parse_number / vote_key: the one answer parser."""

from __future__ import annotations

from fractions import Fraction

import pytest

from apportion.answers import (
    canonical_number,
    extract_answer,
    match_options,
    normalize_text,
    parse_number,
    vote_key,
)

# ---------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # chain-of-thought with an explicit marker
        (
            "Natalia sold 48/2 = 24 clips in May. Altogether she sold 48 + 24 = 72 clips. "
            "The answer is 72.",
            "72",
        ),
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.5"),
        ("Answer: 72", "72"),
        ("Answer:\n72", "72"),
        ("**Answer:** 42", "42"),
        ("Final answer: -3", "-3"),
        ("So the answer is 5 + 3 = 8.", "8"),
        ("The answer is 3.14. I checked it 2 times.", "3.14"),
        ("The answer is 18 dollars, since 3 boxes cost 6 each.", "18"),
        ("The answer is 20, since 4 x 5 = 20 and 2 + 2 = 4.", "20"),
        ("The answer is 4 * 5 = 20 because each box holds 5", "20"),
        # boxed (LaTeX) answers, including nested braces
        ("\\boxed{3/4}", "0.75"),
        ("Thus x = \\boxed{\\frac{3}{4}}.", "0.75"),
        ("\\boxed{\\dfrac{1}{2}} and then 7", "0.5"),
        ("First \\boxed{5}, corrected: \\boxed{6}", "6"),
        ("The answer is \\frac{3}{4}.", "0.75"),
        # boxed beats a later stray number; #### beats an earlier marker
        ("\\boxed{12}\nChecked in 2 steps.", "12"),
        ("The answer is 5.\n#### 6", "6"),
        # "= X" at the end of the last line beats later numbers on that line
        ("Total = 72 (from 3 boxes)", "72"),
        # otherwise the last number
        ("She has 5 apples and buys 7 more, so 12 apples", "12"),
        ("72 clips", "72"),
        ("x = -3", "-3"),
        ("5 - 3 = 2", "2"),
        ("It measures 1.5e3 meters", "1500"),
        ("About 50% of them", "50"),
        ("I have 3/4.", "0.75"),
        ("It costs $-5", "-5"),
        ("\u22127 degrees", "-7"),
        ("The answer is -0.", "0"),
        (".5 liters", "0.5"),
        ("she has 1, 2, 3 apples", "3"),
        ("The value was 1,000,000 exactly", "1000000"),
    ],
)
def test_extract_number(text: str, expected: str) -> None:
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize("text", ["", "   ", "no numbers here", "The answer is unknown."])
def test_extract_number_none(text: str) -> None:
    assert extract_answer(text, "number") is None


def test_minus_between_numbers_is_not_a_sign() -> None:
    # "10-3" is ten minus three: the last number is 3, not -3
    assert extract_answer("We compute 10-3", "number") == "3"
    assert extract_answer("We compute 10 - 3", "number") == "3"


def test_date_is_not_read_as_a_fraction() -> None:
    assert extract_answer("12/25/1937", "number") != str(25 / 1937)


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("1,234.50", "1234.5"),
        ("72.0", "72"),
        ("3/4", "0.75"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("$1,234.50", "1234.5"),
        ("72 clips", "72"),
        ("-3", "-3"),
        ("1.5e3", "1500"),
        ("50%", "50"),
        ("0.10", "0.1"),
        ("2939885984", "2939885984"),
        ("12345678901234567890", "12345678901234567890"),
        ("1/3", "0.333333333333333"),
        ("3.33333", "3.33333"),
        ("007", "7"),
    ],
)
def test_canonical_number(s: str, expected: str) -> None:
    assert canonical_number(s) == expected


@pytest.mark.parametrize("s", ["", "abc", "no number", "-", "$", "1/0"])
def test_canonical_number_none(s: str) -> None:
    assert canonical_number(s) is None


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("$1,234.50", 1234.5),
        ("3/4", 0.75),
        ("50%", 50.0),
        ("-3", -3.0),
        ("72 clips", 72.0),
        ("1,234", 1234.0),
        ("1.5e3", 1500.0),
        ("first 4 then 5", 4.0),
        ("\u2212 2", 2.0),  # a detached minus is not a sign
    ],
)
def test_parse_number(s: str, expected: float) -> None:
    assert parse_number(s) == pytest.approx(expected)


def test_parse_number_none() -> None:
    assert parse_number("nothing") is None


def test_numbers_beyond_float_range_are_exact() -> None:
    # float() of these overflowed (OverflowError) or read "10**400" as 10
    assert parse_number("9" * 400) == int("9" * 400)
    assert parse_number("1e400") == 10**400
    assert parse_number("10**400") == 10**400
    assert parse_number("-1e-400") == -Fraction(1, 10**400)
    assert parse_number("9" * 400) != parse_number("9" * 399 + "8")  # floats would agree
    assert canonical_number("1e400") == "1" + "0" * 400
    assert canonical_number("2e400/3") == "6.66666666666667e+399"
    assert canonical_number("1e-400/3") == "3.33333333333333e-401"
    assert extract_answer("The answer is 10**400.", "number") == "1" + "0" * 400
    assert vote_key("1e400", "number") == vote_key("10^400", "number")


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("2^10", Fraction(1024)),
        ("2 ** 10", Fraction(1024)),
        ("10^{-3}", Fraction(1, 1000)),
        ("2^-1", Fraction(1, 2)),
        ("6.02 × 10^23", Fraction(602, 100) * 10**23),
        ("3 \\times 10^{8} m/s", Fraction(3 * 10**8)),
        ("1.5 x 10^3", Fraction(1500)),
        ("-2^2", Fraction(-4)),  # the power binds tighter than the sign
        ("0^0", Fraction(1)),
        ("x^2", Fraction(2)),  # no number before the power: only the exponent is a number
        ("10^2.5", Fraction(10)),  # a fractional power is not read as one
    ],
)
def test_powers(s: str, expected: Fraction) -> None:
    assert parse_number(s) == expected


def test_numbers_too_large_to_hold_are_skipped_without_computing_them() -> None:
    # Fraction("1e999999999") alone computes a billion-digit integer (minutes, gigabytes).
    for huge in ("1e999999999", "10**99999999", "9" * 5000, "1.0001^99999", "0^-1"):
        assert parse_number(huge) is None, huge
        assert canonical_number(huge) is None
    assert parse_number("1e999999999 or 7") == 7
    assert parse_number("1" + "0" * 5000 + " items, " + "0" * 5000 + "1") == 1
    assert parse_number("2^" + "9" * 50) is None


# ---------------------------------------------------------------------------
# choices
# ---------------------------------------------------------------------------

CSQA = ("bank", "library", "department store", "mall", "new york")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", "B"),
        ("Answer: (C)", "C"),
        ("Answer: C", "C"),
        ("Answer: c", "C"),
        ("The answer is c because", None),  # a lower-case letter inside prose is not an answer
        ("the answer is (c)", "C"),
        ("B)", "B"),
        ("b", "B"),
        ("(d)", "D"),
        ("E.", "E"),
        ("Let's think. A bank is secure. Options (A) and (C) fit, but (A) is best.", "A"),
        ("So the answer is library.", "B"),
        ("The answer is: department store", "C"),
        ("I think it's a bank.", "A"),
        ("People buy magazines at a mall, not a bank.", "A"),
        ("\\boxed{D}", "D"),
        ("The answer is option E", "E"),
        ("B. library", "B"),
        ("The answer is F", None),  # out of range for five options
        ("The answer is A dog", None),  # "A" is an article here
        ("nothing useful", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_answer(text, "choice", CSQA) == expected


def test_extract_choice_longest_option_wins_a_tie() -> None:
    choices = ("cat", "black cat", "dog")
    assert extract_answer("It was a black cat.", "choice", choices) == "B"


def test_extract_choice_without_choices_accepts_any_letter() -> None:
    assert extract_answer("The answer is F", "choice") == "F"
    assert extract_answer("(Q)", "choice") == "Q"
    assert extract_answer("The answer is library", "choice") is None


def test_extract_choice_option_text_keeps_signs_and_decimals() -> None:
    # SQuAD normalisation would turn "-1" into "1" and "15.6" into "156"
    assert extract_answer("The answer is -1.", "choice", ("0", "1", "-1", "12")) == "C"
    assert extract_answer("-1", "choice", ("0", "1", "-1", "12")) == "C"
    assert extract_answer("15.6", "choice", ("156", "15.6", "1.56")) == "B"
    assert extract_answer("The answer is **", "choice", ("**", "//", "is")) == "A"
    # case decides between options that differ only in case
    assert extract_answer("The answer is Bb Bb.", "choice", ("BB BB", "BB Bb", "Bb Bb")) == "C"


def test_extract_choice_one_line_reply_leading_with_its_letter() -> None:
    choices = ("occur only in eukaryotes", "are excised before a poly(A) tail is added")
    assert extract_answer("B) are excised before a poly(A) tail is added", "choice", choices) == "B"
    assert extract_answer("B) ~A", "choice", ("A", "~A", "B", "~B")) == "B"


def test_extract_choice_full_option_text_beats_leading_article_letter() -> None:
    choices = ("A DNA sequence that moves", "A DNA sequence that replicates via RNA")
    assert (
        extract_answer("The answer is A DNA sequence that replicates via RNA.", "choice", choices)
        == "B"
    )


def test_match_options() -> None:
    assert match_options("library", CSQA) == ("B",)
    assert match_options("  The Library. ", CSQA) == ("B",)  # SQuAD-normalised fallback
    assert match_options("The Library", CSQA, loose=False) == ()
    assert match_options("mortal", ("mortal", "dying", "mortal")) == ("A", "C")
    assert match_options("-1", ("1", "-1")) == ("B",)
    assert match_options("", CSQA) == ()


def test_extract_choice_marker_beats_earlier_parens() -> None:
    text = "(A) is tempting and (B) is close.\nTherefore, the answer is (C)."
    assert extract_answer(text, "choice", ("x", "y", "z")) == "C"


# ---------------------------------------------------------------------------
# booleans
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the answer is no", "no"),
        ("So the answer is: Yes.", "yes"),
        ("Yes.", "yes"),
        ("no", "no"),
        ("True", "yes"),
        ("False", "no"),
        ("So the answer is: False.", "no"),
        ("No. Hydrogen has atomic number one.", "no"),
        ("Yes, because frost is common in December.", "yes"),
        ("There is no frost in May. Therefore, yes.", "yes"),
        ("No one knows for sure, but probably yes", "yes"),
        ("Yes at first sight. But the answer is no.", "no"),
        ("\\boxed{No}", "no"),
        ("nothing to see", None),
    ],
)
def test_extract_boolean(text: str, expected: str | None) -> None:
    assert extract_answer(text, "boolean") == expected


# ---------------------------------------------------------------------------
# text and untyped
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is Denver Broncos.", "Denver Broncos"),
        ("Answer: Paris", "Paris"),
        ("**Answer:** Paris", "Paris"),
        ('The answer is "gold".', "gold"),
        ("Paris. It is the capital of France.", "Paris"),
        ("\n\nParis\nmore text", "Paris"),
        ("Answer: St. Louis, Missouri.", "St. Louis, Missouri"),
        ("The answer is U.S. Army. Then more.", "U.S. Army"),
        ("J. K. Rowling wrote it.", "J. K. Rowling wrote it"),
        ("The final answer is \\boxed{x^2}", "x^2"),
        ("\\boxed{x^2}", "x^2"),
        ("The answer is 1,000.", "1,000"),
    ],
)
def test_extract_text(text: str, expected: str) -> None:
    assert extract_answer(text, "text") == expected


def test_extract_untyped() -> None:
    assert extract_answer("The answer is 1,000.") == "1000"
    assert extract_answer("72") == "72"
    assert extract_answer(" 72.0 ") == "72"
    assert extract_answer("72 clips") == "72 clips"
    assert extract_answer("The answer is Denver Broncos.") == "Denver Broncos"
    assert extract_answer("") is None
    assert extract_answer("   \n ") is None


# ---------------------------------------------------------------------------
# vote keys
# ---------------------------------------------------------------------------


def test_vote_key_numbers_collide() -> None:
    keys = {vote_key(a, "number") for a in ("1,000", "1000.0", "$1000", "1000 dollars")}
    assert keys == {"1000"}
    assert vote_key("0.75", "number") == vote_key("3/4", "number")
    assert vote_key("abc", "number") is None


def test_vote_key_text_choice_boolean() -> None:
    assert vote_key("The Denver Broncos!", "text") == "denver broncos"
    assert vote_key("denver  broncos", "text") == "denver broncos"
    assert vote_key("(b)", "choice") == "B"
    assert vote_key("B", "choice") == "B"
    assert vote_key("True", "boolean") == "yes"
    assert vote_key("no", "boolean") == "no"
    assert vote_key("maybe", "boolean") is None
    assert vote_key(None, "text") is None


def test_vote_key_untyped_and_punctuation_only() -> None:
    assert vote_key("72.0") == "72"
    assert vote_key("Paris.") == "paris"
    assert vote_key("] )", "text") == "] )"
    assert vote_key("] )", "text") != vote_key(") ]", "text")


def test_normalize_text_squad() -> None:
    assert normalize_text("The  Denver Broncos!") == "denver broncos"
    assert normalize_text("an apple, a pear") == "apple pear"
    assert normalize_text("Levi's Stadium") == "levis stadium"
    assert normalize_text("theatre") == "theatre"  # only whole-word articles go
