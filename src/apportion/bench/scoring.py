"""Score a predicted answer against gold: numbers with tolerance, SQuAD EM/F1 for text,
letters for multiple choice, yes/no for booleans; plus kind inference and Wilson intervals.

Reading answers (numbers, letters, booleans) is `apportion.answers`' job; this module only
compares what it reads."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from apportion.answers import (
    canonical_number,
    gold_letters,
    is_bare_number,
    normalize_text,
    parse_number,
    predicted_letters,
    read_boolean,
)
from apportion.errors import UsageError
from apportion.types import AnswerKind

__all__ = [
    "Score",
    "infer_kind",
    "normalize_text",
    "score",
    "token_f1",
    "wilson_interval",
]

ABS_TOL = 1e-6


@dataclass(frozen=True)
class Score:
    correct: bool
    f1: float
    exact: bool


_WRONG = Score(correct=False, f1=0.0, exact=False)


def _f1_tokens(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        # SQuAD v2 convention: two empty answers agree, one empty answer scores 0.
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token-overlap F1 between the normalised prediction and gold."""
    return _f1_tokens(normalize_text(pred).split(), normalize_text(gold).split())


def _raw(s: str) -> str:
    return " ".join(s.lower().split())


def _text_pair(pred: str, gold: str) -> tuple[bool, float]:
    """(exact, f1) for one gold string. Gold that normalises to nothing (e.g. "] ) >", a Dyck
    closing sequence) is compared on lower-cased, whitespace-collapsed raw text instead."""
    if normalize_text(gold):
        return normalize_text(pred) == normalize_text(gold), token_f1(pred, gold)
    p, g = _raw(pred), _raw(gold)
    return p == g, _f1_tokens(p.split(), g.split())


# Below this magnitude both numbers fit a float, and are compared as floats (as always);
# beyond it, exactly, with the same tolerances as Fractions.
_FLOAT_SAFE = Fraction(10) ** 300


def _close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    if abs(a) < _FLOAT_SAFE and abs(b) < _FLOAT_SAFE:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=ABS_TOL)
    return abs(a - b) <= max(Fraction(rel_tol) * max(abs(a), abs(b)), Fraction(ABS_TOL))


def score(
    predicted: str | None,
    gold: str,
    *,
    kind: AnswerKind,
    aliases: Sequence[str] = (),
    choices: Sequence[str] = (),
    rel_tol: float = 1e-4,
) -> Score:
    """Compare an extracted answer with gold.

    number:  equal within abs 1e-6 or `rel_tol` relative; exact means the same value.
    text:    SQuAD exact match against gold or any alias; f1 is the best token F1; correct = exact.
    choice:  the letter (or option text) must name the gold option (gold may be letter or text).
    boolean: yes/true and no/false are equivalent.
    """
    if predicted is None or not predicted.strip():
        return _WRONG
    if kind == "number":
        gold_value = parse_number(gold)
        if gold_value is None:  # gold that is not a number: fall back to text comparison
            return score(predicted, gold, kind="text", aliases=aliases)
        golds = [gold_value] + [a for a in (parse_number(x) for x in aliases) if a is not None]
        p = parse_number(predicted)
        if p is None:
            return _WRONG
        correct = any(_close(p, x, rel_tol) for x in golds)
        canon = canonical_number(predicted)
        exact = canon is not None and any(canon == canonical_number(x) for x in (gold, *aliases))
        return Score(correct=correct, f1=float(correct), exact=exact)
    if kind == "choice":
        golds_as_letters = gold_letters(gold, choices)
        if not golds_as_letters:
            return score(predicted, gold, kind="text", aliases=aliases)
        ok = any(p in golds_as_letters for p in predicted_letters(predicted, choices))
        return Score(correct=ok, f1=float(ok), exact=ok)
    if kind == "boolean":
        gold_bool = read_boolean(gold)
        if gold_bool is None:
            return score(predicted, gold, kind="text", aliases=aliases)
        ok = read_boolean(predicted) == gold_bool
        return Score(correct=ok, f1=float(ok), exact=ok)
    if kind == "text":
        exact, f1 = False, 0.0
        for target in (gold, *aliases):
            e, f = _text_pair(predicted, target)
            exact = exact or e
            f1 = max(f1, f)
        return Score(correct=exact, f1=f1, exact=exact)
    raise UsageError(f"unknown answer kind {kind!r}", "use number, text, choice or boolean")


_BBH_LETTER_RE = re.compile(r"\(([A-Z])\)")


def infer_kind(answer: str, choices: Sequence[str] = ()) -> AnswerKind:
    """Guess the kind of a gold answer (for generic JSONL lines without `kind`).

    With `choices`, a letter in range or an option's text is "choice"; "(B)" alone is "choice";
    yes/no/true/false is "boolean"; a lone number ("1,234", "$5", "3/4", "-2.5") is "number";
    anything else is "text".
    """
    a = answer.strip()
    if choices and gold_letters(a, choices):
        return "choice"
    if _BBH_LETTER_RE.fullmatch(a):
        return "choice"
    if a.lower() in ("yes", "no", "true", "false"):
        return "boolean"
    if is_bare_number(a):
        return "number"
    return "text"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (z=1.96: 95%). (0, 1) when n == 0."""
    if n < 0 or k < 0 or k > n:
        raise UsageError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
