"""Evaluate propositional formulas over True/False exactly, with Z3; no eval, no model call.

`extract_boolean` recognises a question that is a bare formula ("not ( True ) and False is",
"Evaluate: True or not False"): the words `True`, `False`, `not`, `and`, `or`, `xor` (or `!`,
`~`, `&`, `&&`, `|`, `||`, `^`) and parentheses, with Python's precedence (not > and > xor >
or). A recursive-descent parser turns it into a Z3 term, which Z3 simplifies to a constant.
Anything else is declined, so the caller can fall back to another strategy.
"""

from __future__ import annotations

import re
import time

import z3

from apportion.tools.results import SolverResult

__all__ = ["NO_LOGIC", "evaluate_boolean", "extract_boolean"]

# Deeper nesting than this is declined rather than parsed (the parser recurses per level).
MAX_DEPTH = 100
MAX_TOKENS = 1000
# Longer text is declined before any pattern runs: 1000 tokens of "False" and spaces, with a
# lead-in, fit well inside it. Every step below is linear in the text anyway; the cap bounds
# the constant.
MAX_CHARS = 10_000
NO_LOGIC = "no_logic"  # the error for text that is no formula

_LEAD = re.compile(
    r"^\s*(?:(?:evaluate|compute|simplify|what\s+is|what's|is)\b\s*(?:the\s+)?"
    r"(?:(?:boolean|logical)\s+)?(?:expression|formula)?\s*:?\s*)?",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"\s*(&&|\|\||[()!~&|^]|[A-Za-z]+)")
_WORDS = {
    "true": "true", "false": "false", "not": "not", "and": "and", "or": "or", "xor": "xor",
    "!": "not", "~": "not", "&": "and", "&&": "and", "|": "or", "||": "or", "^": "xor",
    "(": "(", ")": ")",
}  # fmt: skip
_OPERATORS = frozenset({"not", "and", "or", "xor"})


def _trail_start(text: str) -> int:
    """Where the closing run of spaces, "is", "=", "?" and "." starts ("... False is ?").

    A scan from the end, so linear; a regex anchored only at `$` ("(?:...)*$") retries from
    every position and takes quadratic time on a long run of "?" before other text."""
    end = len(text)
    while end > 0:
        if text[end - 1].isspace() or text[end - 1] in "=?.":
            end -= 1
        elif (
            end >= 2
            and text[end - 2 : end].lower() == "is"
            and (end == 2 or not _is_word_char(text[end - 3]))
        ):
            end -= 2
        else:
            break
    return end


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _tokens(text: str) -> list[str] | None:
    if len(text) > MAX_CHARS:
        return None
    lead = _LEAD.match(text)
    body = text[lead.end() if lead else 0 : _trail_start(text)]
    out: list[str] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            return None if body[pos:].strip() else out
        word = _WORDS.get(m.group(1).lower())
        if word is None or len(out) >= MAX_TOKENS:
            return None
        out.append(word)
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected or 'a term'} at token {self.pos}")
        self.pos += 1
        return token

    def binary(self, op: str, lower: str, depth: int) -> z3.BoolRef:
        parse = getattr(self, lower)
        terms = [parse(depth)]
        while self.peek() == op:
            self.take()
            terms.append(parse(depth))
        if len(terms) == 1:
            return terms[0]
        if op == "xor":
            term = terms[0]
            for other in terms[1:]:
                term = z3.Xor(term, other)
            return term
        return z3.Or(*terms) if op == "or" else z3.And(*terms)

    def expr(self, depth: int) -> z3.BoolRef:
        if depth > MAX_DEPTH:
            raise ValueError("nested too deeply")
        return self.binary("or", "xor_term", depth)

    def xor_term(self, depth: int) -> z3.BoolRef:
        return self.binary("xor", "and_term", depth)

    def and_term(self, depth: int) -> z3.BoolRef:
        return self.binary("and", "unary", depth)

    def unary(self, depth: int) -> z3.BoolRef:
        nots = 0
        while self.peek() == "not":
            self.take()
            nots += 1
        token = self.take()
        if token == "(":
            term = self.expr(depth + 1)
            self.take(")")
        elif token in ("true", "false"):
            term = z3.BoolVal(token == "true")
        else:
            raise ValueError(f"unexpected {token!r}")
        for _ in range(nots):
            term = z3.Not(term)
        return term


def extract_boolean(text: str) -> str | None:
    """The formula in `text`, normalised ("not ( True ) and False"), or None if there is none.

    A lone constant ("True?") is not a formula: there would be nothing to evaluate."""
    tokens = _tokens(text)
    if not tokens or len(tokens) > MAX_TOKENS or not any(t in _OPERATORS for t in tokens):
        return None
    return " ".join(t.capitalize() if t in ("true", "false") else t for t in tokens)


def evaluate_boolean(text: str) -> SolverResult:
    """Evaluate the formula in `text` with Z3; never raises for bad input."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()

    def result(answer: str | None, expression: str | None, error: str | None) -> SolverResult:
        return SolverResult(
            answer is not None, answer, expression, error,
            time.perf_counter() - wall0, time.thread_time() - cpu0,
        )  # fmt: skip

    expression = extract_boolean(text)
    if expression is None:
        return result(None, None, NO_LOGIC)
    parser = _Parser(expression.lower().split())
    try:
        term = parser.expr(0)
        if parser.peek() is not None:
            raise ValueError(f"unexpected {parser.peek()!r} at token {parser.pos}")
    except ValueError as e:
        return result(None, expression, f"parse_error: {e}")
    value = z3.simplify(term)
    if z3.is_true(value):
        return result("True", expression, None)
    if z3.is_false(value):
        return result("False", expression, None)
    return result(None, expression, "unsupported: did not reduce to a constant")
