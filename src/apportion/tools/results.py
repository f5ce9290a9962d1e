"""The outcome type shared by the exact solvers (SymPy in `solver.py`, Z3 in `logic.py`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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

    @classmethod
    def from_child(cls, out: Mapping[str, Any], *, wall0: float, cpu0: float) -> SolverResult:
        """A result a child process reported (`out`), timed from `wall0` (perf_counter) and
        `cpu0` (this thread's CPU time) to now, the child's CPU seconds added."""
        return cls(
            ok=bool(out.get("ok")),
            answer=out.get("answer"),
            expression=out.get("expression"),
            error=out.get("error"),
            wall_s=time.perf_counter() - wall0,
            cpu_s=time.thread_time() - cpu0 + float(out.get("cpu_s", 0.0)),
        )
