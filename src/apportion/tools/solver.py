"""Answer plain arithmetic and algebra questions exactly with SymPy, under a hard time limit.

`extract_math` (apportion.tools.math_extract) finds the math in a question with regular
expressions and the safe parser's syntax check (no SymPy, no eval). `solve` then evaluates it
in a child process that re-parses the text with `apportion.tools.safe_math` and is killed when
`timeout_s` runs out, because SymPy can take unbounded time on inputs that are small and well
formed.

Child processes are forked on Linux when the caller has a single thread: SymPy is already
imported (and warmed up once) in the parent, so a fork costs a few milliseconds where spawning
a fresh interpreter costs the SymPy import again (~0.5 s). Forking a multi-threaded process is
unsafe, so then the "forkserver" method is used, with this module preloaded in the server.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import mpmath
import sympy

from apportion.tools.math_extract import MAX_QUESTION_CHARS, MathQuery, extract_math, find_math
from apportion.tools.results import SolverResult
from apportion.tools.safe_math import (
    MathDomainError,
    MathParseError,
    Part,
    build,
    parse_syntax,
    render,
)

__all__ = ["MAX_QUESTION_CHARS", "SolverResult", "extract_math", "format_number", "solve"]

# Time a spawned/forkserver child may take to start before the timeout clock begins.
STARTUP_TIMEOUT_S = 60.0
# Address space the child may add on top of what it inherits, so a runaway expansion ends in
# MemoryError instead of swapping the host.
CHILD_MEMORY_HEADROOM = 2 << 30
SIGNIFICANT_DIGITS = 10
# Integers with more digits than this are given in scientific notation.
MAX_EXACT_DIGITS = 1000
# Longer answers (a huge expansion) are reported as unsupported rather than returned.
MAX_ANSWER_CHARS = 2000


# --------------------------------------------------------------------------- evaluation


class _NoSolution(Exception):
    pass


class _Unsupported(Exception):
    pass


def _strip_zeros(text: str) -> str:
    mantissa, e, exponent = text.partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    if mantissa in ("-0", ""):
        mantissa = "0"
    return mantissa + (e + exponent if e else "")


def _format_real(value: sympy.Expr) -> str:
    if value.is_Integer:
        n = int(value)
        if n.bit_length() <= MAX_EXACT_DIGITS * 3.3219:
            return str(n)
    return _strip_zeros(mpmath.nstr(mpmath.mpf(value.evalf(30)), SIGNIFICANT_DIGITS))


def format_number(value: sympy.Expr) -> str:
    """A numeric SymPy value as the canonical answer string (see SolverResult)."""
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise MathDomainError("result is undefined or infinite")
    if value.is_Rational:
        return _format_real(value)
    approx = value.evalf(30, chop=True)
    if not approx.is_number or approx.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise MathDomainError("result is undefined or infinite")
    re_part, im_part = approx.as_real_imag()
    if not (re_part.is_Number and im_part.is_Number):
        raise _Unsupported("could not evaluate numerically")
    if im_part == 0:
        return _format_real(re_part)
    im_text = _format_real(abs(im_part))
    im_text = "i" if im_text == "1" else im_text + "i"
    if re_part == 0:
        return ("-" if im_part < 0 else "") + im_text
    return f"{_format_real(re_part)} {'-' if im_part < 0 else '+'} {im_text}"


def _format_value(value: sympy.Expr) -> str:
    return format_number(value) if value.is_number else str(value)


def _sort_key(value: sympy.Expr) -> tuple[int, float, float, str]:
    if value.is_number:
        try:
            z = complex(value.evalf(20))
            return (0, z.real, z.imag, "")
        except (TypeError, ValueError, OverflowError):
            pass
    return (1, 0.0, 0.0, str(value))


def _undefined(expr: sympy.Basic) -> bool:
    return bool(expr.has(sympy.zoo, sympy.nan))


def _solve_equations(
    exprs: list[sympy.Expr], target: str | None, mentioned: set[sympy.Symbol]
) -> str:
    """Solve `expr = 0` for each expr; `mentioned` are the symbols the input named."""
    if any(_undefined(e) for e in exprs):
        raise MathDomainError("equation is undefined")
    symbols: set[sympy.Symbol] = set()
    for e in exprs:
        symbols |= e.free_symbols
    if not symbols and not mentioned:
        truths = [e.equals(0) for e in exprs]
        if any(t is None for t in truths):
            raise _Unsupported("could not decide the equality")
        return "true" if all(truths) else "false"
    if not symbols:  # the variables cancelled: x + 1 = x + 1, x + 1 = x + 2
        if all(e.equals(0) for e in exprs):
            return "infinitely many solutions"
        raise _NoSolution
    ordered = sorted(symbols, key=str)
    if target is not None:
        unknowns = [s for s in ordered if s.name == target]
        if not unknowns:
            raise _Unsupported(f"{target} does not appear in the equation")
    else:
        unknowns = ordered
    # One equation is solved for the target alone ("x + y = 5" -> x = 5 - y); a system for all
    # its unknowns, of which the target's value is given: solved for the target alone, a
    # system such as "3a + 2b = 12, a - b = -1" would have no solution.
    solve_for = unknowns if len(exprs) == 1 else ordered
    try:
        # A single equation goes in bare: as a one-element list SymPy drops CRootOf solutions.
        solutions = sympy.solve(exprs[0] if len(exprs) == 1 else exprs, solve_for, dict=True)
    except NotImplementedError as exc:
        raise _Unsupported("SymPy cannot solve this") from exc
    if not solutions:
        # SymPy also returns [] for identities such as (x+1)^2 = x^2 + 2x + 1.
        if all(sympy.simplify(e) == 0 for e in exprs):
            return "infinitely many solutions"
        raise _NoSolution
    # Prefer real solutions (x^3 = 8 -> x = 2); give complex ones only when there is no other.
    real = [s for s in solutions if not any(v.is_real is False for v in s.values())]
    solutions = real or solutions
    if len(unknowns) == 1:
        var = unknowns[0]
        values = sorted((s[var] for s in solutions if var in s), key=_sort_key)
        if not values:
            return "infinitely many solutions"
        texts = list(dict.fromkeys(_format_value(v) for v in values))
        return f"{var} = {', '.join(texts)}"
    rows = sorted(solutions, key=lambda s: [_sort_key(s[v]) for v in unknowns if v in s])
    return "; ".join(
        ", ".join(f"{v} = {_format_value(s[v])}" for v in unknowns if v in s) for s in rows
    )


def _transform(expr: sympy.Expr, mode: str) -> str:
    if mode == "factor" and expr.is_Integer and expr > 1:
        factors = sympy.factorint(expr)
        return "*".join(f"{p}**{k}" if k > 1 else str(p) for p, k in sorted(factors.items()))
    if not expr.free_symbols:
        return format_number(expr)
    if _undefined(expr):
        raise MathDomainError("expression is undefined")
    if mode == "expand":
        return str(sympy.expand(expr))
    if mode == "factor":
        return str(sympy.factor(expr))
    return str(sympy.simplify(expr))


def _work(text: str, target: str | None, mode: str) -> dict[str, Any]:
    """Parse and evaluate `text` (already extracted); never raises for bad input."""
    out: dict[str, Any] = {"ok": False, "answer": None, "expression": None, "error": None}
    try:
        parts: tuple[Part, ...] = parse_syntax(text, variables=(target,) if target else ())
        out["expression"] = ", ".join(render(p) for p in parts)
        built = [build(p) for p in parts]
        if not any(isinstance(b, sympy.Equality) for b in built):
            if len(built) != 1:
                raise _Unsupported("several expressions")
            expr = built[0]
            if mode == "solve" and expr.free_symbols:
                answer = _solve_equations([expr], target, expr.free_symbols)
            else:
                answer = _transform(expr, mode)
        elif all(isinstance(b, sympy.Equality) for b in built):
            mentioned: set[sympy.Symbol] = set()
            for b in built:
                mentioned |= b.free_symbols
            answer = _solve_equations([b.lhs - b.rhs for b in built], target, mentioned)
        else:
            raise _Unsupported("mix of expressions and equations")
        if len(answer) > MAX_ANSWER_CHARS:
            raise _Unsupported(f"answer longer than {MAX_ANSWER_CHARS} characters")
        out.update(ok=True, answer=answer)
    except MathParseError as exc:
        out["error"] = f"parse_error: {exc}"
    except (MathDomainError, ZeroDivisionError) as exc:
        out["error"] = f"undefined: {exc}"
    except _NoSolution:
        out["error"] = "no_solution"
    except _Unsupported as exc:
        out["error"] = f"unsupported: {exc}"
    except MemoryError:
        out["error"] = "resource_limit"
    except RecursionError:
        out["error"] = "unsupported: too deeply nested"
    except Exception as exc:  # SymPy raises many types on odd input; report, don't crash.
        out["error"] = f"unsupported: {type(exc).__name__}"
    return out


# --------------------------------------------------------------------------- child process


def _self_cpu() -> float:
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return float(usage.ru_utime + usage.ru_stime)
    except ImportError:
        return time.process_time()


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = current + CHILD_MEMORY_HEADROOM
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError):
        pass  # best effort: not Linux, or limits not adjustable


def _child_main(conn: Connection, text: str, target: str | None, mode: str) -> None:
    # A Ctrl-C reaches the whole process group: the parent decides this child's fate (it
    # stops waiting and kills it), so the child neither dies on it nor reports a parent that
    # stopped listening.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _limit_memory()
        conn.send("ready")
        out = _work(text, target, mode)
        out["cpu_s"] = _self_cpu()
        conn.send(out)
    except BrokenPipeError:
        pass  # the parent stopped waiting (interrupted, or past the time limit)
    finally:
        conn.close()


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds of a live child, read from /proc before it is killed (0.0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# Modules SymPy imports lazily on the first solve/simplify (~130 ms); preloaded in the forkserver.
_SYMPY_LAZY_MODULES = (
    "sympy.physics.units",
    "sympy.combinatorics",
    "sympy.tensor.tensor",
    "sympy.assumptions.wrapper",
    "sympy.sets.setexpr",
)
# The persistent workers' code (Z3 with it), so a worker forked from the server starts with
# everything imported.
_PRELOAD = ("apportion.tools.logic", "apportion.tools.solver_worker")
_warm_lock = threading.Lock()
_warmed = False


def _warm_parent() -> None:
    # SymPy imports and caches a lot on first use; doing that once in the parent means every
    # forked child starts warm. The inputs are fixed, so no untrusted text runs here.
    global _warmed
    with _warm_lock:
        if not _warmed:
            _work("2x + 3 = 11", None, "auto")
            _work("sqrt(2)/3 + 17*23", None, "auto")
            _warmed = True


def _context(start_method: str | None) -> Any:
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        if "fork" in methods and sys.platform.startswith("linux") and threading.active_count() == 1:
            start_method = "fork"
        elif "forkserver" in methods:
            start_method = "forkserver"
        else:
            start_method = "spawn"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # Import SymPy once in the server rather than in every child. This sets the preload
        # list of the process-wide forkserver; it only takes effect if that is not running yet.
        ctx.set_forkserver_preload([__name__, *_PRELOAD, *_SYMPY_LAZY_MODULES])
    return ctx


def _run_child(found: MathQuery, timeout_s: float, start_method: str | None) -> dict[str, Any]:
    ctx = _context(start_method)
    if ctx.get_start_method() == "fork":
        _warm_parent()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main, args=(sender, found.text, found.target, found.mode), daemon=True
    )
    try:
        proc.start()
    except (AssertionError, OSError):  # e.g. called from a daemonic process, or out of pids
        receiver.close()
        sender.close()
        return {"ok": False, "error": "crashed", "cpu_s": 0.0}
    sender.close()  # so a dead child shows up as EOF instead of a hang
    try:
        if not receiver.poll(STARTUP_TIMEOUT_S):
            return {"ok": False, "error": "timeout", "cpu_s": _proc_cpu(proc.pid)}
        receiver.recv()  # "ready": the timeout covers the work, not interpreter start-up
        if not receiver.poll(timeout_s):
            return {"ok": False, "error": "timeout", "cpu_s": _proc_cpu(proc.pid)}
        result: dict[str, Any] = receiver.recv()
        return result
    except (EOFError, OSError):
        return {"ok": False, "error": "crashed", "cpu_s": 0.0}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        receiver.close()


def solve(
    question: str, *, timeout_s: float = 5.0, start_method: str | None = None
) -> SolverResult:
    """Extract the math in `question` and answer it exactly; never raises for bad input.

    `start_method` forces a multiprocessing start method ("fork", "forkserver", "spawn");
    by default fork is used when safe (see the module docstring).
    """
    wall0 = time.perf_counter()
    cpu0 = time.thread_time()
    found = find_math(question)
    if found is None:
        out: dict[str, Any] = {"ok": False, "error": "no_math", "cpu_s": 0.0}
    else:
        out = _run_child(found, max(timeout_s, 0.0), start_method)
    return SolverResult.from_child(out, wall0=wall0, cpu0=cpu0)
