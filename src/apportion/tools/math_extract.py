"""Finding the math in a question: the expression or equation(s) it asks about, if any.

Regular expressions strip the wording around the math ("What is ...?", "Solve for x: ...",
"the sum of 3 and 4"), and the safe parser's syntax check (`apportion.tools.math_syntax`)
accepts what remains only when it is a standalone expression, not prose. No SymPy and no eval:
routing asks this of every question (`has_math_expression`), and `apportion.tools.solver`
answers what it finds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from apportion.tools.math_syntax import (
    CONSTANTS,
    FUNCTIONS,
    BinOp,
    Call,
    Equation,
    Group,
    MathParseError,
    Node,
    Num,
    Part,
    Postfix,
    Unary,
    Var,
    parse_syntax,
)

__all__ = ["MAX_QUESTION_CHARS", "MathQuery", "extract_math", "find_math"]

MAX_QUESTION_CHARS = 2000


@dataclass(frozen=True)
class MathQuery:
    text: str
    target: str | None  # the variable to solve for, from "... for x"
    mode: str  # "auto" | "solve" | "expand" | "factor" | "simplify"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_VERB = (
    r"(?P<verb>calculate|compute|evaluate|solve|simplify|expand|factori[sz]e|factor|work\s+out"
    r"|determine|find|give|figure\s+out)\b\s*:?\s*"
)
# The unknown asked for, after a verb ("find x", "what is the value of x", "x =" once "?" is gone).
_ASK = (
    r"(?:then\s+)?(?:solve\s+for|solve|find|determine|calculate|compute|give|what\s+is|what's"
    r"|what\s+does)\s+(?:for\s+|the\s+value\s+of\s+)?(?P<target>[a-z]\d*)(?:\s+equal)?"
)
_PREFIXES = [
    _rx(r"^(?:q|question|problem)\s*\d*\s*[:.)]\s*"),
    # a condition around the equation: "If 6x + 72 = 174, what is x?"
    _rx(r"^(?:if|given(?:\s+that)?|suppose(?:\s+that)?|assuming(?:\s+that)?|let|when)\s+"),
    _rx(r"^(?:what|which)\s+value\s+of\s+(?P<target>[a-z]\d*)\s+(?:satisfies|solves|makes)\s+"),
    _rx(r"^for\s+what\s+value\s+of\s+(?P<target>[a-z]\d*)\s+(?:is|does)\s+"),
    _rx(r"^(?:please|kindly|now)\s*,?\s+"),
    _rx(r"^(?:can|could|would|will)\s+you\s+(?:please\s+)?"),
    _rx(r"^(?:tell\s+me|show\s+me|i\s+(?:want|need)\s+to\s+know|help\s+me(?:\s+to)?)\s+"),
    _rx(r"^(?:what|how\s+much)\s+(?:is|are|was|does|do)\s+"),
    _rx(r"^what'?s\s+"),
    _rx("^" + _VERB),
    _rx(r"^(?:the\s+)?(?P<roots>roots?|zeros?|zeroes)\s+(?:of|to)\s+"),
    _rx(r"^(?:the\s+)?(?:value|result|answer|solution|output)s?\s+(?:of|to|for)\s*:?\s*"),
    _rx(r"^(?:the\s+)?following\s*[:.]?\s*"),
    _rx(r"^(?:the\s+)?(?:expression|equations?|system)\s*:?\s*"),
    _rx(r"^for\s+(?P<target>[a-z]\d*)\s*[:,]?\s+(?:(?:in|if|when|where|given)\s+)?"),
    _rx(r"^(?P<target>[a-z]\d*)\s*:\s*"),  # "Find x: 4x - 2 = 10"
    _rx(r"^(?P<target>[a-z]\d*)\s*,?\s+(?:if|when|where|given(?:\s+that)?|such\s+that|in)\s+"),
]
_SUFFIXES = [
    _rx(r"\s*[?.]+$"),
    _rx(r"(?<![\d)!])\s*!+$"),  # "100!" stays a factorial; "!" after a word is punctuation
    _rx(r"\s*=\s*$"),
    _rx(r"[.,;]?\s*" + _ASK + "$"),
    _rx(r",?\s+(?:for|in\s+terms\s+of)\s+(?P<target>[a-z]\d*)$"),
    _rx(r"(?:[,;]|\s+then)\s*(?P<target>[a-z]\d*)$"),  # "..., x = ?" once "= ?" is gone
    _rx(r"\s+(?:equal\s+to|equals?|is\s+equal\s+to|is)$"),
    _rx(r",?\s+(?:please|exactly|precisely|for\s+me)$"),
    _rx(r",?\s+(?:in\s+)?(?:simplest|exact)\s+form$"),
]
# Whole-phrase forms, matched on the stripped text before word operators are replaced.
_PHRASES = [
    (_rx(r"^(?:the\s+)?(?:greatest|highest|largest)\s+common\s+(?:divisor|factor)\s+of\s+"
         r"(?P<a>.+?)\s+and\s+(?P<b>.+)$"), "gcd({a}, {b})"),
    (_rx(r"^(?:the\s+)?(?:least|lowest|smallest)\s+common\s+multiple\s+of\s+"
         r"(?P<a>.+?)\s+and\s+(?P<b>.+)$"), "lcm({a}, {b})"),
    (_rx(r"^(?:the\s+)?remainder\s+(?:when|of)\s+(?P<a>.+?)\s+(?:is\s+)?divided\s+by\s+"
         r"(?P<b>.+)$"), "({a}) mod ({b})"),
    (_rx(r"^(?:the\s+)?sum\s+of\s+(?P<a>.+?)\s+and\s+(?P<b>.+)$"), "({a}) + ({b})"),
    (_rx(r"^(?:the\s+)?product\s+of\s+(?P<a>.+?)\s+and\s+(?P<b>.+)$"), "({a})*({b})"),
    (_rx(r"^(?:the\s+)?difference\s+between\s+(?P<a>.+?)\s+and\s+(?P<b>.+)$"), "({a}) - ({b})"),
]  # fmt: skip
_WORD_OPS = [
    (_rx(r"\bmultiplied\s+by\b"), "*"),
    (_rx(r"\btimes\b"), "*"),
    (_rx(r"\bdivided\s+by\b"), "/"),
    (_rx(r"\bover\b"), "/"),
    (_rx(r"\bplus\b"), "+"),
    (_rx(r"\bminus\b"), "-"),
    (_rx(r"\bsquared\b"), "^2"),
    (_rx(r"\bcubed\b"), "^3"),
    (_rx(r"\b(?:raised\s+)?to\s+the\s+power\s+of\b|\braised\s+to\b"), "^"),
    (_rx(r"\b(?:the\s+)?square\s+root\s+of\b"), " sqrt "),
    (_rx(r"\b(?:the\s+)?cube\s+root\s+of\b"), " cbrt "),
    (_rx(r"\bis\s+equal\s+to\b|\bequals\b"), "="),
]
_TIMES_X = re.compile(r"(?<=\d)\s+[xX]\s+(?=\d)")  # "3 x 4" means 3*4 when there is no equation
_MATH_CHARS = re.compile(r"^[\d\s.,+\-*/^()\[\]{}=%!|]+$")
_EXPLICIT_OP = re.compile(r"[-+*/^=!%|×÷−·√²³]|\bmod\b", re.IGNORECASE)
_ALLOWED_WORDS = set(FUNCTIONS) | set(CONSTANTS) | {"mod", "modulo", "and", "of", "percent"}


# Suffixes are searched for in this many closing characters only: every suffix phrase is
# shorter, and a search over the whole text, repeated once per stripped suffix, made a question
# of "? ? ? ..." cost quadratic time (0.8 s at MAX_QUESTION_CHARS).
_SUFFIX_WINDOW = 80


def _strip(text: str, verbs: list[str], targets: list[str]) -> str:
    changed = True
    while changed and text:
        changed = False
        for pattern in _PREFIXES:
            m = pattern.match(text)
            if m and m.end() > 0:
                groups = m.groupdict()
                if groups.get("verb"):
                    verbs.append(groups["verb"].lower())
                if groups.get("roots"):
                    verbs.append("solve")
                if groups.get("target"):
                    targets.append(groups["target"])
                text = text[m.end() :].strip()
                changed = True
        for pattern in _SUFFIXES:
            m = pattern.search(text, max(0, len(text) - _SUFFIX_WINDOW))
            if m and m.end() > m.start():
                if m.groupdict().get("target"):
                    targets.append(m.group("target"))
                text = text[: m.start()].strip()
                changed = True
    return text


def _walk(part: Part) -> Iterator[Part]:
    yield part
    if isinstance(part, Equation):
        yield from _walk(part.lhs)
        yield from _walk(part.rhs)
    elif isinstance(part, BinOp):
        yield from _walk(part.left)
        yield from _walk(part.right)
    elif isinstance(part, Call):
        for arg in part.args:
            yield from _walk(arg)
    elif isinstance(part, Group):
        yield from _walk(part.inner)
    elif isinstance(part, Unary | Postfix):
        yield from _walk(part.arg)


def _atomic(node: Node) -> bool:
    while isinstance(node, Group | Unary):
        node = node.inner if isinstance(node, Group) else node.arg
    return isinstance(node, Num | Var)


def _accept(candidate: str, target: str | None, *, allow_number: bool = False) -> bool:
    """Whether `candidate` is a standalone expression/equation (not prose, not a lone number)."""
    if not candidate:
        return False
    try:
        parts = parse_syntax(candidate, variables=(target,) if target else ())
    except MathParseError:
        # Pure symbols and digits that do not parse ("2 +* 3", "9**9**9**9"): still math, so
        # `solve` reports the parse error instead of "no_math".
        return bool(
            _MATH_CHARS.match(candidate)
            and re.search(r"\d", candidate)
            and _EXPLICIT_OP.search(candidate)
        )
    if len(parts) > 1 and not all(isinstance(p, Equation) for p in parts):
        return False
    if len(parts) == 1 and not isinstance(parts[0], Equation) and _atomic(parts[0]):
        return allow_number and isinstance(parts[0], Num)  # "Factor 360"
    has_call = any(isinstance(n, Call) for p in parts for n in _walk(p))
    if not (_EXPLICIT_OP.search(candidate) or has_call):
        return False  # "a pi", "the sum": letters side by side are prose, not algebra
    # Words of two or more letters are prose unless they are known names or follow a
    # coefficient ("3xy").
    for m in re.finditer(r"[^\W\d_]{2,}", candidate):
        if m.group().lower() in _ALLOWED_WORDS:
            continue
        if m.start() > 0 and (
            candidate[m.start() - 1].isdigit() or candidate[m.start() - 1] == ")"
        ):
            continue
        return False
    return True


def _candidates(question: str) -> list[str]:
    text = " ".join(question.split())
    out = [text]
    # "What is 2+2? Answer with a number.": the first question, without the instructions.
    head, sep, tail = text.partition("? ")
    if sep and tail:
        out.append(head + "?")
    return out


def find_math(question: str) -> MathQuery | None:
    if not isinstance(question, str) or len(question) > MAX_QUESTION_CHARS:
        return None
    for text in _candidates(question):
        verbs: list[str] = []
        targets: list[str] = []
        stripped = _strip(text, verbs, targets)
        candidate = stripped
        for pattern, template in _PHRASES:
            m = pattern.match(stripped)
            if m:
                candidate = template.format(a=m.group("a"), b=m.group("b"))
                break
        else:
            for pattern, repl in _WORD_OPS:
                candidate = pattern.sub(repl, candidate)
            candidate = " ".join(_strip(candidate, verbs, targets).split())
            if "=" not in candidate:
                candidate = _TIMES_X.sub(" * ", candidate)
        target = targets[-1] if targets else None
        verb = verbs[-1] if verbs else ""
        mode = "auto"
        if verb == "solve":
            mode = "solve"
        elif verb in ("expand", "simplify"):
            mode = verb
        elif verb.startswith("factor"):
            mode = "factor"
        if _accept(candidate, target, allow_number=mode == "factor"):
            return MathQuery(candidate, target, mode)
    return None


def extract_math(question: str) -> str | None:
    """The expression or equation(s) a question asks about, or None (prose, word problems)."""
    found = find_math(question)
    return None if found is None else found.text
