"""The server's hooks into a job's run, all in one place: `RunHooks.for_job` gives the
runtime a job's `Hooks` (engines/layers.py wraps each engine call in them):

- `cancel`: the job's cancel flag (the client went away, or the request timed out);
- `on_token` and `on_charge`: what the job streams to its client (tokens, progress);
- `engine_for`: each engine the job calls, checked against the models this server serves and
  wrapped in an `ObservedEngine` (the local queue's slot at the first local call, the key's
  hold before each call, the request's stop sequences where they apply, and how the last
  call finished);
- `solvers`: the server's solver worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.engines.layers import Call, Layer, Pieces
from apportion.errors import UnknownNameError
from apportion.ledger import ModelCost
from apportion.runtime import Hooks, Runtime
from apportion.server.jobs import Job
from apportion.server.models import ServedModels
from apportion.server.queue import LocalQueue
from apportion.server.quota import KeyQuota
from apportion.tools.solver_worker import SolverWorkers
from apportion.types import Completion

# Called before each model call with (engine cost, prompt tokens, max tokens, n): reserves the
# call's worst case against the caller's key, or raises BudgetExceededError.
BeforeCall = Callable[[ModelCost, int, int, int], None]


class RunHooks:
    """The server's part in every job's run: what it adds before the run (`context`) and
    gives back after it (`release`)."""

    def __init__(
        self,
        engine: Runtime,
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

    def for_job(self, job: Job) -> Hooks:
        """The job's hooks into its run."""
        return Hooks(
            cancel=job.cancel, on_token=job.on_token, on_charge=job.on_charge,
            engine_for=partial(self._engine_for, job), solvers=self.solvers,
        )  # fmt: skip

    def _engine_for(self, job: Job, model_id: str) -> TextEngine:
        if job.cancel.is_set():
            raise GenerationCancelled()
        served = self.models.ids()
        if model_id not in served:
            raise UnknownNameError("model", model_id, served)
        # (the runtime builds each engine once, however many jobs ask at the same moment)
        inner = self.engine.engine_for(model_id, ledger=job.ledger)
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


class ObservedEngine(Layer):
    """What a job's strategies reach, below the runtime's layers: the engine, with the key's
    hold before each call, the request's stop sequences where they apply, and a note of how
    the last call finished (for the response's finish_reason)."""

    def __init__(
        self,
        inner: TextEngine,
        job: Job,
        before_call: BeforeCall,
        stop: Sequence[str] = (),
    ) -> None:
        super().__init__(inner)
        self._job = job
        self._before_call = before_call
        self._stop = tuple(stop)

    def _start(self, c: Call) -> None:
        self._before_call(self.cost, self.inner.count_tokens(c.messages), c.max_tokens, c.n)
        self._job.on_call(self.model_id)

    def _with_stops(self, c: Call) -> Call:
        merged = [*(c.stop or ()), *self._stop]
        return replace(c, stop=merged or None)

    def call(self, c: Call) -> list[Completion]:
        self._start(c)
        out = self._with_stops(c).generate_on(self.inner)
        if out:
            self._job.last_finish = out[-1].finish_reason
        return out

    def open(self, c: Call) -> Pieces:
        self._start(c)
        completion = yield from self._with_stops(c).stream_on(self.inner)
        self._job.last_finish = completion.finish_reason
        return completion
