from __future__ import annotations

import itertools

import pytest

from apportion.tools.logic import MAX_DEPTH, MAX_TOKENS, evaluate_boolean, extract_boolean


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("not ( True ) and ( True ) is", "False"),
        ("True or not False and True and False is", "True"),  # and binds tighter than or
        ("False or not not not False and True is", "True"),
        ("not True or ( False and True ) is", "False"),
        ("Evaluate: True xor True", "False"),
        ("What is not false || (true && !true)?", "True"),
        ("True and False = ", "False"),
    ],
)
def test_formulas_evaluate_with_python_precedence(text: str, answer: str) -> None:
    result = evaluate_boolean(text)
    assert result.ok and result.answer == answer and result.error is None
    assert result.wall_s >= 0 and result.cpu_s >= 0


def test_agrees_with_a_truth_table_of_every_small_formula() -> None:
    # every formula "[not] A op1 [not] B op2 [not] C": precedence and negation checked exhaustively
    names = {True: "True", False: "False"}
    ops = {"and": lambda a, b: a and b, "or": lambda a, b: a or b}
    for a, b, c, na, nb, nc in itertools.product([True, False], repeat=6):
        for op1, op2 in itertools.product(ops, repeat=2):
            x, y, z = (v != neg for v, neg in ((a, na), (b, nb), (c, nc)))
            if op1 == "and" or op2 == "or":  # left to right is right for these
                expected = ops[op2](ops[op1](x, y), z)
            else:  # "x or y and z": and first
                expected = ops[op1](x, ops[op2](y, z))
            text = " ".join(
                [*(["not"] if na else []), names[a], op1, *(["not"] if nb else []), names[b],
                 op2, *(["not"] if nc else []), names[c]]
            )  # fmt: skip
            assert evaluate_boolean(text).answer == names[expected], text


@pytest.mark.parametrize(
    "text",
    ["What is 2+3?", "True?", "Is the sky blue and the grass green?", "", "x and y", "True"],
)
def test_anything_but_a_formula_is_declined(text: str) -> None:
    assert extract_boolean(text) is None
    result = evaluate_boolean(text)
    assert not result.ok and result.error == "no_logic"


@pytest.mark.parametrize(
    "text",
    ["True and and False", "( True or False", "True ) and False", "not", "True False and"],
)
def test_malformed_formulas_are_parse_errors(text: str) -> None:
    result = evaluate_boolean(text)
    assert not result.ok and result.answer is None
    assert result.error is not None and result.error.startswith("parse_error")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = "(" * (MAX_DEPTH + 5) + "True and False" + ")" * (MAX_DEPTH + 5)
    result = evaluate_boolean(deep)
    assert not result.ok and "deeply" in (result.error or "")
    shallow = "(" * 50 + "True and False" + ")" * 50
    assert evaluate_boolean(shallow).answer == "False"


@pytest.mark.parametrize(
    ("text", "formula"),
    [
        ("True and False is ? . =", "True and False"),
        ("not True or False is", "not True or False"),
        ("not True or False?is", "not True or False"),
        ("Evaluate: not True or False.", "not True or False"),
    ],
)
def test_closing_words_and_marks_are_dropped(text: str, formula: str) -> None:
    assert extract_boolean(text) == formula


def test_this_is_not_a_closing_is() -> None:
    # "is" closes a formula only as a word of its own
    assert extract_boolean("True and Falseis") is None


def test_long_text_is_declined_before_any_pattern_runs() -> None:
    # A run of "?" before other text took minutes in the old closing pattern (quadratic).
    assert extract_boolean("?" * 50_000 + "x") is None
    assert evaluate_boolean("?" * 50_000 + "x").error == "no_logic"
    long_formula = " and ".join(["True"] * (MAX_TOKENS // 2))  # just under the token cap
    assert extract_boolean(long_formula) is not None
    assert extract_boolean(" and ".join(["True"] * (MAX_TOKENS + 1))) is None
