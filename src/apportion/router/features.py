"""Query features the policy plans on: the intent (a trained classifier, router/intent.py),
whether the solver sees a math expression, and the sizes that the difficulty estimate reads.

Routing a question imports neither SymPy nor torch: the math is found without SymPy
(tools/math_extract.py), and the classifier is NumPy alone, loaded on the first question."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from apportion.tools.math_extract import extract_math
from apportion.types import Intent

_NUMBER = re.compile(r"\d")


@dataclass(frozen=True)
class Features:
    intent: Intent
    has_math_expression: bool
    n_numbers: int  # digits, counted one by one
    n_words: int
    # Every class's probability, for `ask --explain`.
    intent_probabilities: tuple[tuple[Intent, float], ...] = ()
    # The text the features were read from (what a per-query predictor reads again).
    text: str = ""


# How much the newest message counts against the turns before it, when routing a conversation.
LAST_TURN_WEIGHT = 0.6


def intent_probabilities(text: str, *, has_math_expression: bool) -> dict[Intent, float]:
    """The trained classifier's class probabilities for `text` (see router/intent.py)."""
    from apportion.router.intent import default_classifier

    return default_classifier().probabilities(text, has_math_expression=has_math_expression)


def with_earlier_turns(own: dict[Intent, float], earlier: Sequence[str]) -> dict[Intent, float]:
    """A message's class probabilities blended with those of the user turns before it, so a
    vague follow-up ("How many did she sell altogether?") takes the intent of the problem it
    follows, while a clear new question ("Who wrote Hamlet?") keeps its own."""
    if not earlier:
        return own
    before = intent_probabilities("\n".join(earlier), has_math_expression=False)
    return {c: LAST_TURN_WEIGHT * own[c] + (1 - LAST_TURN_WEIGHT) * before[c] for c in own}


def top_intent(shares: dict[Intent, float]) -> Intent:
    return max(shares, key=lambda c: shares[c])


def extract_features(text: str) -> Features:
    has_math = extract_math(text) is not None
    shares = intent_probabilities(text, has_math_expression=has_math)
    return Features(
        intent=top_intent(shares),
        intent_probabilities=tuple(shares.items()),
        has_math_expression=has_math,
        n_numbers=len(_NUMBER.findall(text)),
        n_words=len(text.split()),
        text=text,
    )
