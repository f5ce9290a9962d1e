"""Query features the policy plans on. This first version is keyword rules; a trained intent
classifier replaces `classify_intent` later, behind the same signature."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Intent = Literal["arithmetic", "math_word", "factual", "logic", "code", "chat"]
INTENTS: tuple[Intent, ...] = ("arithmetic", "math_word", "factual", "logic", "code", "chat")

_CODE = re.compile(
    r"```|\bdef\b|\bpython\b|\bjavascript\b|\bfunction\b|\bcode\b|\bscript\b|\bregex\b|"
    r"\bcompile\b|\bbug\b|\bSQL\b|\bimplement\b",
    re.IGNORECASE,
)
_LOGIC = re.compile(
    r"\btrue or false\b|\bnot \(|\bwhich of the following\b|\bdeduce\b|\bpuzzle\b|"
    r"\bif and only if\b|\blogically\b|\bvalid argument\b|\bsudoku\b",
    re.IGNORECASE,
)
_MATH_WORD = re.compile(
    r"\bhow (?:many|much|long|far|old)\b|\btotal\b|\beach\b|\bper\b|\bleft\b|\bremain|"
    r"\baltogether\b|\bcost|\bprice|\$|\bpercent|\baverage\b|\btimes as\b|\bhalf\b",
    re.IGNORECASE,
)
_FACTUAL = re.compile(
    r"^\s*(?:who|what|when|where|which|whose|name)\b|\bcapital of\b|\bwho (?:wrote|invented)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d")


@dataclass(frozen=True)
class Features:
    intent: Intent
    has_math_expression: bool
    n_numbers: int
    n_words: int


def classify_intent(text: str, *, has_math_expression: bool) -> Intent:
    if has_math_expression:
        return "arithmetic"
    if _CODE.search(text):
        return "code"
    numbers = len(re.findall(r"\d+(?:\.\d+)?", text))
    if numbers >= 1 and _MATH_WORD.search(text):
        return "math_word"
    if _LOGIC.search(text):
        return "logic"
    if _FACTUAL.search(text):
        return "factual"
    if numbers >= 2:
        return "math_word"
    return "chat"


def extract_features(text: str) -> Features:
    from apportion.tools.solver import extract_math

    has_math = extract_math(text) is not None
    return Features(
        intent=classify_intent(text, has_math_expression=has_math),
        has_math_expression=has_math,
        n_numbers=len(_NUMBER.findall(text)),
        n_words=len(text.split()),
    )
