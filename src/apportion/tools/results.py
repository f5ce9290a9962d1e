"""The outcome type shared by the exact solvers (SymPy in `solver.py`, Z3 in `logic.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SolverResult:
    """Outcome of `solver.solve` or `logic.evaluate_boolean`.

    `answer`: for SymPy, integers exactly ("396"), other numbers as decimals with at most 10
    significant digits ("3.5", "0.3333333333"), complex numbers as "1 + 2i", equations as
    "x = -2, 2", systems as "x = 2, y = 1", numeric equalities as "true"/"false"; for Z3, "True"
    or "False".
    `error`: "no_math" / "no_logic" (nothing to solve), "parse_error: ...", "undefined: ...",
    "timeout", "no_solution", "unsupported: ...", "resource_limit" or "crashed".
    `cpu_s`: CPU seconds of the calling thread plus any child process.
    """

    ok: bool
    answer: str | None
    expression: str | None
    error: str | None
    wall_s: float
    cpu_s: float
