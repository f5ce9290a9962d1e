"""The safe math parser's first half: text in, syntax tree out, and back to canonical text.

Text is tokenized and parsed by hand (recursive descent) into a small syntax tree. Nothing here
calls eval, exec, sympify or parse_expr, and nothing imports SymPy: finding the math in a
question (`apportion.tools.math_extract`, which routing asks) costs no SymPy import.
`apportion.tools.safe_math` builds SymPy objects from these trees.

Limits keep one parse cheap: input length, nesting depth, and the size of a number written in
scientific notation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "BinOp",
    "Call",
    "Const",
    "Equation",
    "Group",
    "MathParseError",
    "Node",
    "Num",
    "Part",
    "Postfix",
    "Unary",
    "Var",
    "parse_syntax",
    "render",
]

MAX_LENGTH = 500
MAX_DEPTH = 40
MAX_SCI_EXPONENT = 1000
# Unknown names up to this many letters are read as products of one-letter variables ("xy").
MAX_SPLIT_NAME = 3


class MathParseError(ValueError):
    """The text is not math this parser accepts: bad syntax, unknown name, or over a limit."""


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class Num:
    """A numeric literal; `text` is the literal without thousands separators."""

    text: str
    value: Fraction


@dataclass(frozen=True, slots=True)
class Var:
    """A variable such as `x` or `x1`."""

    name: str


@dataclass(frozen=True, slots=True)
class Const:
    """`pi` or `e`."""

    name: str


@dataclass(frozen=True, slots=True)
class Unary:
    """Unary `-` or `+`."""

    op: str
    arg: Node


@dataclass(frozen=True, slots=True)
class BinOp:
    """`+ - * / ^` or `mod`."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    """A call to one of FUNCTIONS (canonical name)."""

    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """A parenthesised (or bracketed) sub-expression, kept so rendering follows the input."""

    inner: Node


@dataclass(frozen=True, slots=True)
class Postfix:
    """`!` (factorial) or `%` (percent)."""

    op: str
    arg: Node


@dataclass(frozen=True, slots=True)
class Equation:
    """`lhs = rhs`."""

    lhs: Node
    rhs: Node


Node = Num | Var | Const | Unary | BinOp | Call | Group | Postfix
Part = Node | Equation

# name -> (canonical name, min args, max args)
FUNCTIONS: dict[str, tuple[str, int, int]] = {
    "sqrt": ("sqrt", 1, 1),
    "cbrt": ("cbrt", 1, 1),
    "abs": ("abs", 1, 1),
    "sin": ("sin", 1, 1),
    "cos": ("cos", 1, 1),
    "tan": ("tan", 1, 1),
    "asin": ("asin", 1, 1),
    "arcsin": ("asin", 1, 1),
    "acos": ("acos", 1, 1),
    "arccos": ("acos", 1, 1),
    "atan": ("atan", 1, 1),
    "arctan": ("atan", 1, 1),
    "log": ("log", 1, 2),
    "ln": ("ln", 1, 1),
    "log10": ("log10", 1, 1),
    "log2": ("log2", 1, 1),
    "exp": ("exp", 1, 1),
    "floor": ("floor", 1, 1),
    "ceil": ("ceil", 1, 1),
    "ceiling": ("ceil", 1, 1),
    "factorial": ("factorial", 1, 1),
    "gcd": ("gcd", 2, 8),
    "lcm": ("lcm", 2, 8),
    "binomial": ("binomial", 2, 2),
    "choose": ("binomial", 2, 2),
    "min": ("min", 1, 8),
    "max": ("max", 1, 8),
}
CONSTANTS = frozenset({"pi", "e"})
_KEYWORDS = {"and": "sep", "of": "of", "mod": "mod", "modulo": "mod", "percent": "%"}

# --------------------------------------------------------------------------- tokenizer

_UNICODE = {
    "×": "*", "✕": "*", "✖": "*", "⋅": "*", "·": "*", "∙": "*", "∗": "*",
    "÷": "/", "∕": "/", "⁄": "/",
    "−": "-", "–": "-", "‐": "-", "‑": "-", "﹣": "-", "－": "-", "＋": "+",
    "（": "(", "）": ")", "＝": "=", "π": " pi ", "√": " sqrt ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}  # fmt: skip
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_OPS = "+-*/^()[]{}=,;!%|"
_OPENERS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num" | "name" | "op" | "sep" | "of" | "mod" | "end"
    text: str
    pos: int


def _normalize(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "⁰¹²³⁴⁵⁶⁷⁸⁹⁻":
            j = i
            while j < len(text) and text[j] in "⁰¹²³⁴⁵⁶⁷⁸⁹⁻":
                j += 1
            out.append("^(" + text[i:j].translate(_SUPERSCRIPT) + ")")
            i = j
            continue
        out.append(_UNICODE.get(ch, ch))
        i += 1
    return "".join(out)


def _scan_digits(s: str, i: int) -> int:
    while i < len(s) and s[i].isascii() and s[i].isdigit():
        i += 1
    return i


def _scan_number(s: str, i: int, allow_thousands: bool) -> int:
    """Return the end of the numeric literal starting at i."""
    start = i
    j = _scan_digits(s, i)
    # "1,234,567": groups of exactly three digits after a 1-3 digit lead, outside calls.
    if allow_thousands and 1 <= j - start <= 3:
        k = j
        while k + 4 <= len(s) and s[k] == "," and _scan_digits(s, k + 1) == k + 4:
            k += 4
        j = k
    if j < len(s) and s[j] == "." and j + 1 < len(s) and s[j + 1].isascii() and s[j + 1].isdigit():
        j = _scan_digits(s, j + 1)
    # Scientific notation only when digits follow the e directly ("2e3"); "2e" is 2*e.
    if j < len(s) and s[j] in "eE":
        k = j + 1
        if k < len(s) and s[k] in "+-":
            k += 1
        end = _scan_digits(s, k)
        if end > k and not (end < len(s) and s[end].isalpha()):
            j = end
    return j


def _tokenize(text: str) -> list[_Token]:
    s = _normalize(text)
    tokens: list[_Token] = []
    # One entry per open bracket: True when it opened a function call, where commas separate
    # arguments and so cannot be thousands separators.
    stack: list[bool] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch.isspace():
            i += 1
        elif (ch.isascii() and ch.isdigit()) or (
            ch == "." and i + 1 < len(s) and s[i + 1].isascii() and s[i + 1].isdigit()
        ):
            end = _scan_number(s, i, allow_thousands=not (stack and stack[-1]))
            tokens.append(_Token("num", s[i:end], i))
            i = end
        elif ch.isalpha():
            j = i
            while j < len(s) and s[j].isalpha():
                j += 1
            word = s[i:j]
            low = word.lower()
            if low == "log" and s.startswith(("10", "2"), j):
                # log10(x), log2(x): only when a bracket follows, else "log2" is log(2).
                digits_end = _scan_digits(s, j)
                rest = s[digits_end:].lstrip()
                if s[j:digits_end] in ("10", "2") and rest.startswith("("):
                    word = low = "log" + s[j:digits_end]
                    j = digits_end
            elif len(word) == 1 and j < len(s) and s[j].isascii() and s[j].isdigit():
                j = _scan_digits(s, j)  # subscripted variable: x1, y2
                word = low = s[i:j]
            if low in _KEYWORDS:
                kind = _KEYWORDS[low]
                tokens.append(_Token("op" if kind == "%" else kind, kind, i))
            else:
                tokens.append(_Token("name", word, i))
            i = j
        elif s.startswith("**", i):
            tokens.append(_Token("op", "^", i))
            i += 2
        elif ch in _OPS:
            if ch in _OPENERS:
                prev = tokens[-1] if tokens else None
                stack.append(
                    prev is not None and prev.kind == "name" and prev.text.lower() in FUNCTIONS
                )
            elif ch in ")]}" and stack:
                stack.pop()
            if ch in ",;" and not stack:
                tokens.append(_Token("sep", ch, i))
            else:
                tokens.append(_Token("op", ch, i))
            i += 1
        else:
            raise MathParseError(f"unexpected character {ch!r} at {i}")
    tokens.append(_Token("end", "", len(s)))
    return tokens


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, tokens: list[_Token], variables: frozenset[str]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.variables = variables

    def peek(self, k: int = 0) -> _Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def is_op(self, tok: _Token, chars: str) -> bool:
        return tok.kind == "op" and tok.text in chars

    def fail(self, tok: _Token, what: str) -> MathParseError:
        shown = tok.text if tok.kind != "end" else "end of input"
        return MathParseError(f"{what}, got {shown!r} at {tok.pos}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MathParseError(f"nested more than {MAX_DEPTH} levels deep")

    def leave(self) -> None:
        self.depth -= 1

    def starts_operand(self, tok: _Token) -> bool:
        return tok.kind in ("num", "name") or self.is_op(tok, "([{|+-")

    def starts_implicit(self, tok: _Token) -> bool:
        # Implicit multiplication: 2x, 3(x+1), (a+b)(a-b), 2 sqrt(3). Never before a number
        # ("2 3" is an error, not 6), a sign, or "[" ("x[0]" reads as a subscript, refused).
        return tok.kind == "name" or self.is_op(tok, "(")

    # system := equation (sep equation)*
    def system(self) -> list[Part]:
        parts = [self.equation()]
        while self.peek().kind == "sep":
            self.advance()
            parts.append(self.equation())
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(tok, "expected an operator")
        return parts

    # equation := expr ("=" expr)?
    def equation(self) -> Part:
        lhs = self.expr()
        if not self.is_op(self.peek(), "="):
            return lhs
        self.advance()
        rhs = self.expr()
        if self.is_op(self.peek(), "="):
            raise self.fail(self.peek(), "chained '=' is not supported")
        return Equation(lhs, rhs)

    # expr := term (("+" | "-") term)*
    def expr(self) -> Node:
        node = self.term()
        while self.is_op(self.peek(), "+-"):
            op = self.advance().text
            node = BinOp(op, node, self.term())
        return node

    # term := unary (("*" | "/" | "mod" | "%" | "of") unary | implicit power)*
    def term(self) -> Node:
        node = self.unary()
        while True:
            tok = self.peek()
            if self.is_op(tok, "*/"):
                self.advance()
                node = BinOp(tok.text, node, self.unary())
            elif tok.kind == "mod" or self.is_op(tok, "%"):
                self.advance()
                node = BinOp("mod", node, self.unary())
            elif tok.kind == "of":
                if not _ends_with_percent(node):
                    raise self.fail(tok, "'of' only follows a percentage")
                self.advance()
                node = BinOp("*", node, self.unary())
            elif self.starts_implicit(tok):
                node = BinOp("*", node, self.power())
            else:
                return node

    # unary := ("-" | "+") unary | power
    def unary(self) -> Node:
        tok = self.peek()
        if self.is_op(tok, "+-"):
            self.advance()
            self.enter()
            node = Unary(tok.text, self.unary())
            self.leave()
            return node
        return self.power()

    # power := postfix ("^" unary)?   -- right associative, and 2^-1 is allowed
    def power(self) -> Node:
        base = self.postfix()
        if not self.is_op(self.peek(), "^"):
            return base
        self.advance()
        self.enter()
        exponent = self.unary()
        self.leave()
        return BinOp("^", base, exponent)

    # postfix := atom ("!" | "%")*
    def postfix(self) -> Node:
        node = self.atom()
        while True:
            tok = self.peek()
            if self.is_op(tok, "!"):
                self.advance()
                node = Postfix("!", node)
            elif self.is_op(tok, "%"):
                after = self.peek(1)
                # "17 % 5" is modulo (left to term()); "15%", "15% of 80", "15% + 1" percent.
                if after.kind in ("num", "name") or self.is_op(after, "([{"):
                    return node
                self.advance()
                node = Postfix("%", node)
            else:
                return node

    def atom(self) -> Node:
        self.enter()
        try:
            return self._atom()
        finally:
            self.leave()

    def _atom(self) -> Node:
        tok = self.advance()
        if tok.kind == "num":
            return _number(tok)
        if tok.kind == "name":
            return self.name(tok)
        if tok.kind == "op" and tok.text in _OPENERS:
            inner = self.expr()
            close = self.advance()
            if not self.is_op(close, _OPENERS[tok.text]):
                raise self.fail(close, f"expected {_OPENERS[tok.text]!r}")
            return Group(inner)
        if self.is_op(tok, "|"):
            inner = self.expr()
            close = self.advance()
            if not self.is_op(close, "|"):
                raise self.fail(close, "expected '|'")
            return Call("abs", (inner,))
        raise self.fail(tok, "expected a number, variable or '('")

    def name(self, tok: _Token) -> Node:
        word = tok.text
        low = word.lower()
        if word in self.variables:
            return Var(word)
        if low in FUNCTIONS:
            return self.call(tok, FUNCTIONS[low])
        if len(word) == 1 or (len(word) > 1 and word[0].isalpha() and word[1:].isdigit()):
            return Const(word) if word in CONSTANTS else Var(word)
        if low in CONSTANTS:
            return Const(low)
        if _splits(word, self.variables):
            # "xy" -> x*y, as in textbook algebra ("3xy + 2x").
            letters: list[Node] = [Var(c) for c in word]
            node = letters[0]
            for letter in letters[1:]:
                node = BinOp("*", node, letter)
            return node
        if low in _UNSUPPORTED_FUNCTIONS:
            raise MathParseError(f"unsupported function {word!r} at {tok.pos}")
        raise MathParseError(f"unknown name {word!r} at {tok.pos}")

    def call(self, tok: _Token, spec: tuple[str, int, int]) -> Node:
        func, lo, hi = spec
        args: list[Node] = []
        if self.is_op(self.peek(), "("):
            self.advance()
            args.append(self.expr())
            while self.is_op(self.peek(), ","):
                self.advance()
                args.append(self.expr())
            close = self.advance()
            if not self.is_op(close, ")"):
                raise self.fail(close, "expected ')'")
        elif self.starts_operand(self.peek()) and not self.is_op(self.peek(), "+-|"):
            args.append(self.power())  # "sqrt 16", "sin x"
        else:
            raise self.fail(self.peek(), f"expected '(' after {tok.text}")
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise MathParseError(f"{tok.text} takes {want} argument(s), got {len(args)}")
        return Call(func, tuple(args))


# Short function names this parser does not evaluate: refused by name, never read as a product
# of letters ("cot(x)" is not c*o*t*x).
_UNSUPPORTED_FUNCTIONS = frozenset(
    {"sec", "csc", "cot", "erf", "sgn", "arg", "det", "lim", "deg", "rad", "tg", "ctg", "lg"}
)


def _splits(word: str, variables: frozenset[str]) -> bool:
    """Whether an unknown name is a product of one-letter variables ("xy", "abc").

    Never when it is a function name, nor when a letter would be a constant: "ex" or "pix"
    could be e*x or a word, so they are refused rather than guessed."""
    return (
        len(word) <= MAX_SPLIT_NAME
        and word.isascii()
        and word.lower() not in _UNSUPPORTED_FUNCTIONS
        and not any(c in CONSTANTS and c not in variables for c in word)
        and "pi" not in word.lower()
    )


def _ends_with_percent(node: Node) -> bool:
    while isinstance(node, BinOp):
        node = node.right
    return isinstance(node, Postfix) and node.op == "%"


def _number(tok: _Token) -> Num:
    text = tok.text.replace(",", "")
    mantissa, _, exponent = text.lower().partition("e")
    if exponent and abs(int(exponent)) > MAX_SCI_EXPONENT:
        raise MathParseError(f"exponent too large in {tok.text!r}")
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise MathParseError(f"bad number {tok.text!r}") from exc
    if mantissa.startswith("."):
        text = "0" + text
    return Num(text, value)


def parse_syntax(text: str, *, variables: Iterable[str] = ()) -> tuple[Part, ...]:
    """Parse into a syntax tree without touching SymPy; raises MathParseError.

    `variables` are names read as variables even where they would be constants ("e").
    Parts are separated by ',', ';' or 'and' at the top level.
    """
    if not isinstance(text, str):
        raise MathParseError("input must be a string")
    if len(text) > MAX_LENGTH:
        raise MathParseError(f"input longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise MathParseError("empty input")
    tokens = _tokenize(text)
    return tuple(_Parser(tokens, frozenset(variables)).system())


# --------------------------------------------------------------------------- rendering


def render(part: Part) -> str:
    """Canonical text of a syntax tree: explicit `*`, `**` for powers, spaces around + - =."""
    if isinstance(part, Equation):
        return f"{render(part.lhs)} = {render(part.rhs)}"
    if isinstance(part, Num):
        return part.text
    if isinstance(part, Var | Const):
        return part.name
    if isinstance(part, Unary):
        return part.op + render(part.arg)
    if isinstance(part, BinOp):
        left, right = render(part.left), render(part.right)
        if part.op in "+-":
            return f"{left} {part.op} {right}"
        if part.op == "mod":
            return f"{left} mod {right}"
        return f"{left}{'**' if part.op == '^' else part.op}{right}"
    if isinstance(part, Call):
        return f"{part.func}({', '.join(render(a) for a in part.args)})"
    if isinstance(part, Group):
        return f"({render(part.inner)})"
    return render(part.arg) + part.op
