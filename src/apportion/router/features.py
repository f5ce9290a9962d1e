"""Query features the policy plans on: the intent (a trained classifier, router/intent.py),
whether the solver sees a math expression, and the sizes that the difficulty estimate reads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Intent = Literal["arithmetic", "math_word", "factual", "logic", "code", "chat"]
INTENTS: tuple[Intent, ...] = ("arithmetic", "math_word", "factual", "logic", "code", "chat")

_NUMBER = re.compile(r"\d")


@dataclass(frozen=True)
class Features:
    intent: Intent
    has_math_expression: bool
    n_numbers: int
    n_words: int


def classify_intent(text: str, *, has_math_expression: bool) -> Intent:
    """The trained classifier's label (see router/intent.py)."""
    from apportion.router.intent import default_classifier

    return default_classifier().predict(text, has_math_expression=has_math_expression)


# How much the newest message counts against the turns before it, when routing a conversation.
LAST_TURN_WEIGHT = 0.6


def classify_conversation(
    earlier: Sequence[str], last: str, *, has_math_expression: bool
) -> Intent:
    """The intent of `last` read in its conversation: its own class probabilities blended with
    those of the earlier user turns. A vague follow-up ("How many did she sell altogether?")
    takes the intent of the problem it follows; a clear new question ("Who wrote Hamlet?")
    keeps its own."""
    from apportion.router.intent import default_classifier

    model = default_classifier()
    own = model.probabilities(last, has_math_expression=has_math_expression)
    if not earlier:
        return max(own, key=lambda c: own[c])
    before = model.probabilities("\n".join(earlier), has_math_expression=False)
    blended = {c: LAST_TURN_WEIGHT * own[c] + (1 - LAST_TURN_WEIGHT) * before[c] for c in own}
    return max(blended, key=lambda c: blended[c])


def extract_features(text: str) -> Features:
    from apportion.tools.solver import extract_math

    has_math = extract_math(text) is not None
    return Features(
        intent=classify_intent(text, has_math_expression=has_math),
        has_math_expression=has_math,
        n_numbers=len(_NUMBER.findall(text)),
        n_words=len(text.split()),
    )
