"""Instructions shared by strategies, kept together so wording changes are reviewed in one place."""

from __future__ import annotations

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
