"""The `factorial` solver: answers "what is N factorial" exactly, and declines anything else.

"What is 20 factorial?", "Compute 7 factorial", "factorial of 12": the answer is the integer,
all its digits. N runs up to 1000 (2,568 digits); a larger N is reported as unsupported rather
than computed. Any other question is declined, and the next solver is asked.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from apportion.tools.results import SolverResult
from apportion.tools.solvers import DECLINED

MAX_N = 1000

_QUESTION = re.compile(
    r"^\s*(?:(?:what\s+is|what's|compute|calculate|evaluate|find)\s+)?(?:the\s+)?"
    r"(?:(?P<n1>\d+)\s+factorial|factorial\s+(?:of\s+)?(?P<n2>\d+))\s*[?.!]?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Factorial:
    """What the `apportion.solvers` entry point `factorial` names: called with no arguments,
    it is the solver (a `Solver`, apportion/tools/solvers.py)."""

    @property
    def name(self) -> str:
        return "factorial"

    def solve(self, question: str, *, timeout_s: float) -> SolverResult:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        match = _QUESTION.match(question)
        answer: str | None = None
        expression: str | None = None
        if match is None:
            error: str | None = DECLINED
        else:
            n = int(match.group("n1") or match.group("n2"))
            expression = f"{n}!"
            if n > MAX_N:
                error = f"unsupported: {n}! has more digits than this solver gives"
            else:
                answer, error = str(math.factorial(n)), None
        return SolverResult(
            ok=answer is not None,
            answer=answer,
            expression=expression,
            error=error,
            wall_s=time.perf_counter() - wall0,
            cpu_s=time.process_time() - cpu0,
        )
