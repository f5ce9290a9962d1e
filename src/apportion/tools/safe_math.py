"""Safe parser for arithmetic and algebra: text in, SymPy objects out, with no eval anywhere.

Text is tokenized and parsed by hand (recursive descent) into a small syntax tree, which is then
built into SymPy objects directly. Nothing here calls eval, exec, sympify or parse_expr, so the
only names the input can reach are the whitelisted functions and constants below.

Limits keep one parse cheap: input length, nesting depth, the size of any number a power,
factorial or binomial would produce, and exponents on symbolic bases. They do not bound the
time SymPy may need later (solving, simplifying); `apportion.tools.solver.solve` runs that work
in a child process with a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import sympy

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_FACTORIAL",
    "MAX_LENGTH",
    "MAX_RESULT_BITS",
    "MAX_SYMBOLIC_EXPONENT",
    "BinOp",
    "Call",
    "Const",
    "Equation",
    "Group",
    "MathDomainError",
    "MathParseError",
    "Node",
    "Num",
    "Part",
    "Postfix",
    "Unary",
    "Var",
    "build",
    "parse_equation",
    "parse_expression",
    "parse_syntax",
    "parse_system",
    "render",
]

MAX_LENGTH = 500
MAX_DEPTH = 40
# ~301,000 decimal digits: big enough for 2^100000 or 1000!, small enough that Python ints
# (no gmpy2 here) still multiply such numbers in milliseconds.
MAX_RESULT_BITS = 1_000_000
MAX_SYMBOLIC_EXPONENT = 1000
MAX_FACTORIAL = 1000
MAX_SCI_EXPONENT = 1000
# Unknown names up to this many letters are read as products of one-letter variables ("xy").
MAX_SPLIT_NAME = 3


class MathParseError(ValueError):
    """The text is not math this parser accepts: bad syntax, unknown name, or over a limit."""


class MathDomainError(ValueError):
    """The math is well formed but undefined, such as a division by zero."""


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


# --------------------------------------------------------------------------- building


def _bits(value: sympy.Rational) -> int:
    return max(int(value.p).bit_length(), int(value.q).bit_length())


def _check_size(value: sympy.Expr) -> sympy.Expr:
    if isinstance(value, sympy.Rational) and _bits(value) > MAX_RESULT_BITS:
        raise MathParseError("number too large")
    return value


def _magnitude(value: sympy.Expr) -> float:
    """|value| as a float (inf when it does not fit); value must be a number."""
    try:
        return float(abs(sympy.N(value, 15)))
    except (OverflowError, TypeError, ValueError):
        return math.inf


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    # Bound the size of the result *before* SymPy computes it: 9^9^9 must never be evaluated.
    if exponent.is_number:
        if base.is_zero and exponent.is_extended_negative:
            raise MathDomainError("division by zero")
        size = _magnitude(exponent)
        if not base.is_number:
            if size > MAX_SYMBOLIC_EXPONENT:
                raise MathParseError(f"exponent larger than {MAX_SYMBOLIC_EXPONENT}")
        elif not (base.is_zero or base in (sympy.S.One, sympy.S.NegativeOne)):
            if isinstance(base, sympy.Rational):
                log2_base = float(_bits(base))
            else:
                mag = _magnitude(base)
                log2_base = abs(math.log2(mag)) + 1 if 0 < mag < math.inf else math.inf
            if size * log2_base > MAX_RESULT_BITS:
                raise MathParseError("power too large")
    return _check_size(sympy.Pow(base, exponent))


def _integer_arg(value: sympy.Expr, limit: float, what: str) -> None:
    if value.is_number and _magnitude(value) > limit:
        raise MathParseError(f"{what} argument larger than {limit:g}")


def _factorial(arg: sympy.Expr) -> sympy.Expr:
    _integer_arg(arg, MAX_FACTORIAL, "factorial")
    if arg.is_integer and arg.is_negative:
        raise MathDomainError("factorial of a negative integer")
    return sympy.factorial(arg)


def _binomial(n: sympy.Expr, k: sympy.Expr) -> sympy.Expr:
    if n.is_number and k.is_number:
        size_n, size_k = _magnitude(n), _magnitude(k)
        small = min(size_k, abs(size_n - size_k))
        if small * max(1.0, math.log2(max(size_n, 1.0))) > MAX_RESULT_BITS:
            raise MathParseError("binomial too large")
    return _check_size(sympy.binomial(n, k))


def _divide(left: sympy.Expr, right: sympy.Expr) -> sympy.Expr:
    if right.is_zero:
        raise MathDomainError("division by zero")
    return _check_size(left / right)


def _mod(left: sympy.Expr, right: sympy.Expr) -> sympy.Expr:
    if right.is_zero:
        raise MathDomainError("modulo by zero")
    return sympy.Mod(left, right)


def _fold(func: Callable[[sympy.Expr, sympy.Expr], sympy.Expr]) -> Callable[..., sympy.Expr]:
    def apply(*args: sympy.Expr) -> sympy.Expr:
        result = args[0]
        for arg in args[1:]:
            result = _check_size(func(result, arg))
        return result

    return apply


def _log(arg: sympy.Expr, base: sympy.Expr | None = None) -> sympy.Expr:
    if base is None:
        return sympy.log(arg)
    if base.is_zero or base == 1:
        raise MathDomainError("logarithm base must not be 0 or 1")
    return sympy.log(arg, base)


def _cbrt(arg: sympy.Expr) -> sympy.Expr:
    # Real cube root for real input (cbrt(-8) = -2), principal root otherwise.
    return sympy.real_root(arg, 3) if arg.is_extended_real else sympy.cbrt(arg)


_BUILDERS: dict[str, Callable[..., sympy.Expr]] = {
    "sqrt": sympy.sqrt,
    "cbrt": _cbrt,
    "abs": sympy.Abs,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "log": _log,
    "ln": sympy.log,
    "log10": lambda a: _log(a, sympy.Integer(10)),
    "log2": lambda a: _log(a, sympy.Integer(2)),
    "exp": sympy.exp,
    "floor": sympy.floor,
    "ceil": sympy.ceiling,
    "factorial": _factorial,
    "gcd": _fold(sympy.gcd),
    "lcm": _fold(sympy.lcm),
    "binomial": _binomial,
    "min": sympy.Min,
    "max": sympy.Max,
}


def _build_node(node: Node) -> sympy.Expr:
    if isinstance(node, Num):
        return sympy.Rational(node.value.numerator, node.value.denominator)
    if isinstance(node, Var):
        return sympy.Symbol(node.name)
    if isinstance(node, Const):
        return sympy.pi if node.name == "pi" else sympy.E
    if isinstance(node, Group):
        return _build_node(node.inner)
    if isinstance(node, Unary):
        arg = _build_node(node.arg)
        return -arg if node.op == "-" else arg
    if isinstance(node, BinOp):
        left, right = _build_node(node.left), _build_node(node.right)
        if node.op == "+":
            return _check_size(left + right)
        if node.op == "-":
            return _check_size(left - right)
        if node.op == "*":
            return _check_size(left * right)
        if node.op == "/":
            return _divide(left, right)
        if node.op == "^":
            return _power(left, right)
        return _mod(left, right)
    if isinstance(node, Call):
        args = [_build_node(a) for a in node.args]
        return _check_size(_BUILDERS[node.func](*args))
    arg = _build_node(node.arg)
    if node.op == "!":
        return _factorial(arg)
    return _check_size(arg / 100)


def build(part: Part) -> sympy.Expr | sympy.Equality:
    """Build SymPy objects from a syntax tree; equations become unevaluated `Eq`."""
    if isinstance(part, Equation):
        return sympy.Eq(_build_node(part.lhs), _build_node(part.rhs), evaluate=False)
    return _build_node(part)


# --------------------------------------------------------------------------- public API


def parse_system(text: str, *, variables: Iterable[str] = ()) -> list[sympy.Expr | sympy.Equality]:
    """Parse one or more expressions/equations separated by ',', ';' or 'and'."""
    return [build(p) for p in parse_syntax(text, variables=variables)]


def _single(parts: Sequence[Part]) -> Part:
    if len(parts) != 1:
        raise MathParseError(f"expected one expression, got {len(parts)}")
    return parts[0]


def parse_expression(text: str, *, variables: Iterable[str] = ()) -> sympy.Expr:
    """Parse one expression ("17*23+5", "2^10", "3x+2", "sqrt(16)", "15% of 80")."""
    part = _single(parse_syntax(text, variables=variables))
    if isinstance(part, Equation):
        raise MathParseError("expected an expression, got an equation")
    return _build_node(part)


def parse_equation(text: str, *, variables: Iterable[str] = ()) -> sympy.Equality | sympy.Expr:
    """Parse one equation ("2x + 3 = 11") into an unevaluated Eq, or an expression if no '='."""
    return build(_single(parse_syntax(text, variables=variables)))
