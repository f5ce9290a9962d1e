"""Instructions shared by strategies, kept together so wording changes are reviewed in one place."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from apportion.types import Message, Query

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


def instructed(instructions: str, query: Query, *, question_first: bool = False) -> list[Message]:
    """The messages of a one-call strategy: its instructions, the conversation so far and the
    question.

    By default the instructions are the system message, ahead of everything. `question_first`
    moves them after the question, into the last user message, with no system message of the
    strategy's own. Every such prompt for one question then starts with the same tokens (the
    chat template, the conversation, the question), so a later step of a plan on the same
    model computes only its own instructions and reuses the KV cache of the step before
    for the rest (the ledger's cached_tokens)."""
    if not question_first:
        return [Message("system", instructions), *query.history, Message("user", query.text)]
    return [*query.history, Message("user", f"{query.text}\n\n{instructions}")]


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
