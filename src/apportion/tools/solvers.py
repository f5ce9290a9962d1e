"""Exact solvers by name, asked in turn by the `symbolic` strategy (through `RunContext.solve`).

A solver answers a question exactly or declines it. The first one that does not decline gives
the result, and the ledger charges it (under its name) for the time of every solver asked. All
declining, the last one's result stands (for the built-ins, SymPy's "no_math").

Built-ins: ``z3`` (`tools/logic.py`: a bare propositional formula; it declines anything else
with "no_logic") and ``sympy`` (`tools/solver.py`: arithmetic and algebra; it declines text
that holds no math with "no_math"). Plug-ins come from the ``apportion.solvers`` entry-point
group (`apportion.plugins`): each names a factory ``() -> Solver``, and a plug-in declines with
the error "declined". The order is the ``solvers`` setting, or by default the plug-ins (by
name) before the built-ins, so that a better executor, once installed, is asked first.

A server hands the built-ins' work to persistent worker processes (`tools/solver_worker.py`),
so that a slow solve never holds the interpreter its requests share; a run of consecutive
built-ins goes there in one round trip. A plug-in runs in the caller's process, within the
time it is given.

Nothing here imports SymPy or Z3: each built-in imports its library on its first solve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from apportion.plugins import SOLVERS, PluginIndex, PluginLoadError, Registry
from apportion.tools.results import SolverResult

if TYPE_CHECKING:
    from apportion.tools.solver_worker import SolverWorkers

__all__ = [
    "BUILTIN_SOLVERS",
    "DECLINED",
    "ExactAnswer",
    "Solver",
    "SolverFactory",
    "SolverRegistry",
    "declined",
]

# The error of a solver that leaves a question to the next one ("not mine"). The built-ins
# keep their own words for it, which results and traces have always carried.
DECLINED = "declined"
DECLINING_ERRORS = frozenset({DECLINED, "no_logic", "no_math"})


def declined(result: SolverResult) -> bool:
    """Whether a solver left the question to the next one."""
    return not result.ok and result.error in DECLINING_ERRORS


@runtime_checkable
class Solver(Protocol):
    """An exact solver: answers `question` within `timeout_s` seconds, or declines it (error
    "declined"), or reports why it could not (any other error: "timeout", "parse_error: ...").
    It never raises for bad input; `wall_s` and `cpu_s` say what it spent, for the ledger."""

    @property
    def name(self) -> str: ...

    def solve(self, question: str, *, timeout_s: float) -> SolverResult: ...


SolverFactory = Callable[[], Solver]


@dataclass(frozen=True)
class ExactAnswer:
    """A solver's result and the tool that produced it ("z3", "sympy", a plug-in's name), for
    the ledger."""

    tool: str
    result: SolverResult


@dataclass(frozen=True)
class Z3Boolean:
    """A bare boolean formula, evaluated by Z3 (`tools/logic.py`): linear and capped, so it runs
    in the calling process."""

    @property
    def name(self) -> str:
        return "z3"

    def solve(self, question: str, *, timeout_s: float) -> SolverResult:
        from apportion.tools.logic import evaluate_boolean

        return evaluate_boolean(question)


@dataclass(frozen=True)
class SympyMath:
    """Arithmetic and algebra, by SymPy in a child process killed at `timeout_s`
    (`tools/solver.py`)."""

    @property
    def name(self) -> str:
        return "sympy"

    def solve(self, question: str, *, timeout_s: float) -> SolverResult:
        from apportion.tools.solver import solve

        return solve(question, timeout_s=timeout_s)


# The built-ins, in their default order; a server's worker processes run exactly these.
BUILTIN_SOLVERS: dict[str, SolverFactory] = {"z3": Z3Boolean, "sympy": SympyMath}


class SolverRegistry:
    """Name → solver factory: the built-ins and the ``apportion.solvers`` plug-ins (from
    `plugins`; None: built-ins only), asked in `order` (None: plug-ins by name, then z3, then
    sympy). Solvers are built once, on the first solve. One per Engine."""

    def __init__(
        self, plugins: PluginIndex | None = None, *, order: Sequence[str] | None = None
    ) -> None:
        self._factories: Registry[SolverFactory] = Registry(
            group=SOLVERS,
            what="solver",
            builtins=BUILTIN_SOLVERS,
            plugins=plugins,
            accepts=callable,
            expected="a solver factory (a callable returning a Solver)",
        )
        self._order = None if order is None else tuple(order)
        self._solvers: tuple[Solver, ...] | None = None

    def names(self) -> list[str]:
        return self._factories.names()

    def solvers(self) -> tuple[Solver, ...]:
        """The solvers, in the order they are asked (UnknownNameError for a name in `order`
        that none registers, PluginLoadError for a plug-in that failed to load)."""
        if self._solvers is None:
            names = self._order
            if names is None:
                names = (*self._factories.plugin_names(), *self._factories.builtin_names())
            built: list[Solver] = []
            for name in names:
                solver = self._factories.get(name)()
                if not isinstance(solver, Solver):
                    raise PluginLoadError(
                        f"the solver plug-in {name!r} built a {type(solver).__name__}, which "
                        "has no `name` and `solve(question, *, timeout_s)`"
                    )
                built.append(solver)
            self._solvers = tuple(built)
        return self._solvers

    def solve(
        self, question: str, *, timeout_s: float, workers: SolverWorkers | None = None
    ) -> ExactAnswer:
        """Ask the solvers in order until one does not decline, within `timeout_s` seconds in
        all; with `workers`, the built-ins run in those processes. Never raises for bad input;
        the result's `wall_s` and `cpu_s` cover every solver asked."""
        deadline = time.monotonic() + timeout_s
        solvers = self.solvers()
        wall_s = cpu_s = 0.0
        answer: ExactAnswer | None = None
        i = 0
        while i < len(solvers):
            left = max(deadline - time.monotonic(), 0.0)
            if workers is not None and _in_worker(solvers[i]):
                # consecutive built-ins go to a worker together: one round trip
                j = i
                while j < len(solvers) and _in_worker(solvers[j]):
                    j += 1
                names = tuple(s.name for s in solvers[i:j])
                answer = workers.solve(question, timeout_s=left, solvers=names)
                i = j
            else:
                solver = solvers[i]
                answer = ExactAnswer(solver.name, solver.solve(question, timeout_s=left))
                i += 1
            wall_s += answer.result.wall_s
            cpu_s += answer.result.cpu_s
            if not declined(answer.result):
                break
        if answer is None:
            return ExactAnswer(
                "none", SolverResult(False, None, None, DECLINED, wall_s=0.0, cpu_s=0.0)
            )
        return replace(answer, result=replace(answer.result, wall_s=wall_s, cpu_s=cpu_s))


def _in_worker(solver: Solver) -> bool:
    """Whether a solver is one the worker processes run (a built-in, not a plug-in)."""
    return type(solver) in (Z3Boolean, SympyMath)
