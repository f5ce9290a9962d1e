"""The strategy protocol and the run context every strategy works through.

A strategy never touches an engine or a tool directly: `RunContext.generate`, `.solve` and
`.run_program` charge the ledger for every call and refuse calls the budget cannot cover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from apportion.config import DEFAULT_MODEL, LARGE_MODEL
from apportion.engines.base import takes_think_budget, think_option
from apportion.errors import BudgetExceededError, UsageError
from apportion.ledger import Ledger, RaplMeter
from apportion.types import Attempt, Completion, Message, Query

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine
    from apportion.engines.layers import CompletionCache, ModelCalls
    from apportion.engines.speed import SpeedBook
    from apportion.tools.results import SolverResult
    from apportion.tools.sandbox import SandboxLimits, SandboxResult
    from apportion.tools.solver_worker import SolverWorkers
    from apportion.tools.solvers import SolverRegistry
    from apportion.tools.store.base import DocumentStore, Hit


# The most tokens any one call of a strategy may ask for: beyond every context window served.
MAX_TOKENS_BOUND = 32_768

# What the tokens of a strategy's one model call are, to a client watching them arrive: the
# answer itself, or reasoning that ends in the answer. A strategy that makes that one call
# declares it in a `token_stream` class attribute; one that makes several calls, or none,
# leaves it out (its tokens are then work in progress, not the answer).
TokenStream = Literal["answer", "reasoning"]


@dataclass(frozen=True)
class Bounds:
    """The range a numeric strategy parameter may take, declared in its field's annotation:
    `n: Annotated[int, Bounds(1, 64)] = 8`. `StrategyRegistry.build` refuses a value outside it
    with a UsageError (the CLI exits 2, the server answers 400) before any work: an unbounded
    `consistency:n=100000` would hold the model until the request timed out."""

    low: float
    high: float

    def check(self, value: object, where: str) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if not self.low <= value <= self.high:
            raise UsageError(
                f"{where} must be between {self.low:g} and {self.high:g}, got {value:g}"
            )


@dataclass
class RunContext:
    """What a strategy may use: models (through the request's model calls, which charge the
    ledger and keep its hooks), tools, the store, the ledger, and the request's settings."""

    calls: ModelCalls
    default_model: str
    max_tokens: int = 512
    seed: int = 0
    # The models a cascade runs on unless its spec names them: the default_model and
    # large_model settings.
    small_model: str = DEFAULT_MODEL
    large_model: str = LARGE_MODEL
    solver_timeout_s: float = 5.0
    # Persistent solver processes (a server's); None solves in this process, SymPy in a child
    # forked per call, which is cheaper for a one-shot CLI call (see tools/solver_worker.py).
    solvers: SolverWorkers | None = None
    # The exact solvers `solve` asks, in order (tools/solvers.py); a Runtime passes its own,
    # plug-ins included. The default holds the built-ins only.
    exact_solvers: SolverRegistry = field(default_factory=lambda: _builtin_solvers())
    sandbox_limits: SandboxLimits | None = None
    store: DocumentStore | None = None

    @property
    def ledger(self) -> Ledger:
        return self.calls.ledger

    @classmethod
    def over(
        cls,
        engine_for: Callable[[str], TextEngine],
        default_model: str,
        ledger: Ledger | None = None,
        *,
        cache: CompletionCache | None = None,
        cache_namespace: Callable[[str], str] | None = None,
        meter: RaplMeter | None = None,
        clock: Callable[[], float] | None = None,
        speeds: SpeedBook | None = None,
        deterministic: bool = False,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        **resources: Any,
    ) -> RunContext:
        """A context over `engine_for`'s engines, with the given hooks (a Runtime builds its
        own; this is for callers and tests that hold engines themselves)."""
        from apportion.engines.layers import ModelCalls

        calls = ModelCalls(
            engine_for, ledger if ledger is not None else Ledger(),
            cache=cache, speeds=speeds, deterministic=deterministic, on_token=on_token,
            cancel=cancel,
        )  # fmt: skip
        if cache_namespace is not None:
            calls.namespace = cache_namespace
        if meter is not None:
            calls.meter = meter
        if clock is not None:
            calls.clock = clock
        return cls(calls, default_model, **resources)

    def generate(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        detail: str = "",
        think_budget: int | None = None,
    ) -> list[Completion]:
        """Call a model (the request's, unless `model` names another) through the request's
        layers (engines/layers.py): budget, cache, deadline, charge, listener, cancel.
        `think_budget` reaches only an engine that takes one (`takes_think_budget`)."""
        engine = self.calls.engine(model or self.default_model, detail)
        thinking = think_option(think_budget) if takes_think_budget(engine) else {}
        return engine.generate(
            messages, max_tokens=max_tokens or self.max_tokens, temperature=temperature, n=n,
            stop=stop, seed=self.seed if seed is None else seed, logprobs=logprobs,
            **self.calls.prefix_option(), **thinking,
        )  # fmt: skip

    def takes_think_budget(self, model: str | None = None) -> bool:
        """Whether the model (the request's by default) is a reasoning model whose server is
        told how long to think (its engine config's `thinking`)."""
        return takes_think_budget(self.calls.engine_for(model or self.default_model))

    def solve(self, question: str, *, detail: str = "") -> SolverResult:
        """Answer exactly, without a model: the exact solvers are asked in turn (by default a
        bare boolean formula goes to Z3, anything else to SymPy, which declines what holds no
        math). Charged as the solver that answered (the last asked, if all declined). A timeout
        is a result (error "timeout"), not an exception."""
        exact = self.exact_solvers.solve(
            question, timeout_s=self._tool_timeout(self.solver_timeout_s), workers=self.solvers
        )
        self.ledger.charge_tool(
            exact.tool, wall_s=exact.result.wall_s, cpu_s=exact.result.cpu_s, detail=detail
        )
        return exact.result

    def _tool_timeout(self, default_s: float) -> float:
        """A tool's timeout, shortened to what the time budget has left; refuses the call
        when nothing is left."""
        left = self.ledger.seconds_left()
        if left is None:
            return default_s
        if left <= 0:
            raise BudgetExceededError("the time budget is spent", "raise --budget-seconds")
        return min(default_s, left)

    def search(self, text: str, *, k: int = 5, detail: str = "") -> list[Hit]:
        """Retrieve passages from the document store, charged as a tool call."""
        from apportion.errors import ToolError

        if self.store is None:
            raise ToolError(
                "no document store is configured",
                "index documents with `apportion index add PATH`, or pass --store",
            )
        started, cpu_started = time.perf_counter(), time.process_time()
        hits = self.store.search(text, k=k)
        self.ledger.charge_tool(
            "retrieval",
            wall_s=time.perf_counter() - started,
            cpu_s=time.process_time() - cpu_started,
            detail=detail,
        )
        return hits

    def run_program(self, code: str, *, detail: str = "") -> SandboxResult:
        from apportion.tools.sandbox import SandboxLimits, run_python

        limits = self.sandbox_limits or SandboxLimits()
        wall_s = self._tool_timeout(limits.wall_s)
        if wall_s < limits.wall_s:
            limits = replace(limits, wall_s=wall_s, cpu_s=min(limits.cpu_s, wall_s))
        result = run_python(code, limits=limits)
        self.ledger.charge_tool("sandbox", wall_s=result.wall_s, cpu_s=result.cpu_s, detail=detail)
        return result


class Strategy(Protocol):
    """One way of answering. `run` returns an Attempt; it reports failures, it does not raise
    them (budget refusals excepted: those propagate so the executor can stop the plan)."""

    @property
    def name(self) -> str: ...

    def run(self, query: Query, ctx: RunContext) -> Attempt: ...


def _builtin_solvers() -> SolverRegistry:
    # imported on first need: routing a question (which imports this module for the strategy
    # protocol) should not load the solvers
    from apportion.tools.solvers import SolverRegistry

    return SolverRegistry()
