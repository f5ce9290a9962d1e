"""The strategy protocol and the run context every strategy works through.

A strategy never touches an engine or a tool directly: `RunContext.generate`, `.solve` and
`.run_program` charge the ledger for every call and refuse calls the budget cannot cover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from apportion.engines.base import GenerationCancelled
from apportion.errors import BudgetExceededError
from apportion.ledger import Ledger, RaplMeter
from apportion.tools.solvers import SolverRegistry
from apportion.types import Attempt, Completion, Message, Query

# An unmeasured local model is probed for its speed before a call whose prompt, at the prior
# speed, would take at least this share of the time left (engines/speed.py).
PROBE_SHARE = 0.25
# What the probe reads: about 50 tokens, the size of a short question with its template.
PROBE_TOKENS = 50
SPEED_PROBE = (
    "This is a short calibration text, read once to measure how fast this machine reads a "
    "prompt. It asks nothing and needs no answer beyond a single word. Reply with the word OK "
    "and nothing else, please, so that the measurement stays short."
)

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine
    from apportion.engines.speed import SpeedBook
    from apportion.tools.results import SolverResult
    from apportion.tools.sandbox import SandboxLimits, SandboxResult
    from apportion.tools.solver_worker import SolverWorkers
    from apportion.tools.store.base import DocumentStore, Hit


class CompletionCache(Protocol):
    """Replays completions keyed by (model, prompt, params, seed); bench supplies one."""

    def get(self, key: str) -> list[tuple[Completion, float]] | None: ...
    def put(self, key: str, value: list[tuple[Completion, float]]) -> None: ...


@dataclass
class RunContext:
    """What a strategy may use: engines by id, tools, the ledger, and its settings."""

    engine_for: Callable[[str], TextEngine]
    default_model: str
    ledger: Ledger
    max_tokens: int = 512
    seed: int = 0
    solver_timeout_s: float = 5.0
    # Persistent solver processes (a server's); None solves in this process, SymPy in a child
    # forked per call, which is cheaper for a one-shot CLI call (see tools/solver_worker.py).
    solvers: SolverWorkers | None = None
    # The exact solvers `solve` asks, in order (tools/solvers.py); an Engine passes its own,
    # plug-ins included. The default holds the built-ins only.
    exact_solvers: SolverRegistry = field(default_factory=SolverRegistry)
    sandbox_limits: SandboxLimits | None = None
    cache: CompletionCache | None = None
    cache_namespace: Callable[[str], str] = field(default=lambda model_id: model_id)
    meter: RaplMeter = field(default_factory=RaplMeter)
    store: DocumentStore | None = None
    # Sees each generated piece of single-sample calls (n == 1, no logprobs), which are then
    # streamed from the engine. Raising GenerationCancelled from it stops that generation at
    # the next token: the partial call is charged, then the exception propagates.
    on_token: Callable[[str], None] | None = None
    # The clock model calls are timed by (and time budgets kept by); tests substitute one.
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    # Model speeds measured on this machine: a time budget refuses a call whose prompt it
    # cannot cover, and stops a running one before the token that would cross it.
    speeds: SpeedBook | None = None
    # Same request, same tokens, whatever ran before: every call evaluates its whole prompt
    # instead of reusing a prefix cached by an earlier call (see TextEngine.generate).
    deterministic: bool = False

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
    ) -> list[Completion]:
        engine = self.engine_for(model or self.default_model)
        max_tokens = max_tokens or self.max_tokens
        seed = self.seed if seed is None else seed
        prompt_tokens = engine.count_tokens(messages)
        self.ledger.check_model_call(engine.cost, prompt_tokens, max_tokens * n)
        # A time cap (or a money cap on a local model, which bills by the second) is kept by
        # streaming and cutting generation off when it runs out; a cached reply that took
        # longer than what is left is not replayed.
        seconds_left = self.ledger.seconds_left(engine.cost)
        if seconds_left is not None and n > 1:
            # The streamed path keeps the cap, one sample at a time (seed + i, as engines
            # number the samples of one call).
            samples: list[Completion] = []
            for i in range(n):
                samples += self.generate(
                    messages, model=engine.model_id, max_tokens=max_tokens,
                    temperature=temperature, stop=stop, seed=seed + i, detail=detail,
                )  # fmt: skip
            return samples
        if seconds_left is not None:
            # A time cap is kept by the streamed path, which carries no log-probabilities;
            # the cap wins, and callers fall back to their confidence without them.
            logprobs = False
            self._refuse_unreadable_prompt(engine, prompt_tokens, seconds_left)
        key = None
        if self.cache is not None:
            key = _cache_key(
                self.cache_namespace(engine.model_id), messages, max_tokens, temperature, n,
                stop, seed, logprobs, deterministic=self.deterministic,
            )  # fmt: skip
            hit = self.cache.get(key)
            if hit is not None and (seconds_left is None or sum(w for _, w in hit) <= seconds_left):
                for completion, wall_s in hit:
                    self._charge(engine, completion, wall_s, None, detail)
                if self.on_token is not None and n == 1 and not logprobs:
                    self.on_token(hit[0][0].text)  # a replay arrives in one piece
                return [c for c, _ in hit]
        energy_before = self.meter.read_j()
        started = self.clock()
        cancelled: GenerationCancelled | None = None
        out_of_time = False
        if (self.on_token is not None or seconds_left is not None) and n == 1 and not logprobs:
            completion, cancelled, out_of_time = self._stream(
                engine, messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                seed=seed, deadline=None if seconds_left is None else started + seconds_left,
                prompt_tokens=prompt_tokens,
            )  # fmt: skip
            completions = [completion]
        else:
            completions = engine.generate(
                messages, max_tokens=max_tokens, temperature=temperature, n=n, stop=stop,
                seed=seed, logprobs=logprobs, **self._prefix_option(),
            )  # fmt: skip
        wall_s = self.clock() - started
        energy_after = self.meter.read_j()
        measured = (
            (energy_after - energy_before) / len(completions)
            if energy_before is not None and energy_after is not None
            else None
        )
        share = wall_s / max(len(completions), 1)
        for completion in completions:
            self._charge(engine, completion, share, measured, detail)
        if out_of_time:
            raise BudgetExceededError(
                f"the budget ran out {wall_s:.2f} s into a {engine.model_id} call, which was cut "
                f"off after {completions[0].completion_tokens} tokens",
                "raise --budget-seconds or --budget-usd",
            )
        if cancelled is not None:
            raise cancelled  # charged above; a partial completion is never cached
        # a fallback's reply is not cached: replayed, it would be charged as the engine asked
        if self.cache is not None and key is not None and not any(c.served_by for c in completions):
            self.cache.put(key, [(c, share) for c in completions])
        return completions

    def _stream(
        self,
        engine: TextEngine,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
        seed: int,
        deadline: float | None,
        prompt_tokens: int,
    ) -> tuple[Completion, GenerationCancelled | None, bool]:
        """Pass each piece to `on_token` (if set). If it cancels, or the next token would
        likely arrive after `deadline` (on `clock`), throw a cancellation into the engine's
        generator so the engine stops and returns what it generated (which is then charged).
        Returns the completion, the listener's cancellation if any, and whether the deadline
        cut it off. The call's speeds go into the speed book."""
        speed_key = self._speed_key(engine)
        started = self.clock()
        pieces = engine.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed,
            **self._prefix_option(),
        )  # fmt: skip
        cancelled: GenerationCancelled | None = None
        out_of_time = False
        first: float | None = None  # when the first piece arrived (the prompt read by then)
        last: float | None = None  # when the previous piece arrived
        # The slowest token so far; before the second piece, the speed measured on earlier
        # calls, so the first piece already knows whether another fits before the deadline.
        step = (self.speeds.step_s(speed_key) if self.speeds is not None else None) or 0.0
        later = 0  # pieces after the first
        try:
            piece = next(pieces)
            while True:
                try:
                    now = self.clock()
                    if last is None:
                        first = now
                    else:
                        step = max(step, now - last)
                        later += 1
                    last = now
                    if cancelled is None and not out_of_time:
                        if self.on_token is not None:
                            self.on_token(piece)
                        if deadline is not None and now + step >= deadline:
                            out_of_time = True
                            piece = pieces.throw(GenerationCancelled())
                            continue
                    piece = next(pieces)
                except GenerationCancelled as e:
                    cancelled = e
                    piece = pieces.throw(e)
        except StopIteration as done:
            completion: Completion = done.value
            return completion, cancelled, out_of_time
        finally:
            pieces.close()
            if self.speeds is not None and first is not None and last is not None:
                self.speeds.record(
                    speed_key, prompt_tokens=prompt_tokens, first_token_s=first - started,
                    steps=later, decode_s=last - first,
                )  # fmt: skip

    def _speed_key(self, engine: TextEngine) -> str:
        """Speeds are per model weights and thread count."""
        threads = getattr(engine, "threads", None)
        return f"{self.cache_namespace(engine.model_id)}|threads={threads}"

    def _refuse_unreadable_prompt(
        self, engine: TextEngine, prompt_tokens: int, seconds_left: float
    ) -> None:
        """A model cannot stop while it reads the prompt: refuse a call whose prompt alone
        would outlast the time left, at the speed measured here. A local model never measured
        whose prompt might take a good share of the time left (at a modest prior speed) is
        measured first by a one-token call, charged like any other; an unmeasured remote
        model is let through."""
        if self.speeds is None:
            return
        key = self._speed_key(engine)
        if self.speeds.get(key) is None:
            if not engine.cost.local:
                return
            threads = getattr(engine, "threads", None) or 1
            prior = self.speeds.prefill_s(
                key, prompt_tokens, params=engine.cost.params, threads=threads
            )
            if prior < PROBE_SHARE * seconds_left:
                return  # room to spare: the call itself will measure the model
            probe = self.speeds.prefill_s(
                key, PROBE_TOKENS, params=engine.cost.params, threads=threads
            )
            if probe + prior >= seconds_left:
                # no room to measure the model within the budget: judge by the prior
                if prior >= seconds_left:
                    raise BudgetExceededError(
                        f"reading the {prompt_tokens}-token prompt would take "
                        f"{engine.model_id} about {prior:.2f} s at a modest speed (it has not "
                        f"been measured on this machine yet); {seconds_left:.2f} s of the "
                        "budget remain",
                        "raise --budget-seconds; any call with a larger time budget measures "
                        "the model for the next ones",
                    )
                return
            self._probe_speed(engine, key)
            left = self.ledger.seconds_left(engine.cost)
            seconds_left = seconds_left if left is None else left
        expected = self.speeds.prefill_s(key, prompt_tokens, params=engine.cost.params, threads=1)
        if expected >= seconds_left:
            raise BudgetExceededError(
                f"reading the {prompt_tokens}-token prompt takes {engine.model_id} about "
                f"{expected:.2f} s here (measured); {seconds_left:.2f} s of the budget remain",
                "raise --budget-seconds or --budget-usd",
            )

    def _probe_speed(self, engine: TextEngine, key: str) -> None:
        """Measure how fast `engine` reads a prompt here: a one-token call on a prompt of the
        size questions have, charged to the ledger (detail "speed probe"). Its time per prompt
        token, its one decode step included, errs on the slow side for longer prompts, which
        are read in larger batches."""
        assert self.speeds is not None
        started = self.clock()
        (completion,) = engine.generate([Message("user", SPEED_PROBE)], max_tokens=1)
        wall_s = self.clock() - started
        self._charge(engine, completion, wall_s, None, "speed probe")
        self.speeds.record(
            key, prompt_tokens=completion.prompt_tokens, first_token_s=wall_s, steps=0, decode_s=0
        )

    def _prefix_option(self) -> dict[str, bool]:
        """`reuse_prefix=False` in deterministic mode; nothing otherwise, so an engine written
        before the option existed keeps working outside that mode."""
        return {"reuse_prefix": False} if self.deterministic else {}

    def _charge(
        self,
        engine: TextEngine,
        completion: Completion,
        wall_s: float,
        measured_j: float | None,
        detail: str,
    ) -> None:
        self.ledger.charge_model(
            completion.served_by or engine.cost,  # a fallback that took the call, if one did
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            wall_s=wall_s,
            measured_energy_j=measured_j,
            detail=detail,
        )

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


def _cache_key(
    model_key: str,
    messages: Sequence[Message],
    max_tokens: int,
    temperature: float,
    n: int,
    stop: Sequence[str] | None,
    seed: int,
    logprobs: bool,
    *,
    deterministic: bool = False,
) -> str:
    import hashlib
    import json

    fields: dict[str, object] = {
        "model": model_key,
        "messages": [[m.role, m.content] for m in messages],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "n": n,
        "stop": list(stop or []),
        "seed": seed,
        "logprobs": logprobs,
    }
    if deterministic:
        # keyed apart, so a deterministic run never replays a prefix-reusing one; absent
        # otherwise, so the keys of earlier caches still match
        fields["deterministic"] = True
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class Strategy(Protocol):
    """One way of answering. `run` returns an Attempt; it reports failures, it does not raise
    them (budget refusals excepted: those propagate so the executor can stop the plan)."""

    @property
    def name(self) -> str: ...

    def run(self, query: Query, ctx: RunContext) -> Attempt: ...
