"""symbolic: answer exactly with a solver, no model call at all.

`RunContext.solve` asks the registered exact solvers in turn (`tools/solvers.py`): by default
a bare propositional formula ("not ( True ) and False is") goes to Z3 (`tools/logic.py`),
arithmetic and algebra to SymPy through the safe parser (`tools/solver.py`), and a plug-in
solver (the `apportion.solvers` entry-point group) is asked before them. A question every
solver declines is declined here too, so a ladder can fall through to a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from apportion.strategies.base import RunContext
from apportion.types import Attempt, Query


@dataclass(frozen=True)
class Symbolic:
    @property
    def name(self) -> str:
        return "symbolic"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        result = ctx.solve(query.text, detail="symbolic")
        if result.error == "timeout":
            # declined like any other miss, so a ladder falls through to its next step
            return Attempt(
                self.name, None, 0.0,
                error=f"solver: timeout (no exact answer in {result.wall_s:.1f} s)",
            )  # fmt: skip
        if not result.ok or result.answer is None:
            return Attempt(self.name, None, 0.0, error=f"solver: {result.error}")
        # An exact result is as sure as an answer gets, if the question was parsed right.
        return Attempt(
            self.name,
            result.answer,
            0.95,
            candidates=(result.answer,),
            rationale=result.expression or "",
        )
