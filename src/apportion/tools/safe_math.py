"""Safe parser for arithmetic and algebra: text in, SymPy objects out, with no eval anywhere.

Text is tokenized and parsed by hand (recursive descent) into a small syntax tree
(`apportion.tools.math_syntax`), which is then built into SymPy objects directly. Nothing calls
eval, exec, sympify or parse_expr, so the only names the input can reach are the whitelisted
functions and constants of the parser.

Limits keep one parse cheap: input length, nesting depth, the size of any number a power,
factorial or binomial would produce, and exponents on symbolic bases. They do not bound the
time SymPy may need later (solving, simplifying); `apportion.tools.solver.solve` runs that work
in a child process with a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import sympy

from apportion.tools.math_syntax import (
    CONSTANTS,
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    BinOp,
    Call,
    Const,
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
    render,
)

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


class MathDomainError(ValueError):
    """The math is well formed but undefined, such as a division by zero."""


# ~301,000 decimal digits: big enough for 2^100000 or 1000!, small enough that Python ints
# (no gmpy2 here) still multiply such numbers in milliseconds.
MAX_RESULT_BITS = 1_000_000
MAX_SYMBOLIC_EXPONENT = 1000
MAX_FACTORIAL = 1000


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
