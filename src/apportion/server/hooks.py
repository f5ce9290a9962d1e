"""Where the server reaches into a run, all in one place. A job's RunContext is the prepared
one with:

- `engine_for` giving each engine wrapped in an `ObservedEngine`: the job's cancel flag, the
  local queue's slot at the first local call, the key's hold before each call, the request's
  stop sequences where they apply, and how the last call finished;
- `on_token` streaming to the job, and the server's solver worker processes;
- the ledger's `on_charge` reporting each charge to the job.

They are the per-request hooks (cancel, on_token, on_charge, the budget) that a Runtime will
take as engine wrappers; this module is what it replaces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from functools import partial

from apportion.engine import Engine, Prepared
from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.errors import UnknownNameError
from apportion.ledger import ModelCost
from apportion.server.jobs import Job
from apportion.server.models import ServedModels
from apportion.server.queue import LocalQueue
from apportion.server.quota import KeyQuota
from apportion.strategies.base import RunContext
from apportion.tools.solver_worker import SolverWorkers
from apportion.types import Completion, Message

# Called before each model call with (engine cost, prompt tokens, max tokens, n): reserves the
# call's worst case against the caller's key, or raises BudgetExceededError.
BeforeCall = Callable[[ModelCost, int, int, int], None]


class RunHooks:
    """The server's part in every job's run: what it adds before the run (`context`) and
    gives back after it (`release`)."""

    def __init__(
        self,
        engine: Engine,
        models: ServedModels,
        local: LocalQueue,
        quota: KeyQuota,
        solvers: SolverWorkers,
    ) -> None:
        self.engine = engine
        self.models = models
        self.local = local
        self.quota = quota
        self.solvers = solvers
        # Engine.engine_for loads a model on first use; two threads must not load it twice.
        self._load_lock = threading.Lock()

    def context(self, job: Job, prepared: Prepared) -> RunContext:
        """The prepared run's context with the job's hooks in (in the worker thread)."""
        ledger = prepared.ctx.ledger
        ledger.on_charge = job.on_charge
        job.ledger = ledger
        return replace(
            prepared.ctx, engine_for=partial(self._engine_for, job), on_token=job.on_token,
            solvers=self.solvers,
        )  # fmt: skip

    def _engine_for(self, job: Job, model_id: str) -> TextEngine:
        if job.cancel.is_set():
            raise GenerationCancelled()
        served = self.models.ids()
        if model_id not in served:
            raise UnknownNameError("model", model_id, served)
        with self._load_lock:
            inner = self.engine.engine_for(model_id)
        if inner.cost.local and not job.holds_local:
            self.local.enter(job.cancel, job.deadline, on_wait=job.on_queue)
            job.holds_local = True
        self.quota.refresh_budget(job)
        stop = job.spec.stop if job.token_channel == "content" else ()
        return ObservedEngine(inner, job, partial(self.quota.reserve, job), stop=stop)

    def release(self, job: Job) -> None:
        """When the run ends, however it ended: settle the key's hold, then give the local
        slot back (settled first, so the next request in the queue sees this one's real
        spending rather than its hold)."""
        try:
            self.quota.settle(job)
        finally:
            if job.holds_local:
                job.holds_local = False
                self.local.leave()


class ObservedEngine:
    """What a job's strategies call: the real engine, plus a cancel check and the key's hold
    before each call, the request's stop sequences where they apply, and a note of how the
    last call finished (for the response's finish_reason)."""

    def __init__(
        self,
        inner: TextEngine,
        job: Job,
        before_call: BeforeCall,
        stop: Sequence[str] = (),
    ) -> None:
        self._inner = inner
        self._job = job
        self._before_call = before_call
        self._stop = tuple(stop)

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def cost(self) -> ModelCost:
        return self._inner.cost

    @property
    def context_size(self) -> int:
        return self._inner.context_size

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self._inner.count_tokens(messages)

    def _start(self, messages: Sequence[Message], max_tokens: int, n: int) -> None:
        if self._job.cancel.is_set():
            raise GenerationCancelled()
        self._before_call(self.cost, self._inner.count_tokens(messages), max_tokens, n)
        self._job.on_call(self.model_id)

    def _stops(self, stop: Sequence[str] | None) -> list[str] | None:
        merged = [*(stop or ()), *self._stop]
        return merged or None

    def generate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        reuse_prefix: bool = True,
    ) -> list[Completion]:
        self._start(messages, max_tokens, n)
        out = self._inner.generate(
            messages, max_tokens=max_tokens, temperature=temperature, n=n,
            stop=self._stops(stop), seed=seed, logprobs=logprobs, **_prefix(reuse_prefix),
        )  # fmt: skip
        if out:
            self._job.last_finish = out[-1].finish_reason
        return out

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        reuse_prefix: bool = True,
    ) -> Generator[str, None, Completion]:
        self._start(messages, max_tokens, 1)
        completion = yield from self._inner.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=self._stops(stop),
            seed=seed, **_prefix(reuse_prefix),
        )  # fmt: skip
        self._job.last_finish = completion.finish_reason
        return completion

    def close(self) -> None:
        """The Engine owns the real engine and closes it; a job never does."""


def _prefix(reuse_prefix: bool) -> dict[str, bool]:
    """Pass `reuse_prefix` on only when it is not the default, as RunContext does."""
    return {} if reuse_prefix else {"reuse_prefix": False}
