"""score / normalize_text / token_f1 / infer_kind / wilson_interval."""

from __future__ import annotations

import pytest

from apportion.bench.scoring import (
    Score,
    infer_kind,
    normalize_text,
    score,
    token_f1,
    wilson_interval,
)
from apportion.errors import UsageError
from apportion.types import AnswerKind

RIGHT = Score(correct=True, f1=1.0, exact=True)
WRONG = Score(correct=False, f1=0.0, exact=False)

# ---------------------------------------------------------------------------
# number
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("72", "72"),
        ("72.0", "72"),
        ("72", "72 clips"),
        ("1234", "1,234"),
        ("$1,234.00", "1234"),
        ("-3", "-3"),
        ("0.75", "3/4"),
        ("3/4", "0.75"),
        ("50%", "50"),
        ("1500", "1.5e3"),
    ],
)
def test_number_exact(pred: str, gold: str) -> None:
    assert score(pred, gold, kind="number") == RIGHT


def test_number_tolerance_edges() -> None:
    # relative tolerance 1e-4: 10000 vs 10000.5 is 5e-5 off -> correct, but not exact
    s = score("10000.5", "10000", kind="number")
    assert s.correct and not s.exact and s.f1 == 1.0
    # 10002 is 2e-4 off -> wrong
    assert score("10002", "10000", kind="number") == WRONG
    # rounded gold (MAWPS "3.33333") matches 10/3
    assert score("3.3333333", "3.33333", kind="number").correct
    # the absolute tolerance only rescues values near zero
    assert score("0.0000005", "0", kind="number").correct
    assert not score("0.00001", "0", kind="number").correct
    # a looser rel_tol widens the window
    assert score("10002", "10000", kind="number", rel_tol=1e-3).correct
    # a tight rel_tol still accepts the exact value
    assert score("123456789", "123456789", kind="number", rel_tol=0.0) == RIGHT


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("71", "72"), ("-72", "72"), ("7.2", "72"), ("seventy-two", "72"), ("", "72")],
)
def test_number_wrong(pred: str, gold: str) -> None:
    assert score(pred, gold, kind="number") == WRONG


def test_number_aliases_and_none() -> None:
    assert score("0.5", "50", kind="number", aliases=("0.5",)).correct
    assert score(None, "72", kind="number") == WRONG


def test_number_gold_that_is_not_a_number_falls_back_to_text() -> None:
    assert score("infinity", "Infinity", kind="number").correct
    assert not score("7", "Infinity", kind="number").correct


def test_numbers_beyond_float_range_compare_exactly() -> None:
    # parse_number raised OverflowError on these, which ended a bench run
    nines = "9" * 400
    assert score(nines, nines, kind="number") == RIGHT
    assert score("1e400", "10**400", kind="number").correct
    assert score("1" + "0" * 400, "1e400", kind="number") == RIGHT
    # the relative tolerance still applies: 1e-4 of 1e400 is 1e396
    assert score("1.00005e400", "1e400", kind="number").correct
    assert not score("1.0002e400", "1e400", kind="number").correct
    assert not score("2e400", "1e400", kind="number").correct
    assert not score("-1e400", "1e400", kind="number").correct
    assert score("1e-400", "0", kind="number").correct  # within the absolute tolerance
    assert score("1e999999999", "1e999999999", kind="number") == RIGHT  # too big: compared as text


# ---------------------------------------------------------------------------
# text (SQuAD)
# ---------------------------------------------------------------------------


def test_normalize_text_squad_examples() -> None:
    assert normalize_text("The Denver Broncos") == "denver broncos"
    assert normalize_text("Levi's Stadium") == "levis stadium"
    assert normalize_text('"golden anniversary"') == "golden anniversary"
    assert normalize_text("  A  cat,  an owl and THE dog. ") == "cat owl and dog"
    assert normalize_text("Thebes") == "thebes"
    assert normalize_text("") == ""


def test_token_f1_squad_examples() -> None:
    assert token_f1("Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("the Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    # gold has 11 tokens once "the" goes; all 3 predicted tokens are in it: P=1, R=3/11
    gold = "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"
    assert token_f1("Santa Clara, California", gold) == pytest.approx(3 / 7)
    assert token_f1("Carolina Panthers", "Denver Broncos") == 0.0
    # repeated tokens count once per occurrence
    assert token_f1("x b b", "b b c") == pytest.approx(2 / 3)
    assert token_f1("b b b", "b c") == pytest.approx(0.4)  # one shared b: P=1/3, R=1/2
    assert token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article and goes
    assert token_f1("", "Denver") == 0.0
    assert token_f1("", "") == 1.0


def test_text_exact_and_aliases() -> None:
    assert score("the Denver Broncos.", "Denver Broncos", kind="text") == RIGHT
    s = score(
        "Santa Clara",
        "Levi's Stadium",
        kind="text",
        aliases=("Levi's Stadium in the San Francisco Bay Area", "Santa Clara, California"),
    )
    assert s.exact is False and s.correct is False
    assert s.f1 == pytest.approx(0.8)  # best alias: 2 of 3 tokens, P=1
    assert (
        score(
            "Santa Clara, California",
            "Levi's Stadium",
            kind="text",
            aliases=("Santa Clara, California",),
        )
        == RIGHT
    )


def test_text_partial_is_not_correct() -> None:
    s = score("Broncos", "Denver Broncos", kind="text")
    assert not s.correct and not s.exact
    assert s.f1 == pytest.approx(2 / 3)


def test_text_punctuation_only_gold() -> None:
    # Dyck-language targets normalise to nothing; they must still be told apart.
    assert score("] )", "] )", kind="text") == RIGHT
    assert score("])", "] )", kind="text").correct is False
    assert score(") ]", "] )", kind="text").correct is False
    assert score("anything", "] )", kind="text").correct is False


# ---------------------------------------------------------------------------
# choice
# ---------------------------------------------------------------------------

OPTS = ("bank", "library", "department store", "mall", "new york")


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("B", "B", True),
        ("b", "B", True),
        ("(B)", "B", True),
        ("B.", "B", True),
        ("library", "B", True),
        ("Library", "(B)", True),
        ("B", "library", True),  # gold given as option text
        ("library", "library", True),
        ("The answer is (B).", "B", True),
        ("A", "B", False),
        ("bank", "B", False),
        ("F", "B", False),  # out of range for five options
        ("", "B", False),
    ],
)
def test_choice(pred: str, gold: str, ok: bool) -> None:
    s = score(pred, gold, kind="choice", choices=OPTS)
    assert s.correct is ok and s.exact is ok and s.f1 == float(ok)


def test_choice_gold_that_names_no_option_falls_back_to_text() -> None:
    # BBH has a few targets that are option text with garbled options ("Monsters, Inc")
    options = ("Monsters", "Inc", "Children of the Night")
    assert score("Monsters, Inc", "Monsters, Inc", kind="choice", choices=options).correct
    assert not score("A", "Monsters, Inc", kind="choice", choices=options).correct


def test_choice_option_text_subtleties() -> None:
    # "-1" must not match option "1"; a repeated option text matches either copy of it
    assert score("-1", "C", kind="choice", choices=("0", "1", "-1", "12")).correct
    assert not score("-1", "B", kind="choice", choices=("0", "1", "-1", "12")).correct
    dup = ("indestructible", "durable", "undestroyable", "indestructible", "unbreakable")
    assert score("indestructible", "D", kind="choice", choices=dup).correct
    assert score("indestructible", "A", kind="choice", choices=dup).correct
    # a longer reply is read with extract_answer
    assert score("B) ~A", "B", kind="choice", choices=("A", "~A", "B", "~B")).correct


def test_choice_without_choices_compares_letters() -> None:
    assert score("(C)", "C", kind="choice").correct
    assert not score("D", "(C)", kind="choice").correct
    assert score(None, "C", kind="choice") == WRONG


# ---------------------------------------------------------------------------
# boolean
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("yes", "yes", True),
        ("Yes", "True", True),
        ("true", "Yes", True),
        ("No.", "False", True),
        ("false", "no", True),
        ("The answer is no.", "No", True),
        ("yes", "no", False),
        ("True", "False", False),
        ("maybe", "yes", False),
        ("", "no", False),
    ],
)
def test_boolean(pred: str, gold: str, ok: bool) -> None:
    assert score(pred, gold, kind="boolean") == (RIGHT if ok else WRONG)


def test_boolean_gold_with_explanation() -> None:
    gold = "Yes. College commencement ceremonies often happen in December."
    assert score("yes", gold, kind="boolean").correct
    assert not score("no", gold, kind="boolean").correct


def test_none_prediction_is_wrong_for_every_kind() -> None:
    kinds: tuple[AnswerKind, ...] = ("number", "text", "choice", "boolean")
    for kind in kinds:
        assert score(None, "yes", kind=kind) == WRONG
        assert score("  ", "yes", kind=kind) == WRONG


def test_unknown_kind_raises() -> None:
    with pytest.raises(UsageError):
        score("x", "x", kind="essay")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# infer_kind
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "choices", "kind"),
    [
        ("72", (), "number"),
        ("1,234", (), "number"),
        ("-2.5", (), "number"),
        ("$5", (), "number"),
        ("3/4", (), "number"),
        ("50%", (), "number"),
        ("Yes", (), "boolean"),
        ("false", (), "boolean"),
        ("(A)", (), "choice"),
        ("B", ("x", "y"), "choice"),
        ("y", ("x", "y"), "choice"),
        ("C", ("x", "y"), "text"),  # out of range, not an option
        ("B", (), "text"),
        ("Denver Broncos", (), "text"),
        ("72 clips", (), "text"),
        ("12/25/1937", (), "text"),
        ("] )", (), "text"),
    ],
)
def test_infer_kind(answer: str, choices: tuple[str, ...], kind: str) -> None:
    assert infer_kind(answer, choices) == kind


# ---------------------------------------------------------------------------
# wilson_interval
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # symmetric and boundary cases
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4)
    assert got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_properties() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi
    # a wider z gives a wider interval
    lo99, hi99 = wilson_interval(50, 100, z=2.576)
    assert lo99 < lo and hi99 > hi
    with pytest.raises(UsageError):
        wilson_interval(5, 3)
    with pytest.raises(UsageError):
        wilson_interval(-1, 3)
