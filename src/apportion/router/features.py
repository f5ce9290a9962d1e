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
    n_numbers: int  # digits, counted one by one
    n_words: int
    # Every class's probability, for `ask --explain`.
    intent_probabilities: tuple[tuple[Intent, float], ...] = ()


# How much the newest message counts against the turns before it, when routing a conversation.
LAST_TURN_WEIGHT = 0.6


def intent_probabilities(
    text: str, *, has_math_expression: bool, earlier: Sequence[str] = ()
) -> dict[Intent, float]:
    """The trained classifier's class probabilities (see router/intent.py) for `text`; in a
    conversation, blended with those of the `earlier` user turns. A vague follow-up ("How many
    did she sell altogether?") takes the intent of the problem it follows; a clear new question
    ("Who wrote Hamlet?") keeps its own."""
    from apportion.router.intent import default_classifier

    model = default_classifier()
    own = model.probabilities(text, has_math_expression=has_math_expression)
    if not earlier:
        return own
    before = model.probabilities("\n".join(earlier), has_math_expression=False)
    return {c: LAST_TURN_WEIGHT * own[c] + (1 - LAST_TURN_WEIGHT) * before[c] for c in own}


def _top(shares: dict[Intent, float]) -> Intent:
    return max(shares, key=lambda c: shares[c])


def classify_intent(text: str, *, has_math_expression: bool) -> Intent:
    return _top(intent_probabilities(text, has_math_expression=has_math_expression))


def classify_conversation(
    earlier: Sequence[str], last: str, *, has_math_expression: bool
) -> Intent:
    return _top(
        intent_probabilities(last, has_math_expression=has_math_expression, earlier=earlier)
    )


def extract_features(text: str) -> Features:
    from apportion.tools.solver import extract_math

    has_math = extract_math(text) is not None
    shares = intent_probabilities(text, has_math_expression=has_math)
    return Features(
        intent=_top(shares),
        intent_probabilities=tuple(shares.items()),
        has_math_expression=has_math,
        n_numbers=len(_NUMBER.findall(text)),
        n_words=len(text.split()),
    )
