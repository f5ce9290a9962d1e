"""Instructions shared by strategies, kept together so wording changes are reviewed in one place."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from apportion.types import Query

FINAL_LINE = "The answer is"


def answer_format(query: Query) -> str:
    """How the final answer should be written, from what we know of its kind."""
    if query.kind == "choice":
        return "the letter of the correct option"
    if query.kind == "boolean":
        return "yes or no"
    if query.kind == "number":
        return "a number, without units"
    return "a short answer"


OPTION_LETTERS = string.ascii_uppercase


def lists_options(question: str, choices: Sequence[str]) -> bool:
    """Whether `question` already shows every option under its letter: "A. x", "(A) x",
    "A) x" or "A: x", as the named multiple-choice loaders write them."""
    for letter, option in zip(OPTION_LETTERS, choices, strict=False):
        marker = rf"(?:\({letter}\)|\b{letter}[.):])\s*{re.escape(option.strip())}"
        if not re.search(marker, question):
            return False
    return bool(choices)


def with_options(question: str, choices: Sequence[str]) -> str:
    """`question` followed by its options, one a line as "A. option", unless it lists them
    already. A model asked for "the letter of the correct option" must be shown the options."""
    if not choices or lists_options(question, choices):
        return question
    letters = zip(OPTION_LETTERS, choices, strict=False)
    lines = [f"{letter}. {option.strip()}" for letter, option in letters]
    return question.rstrip() + "\n" + "\n".join(lines)
