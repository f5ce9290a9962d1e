"""Jobs from start to end: a job is started on the event loop, its work (`Runtime.prepare`, the
server's hooks, `execute`) runs in a worker thread, and whoever answers the request waits for
its events or its answer. Every job is counted in the metrics however it ends, and stopped
when the server shuts down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread

from apportion.engines.base import GenerationCancelled
from apportion.errors import ApportionError
from apportion.runtime import Runtime
from apportion.server import metrics as m
from apportion.server.auth import ApiKey
from apportion.server.errors import ApiError, error_payload, outcome_for
from apportion.server.hooks import RunHooks
from apportion.server.jobs import CHANNEL_FOR, Finished, Job, JobEvent, RunSpec
from apportion.server.quota import KeyQuota
from apportion.server.stops import StopFilter
from apportion.types import Answer

log = logging.getLogger("apportion.server")


class JobRunner:
    """Starts jobs, runs them in worker threads, and hands out their events and answers."""

    def __init__(
        self,
        engine: Runtime,
        hooks: RunHooks,
        quota: KeyQuota,
        metrics: m.ServerMetrics,
        limiter: anyio.CapacityLimiter,
        *,
        timeout_s: float,
    ) -> None:
        self.engine = engine
        self.hooks = hooks
        self.quota = quota
        self.metrics = metrics
        self.limiter = limiter
        self.timeout_s = timeout_s
        self.live: set[Job] = set()

    def start(self, spec: RunSpec, *, key: ApiKey | None, streaming: bool, job_id: str) -> Job:
        job = Job(
            spec=spec,
            loop=asyncio.get_running_loop(),
            streaming=streaming,
            deadline=time.monotonic() + self.timeout_s,
            key=key,
            id=job_id,
            holding=key is not None and self.quota.keys is not None,
        )
        self.live.add(job)
        job.task = asyncio.create_task(self._run(job))
        # the outcome is read by whoever waits; this only stops "never retrieved" warnings
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return job

    def _work(self, job: Job) -> Answer:
        """The worker thread: route, plan and execute; then give back what the hooks took."""
        spec = job.spec
        try:
            prepared = self.engine.prepare(spec.request, self.hooks.for_job(job))
            job.ledger = prepared.ctx.ledger
            steps = prepared.plan.steps
            if len(steps) == 1:
                stream = self.engine.registry.token_stream(steps[0].strategy)
                job.token_channel = CHANNEL_FOR[stream] if stream is not None else None
            if job.token_channel == "content" and spec.stop:
                job.content_filter = StopFilter(spec.stop)
            job.answer = self.engine.run(prepared)
            return job.answer
        finally:
            self.hooks.release(job)

    async def _run(self, job: Job) -> Answer:
        self.metrics.in_flight.inc()
        answer: Answer | None = None
        outcome = m.ERROR
        try:
            answer = await anyio.to_thread.run_sync(self._work, job, limiter=self.limiter)
            if answer.answer:
                outcome = m.OK
            else:
                outcome = m.BUDGET if answer.stopped_for_budget else m.NO_ANSWER
            return answer
        except GenerationCancelled:
            outcome = m.TIMEOUT if job.timed_out else m.CANCELLED
            raise
        except Exception as e:
            status, _, _ = error_payload(e)
            outcome = outcome_for(status)
            if not isinstance(e, ApiError | ApportionError):
                log.error("request %s failed", job.id, exc_info=e)
            raise
        finally:
            self.metrics.in_flight.dec()
            job.events.put_nowait(Finished())
            self.live.discard(job)
            if job.holding:  # the worker never ran (cancelled before it started)
                await anyio.to_thread.run_sync(self.quota.settle, job)
            self._account(job, answer, outcome)
            log.info(
                "request %s: %s, %s%s", job.id, outcome,
                answer.strategy if answer is not None else job.spec.request.strategy,
                f", user {job.spec.user!r}" if job.spec.user else "",
            )  # fmt: skip

    def _account(self, job: Job, answer: Answer | None, outcome: str) -> None:
        """Metrics, for every job however it ended: a cancelled or failed request still spent
        what its ledger holds (the key's spending was settled by the worker)."""
        totals = (answer.ledger if answer is not None else None) or (
            job.ledger.totals() if job.ledger is not None else None
        )
        strategy = answer.strategy if answer is not None else job.spec.request.strategy
        self.metrics.finished(
            strategy,
            outcome,
            seconds=time.monotonic() - job.started,
            prompt_tokens=totals.prompt_tokens if totals else 0,
            completion_tokens=totals.completion_tokens if totals else 0,
            flops=totals.flops if totals else 0.0,
            cost_usd=totals.cost_usd if totals else 0.0,
        )

    def _timeout(self, job: Job) -> ApiError:
        job.stop(timed_out=True)
        return ApiError(504, f"the request took longer than {self.timeout_s:g} s", type="timeout")

    async def next_event(self, job: Job, *, within: float | None = None) -> JobEvent | None:
        """The job's next event; None if `within` seconds pass first. Past the request's
        deadline, the job is stopped and this raises 504."""
        remaining = job.deadline - time.monotonic()
        wait = remaining if within is None else min(within, remaining)
        try:
            return await asyncio.wait_for(job.events.get(), timeout=max(wait, 0.0))
        except TimeoutError:
            if within is not None and within < remaining:
                return None
            raise self._timeout(job) from None

    async def result(self, job: Job) -> Answer:
        """The job's answer once it has ended (after its Finished event)."""
        assert job.task is not None
        answer = await asyncio.shield(job.task)
        self._check_budget_refusal(job, answer)
        return answer

    async def wait(self, job: Job, client_gone: Callable[[], Awaitable[bool]]) -> Answer:
        """A non-streamed request: the answer, watching for the deadline and the client
        going away meanwhile."""
        assert job.task is not None
        while not job.task.done():
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(job)
            await asyncio.wait({job.task}, timeout=min(0.25, remaining))
            if not job.task.done() and await client_gone():
                job.stop()
        return await self.result(job)

    def _check_budget_refusal(self, job: Job, answer: Answer) -> None:
        """Nothing answered because the budget refused the first call: 400, or 429 when it was
        the key's daily allowance that was too small."""
        if answer.answer or not answer.stopped_for_budget:
            return
        why = answer.error or "the budget refused the first call"
        if job.key is not None and (job.spec.key_capped or job.quota_others is not None):
            raise self.quota.quota_error(job.key, job.quota_others or 0, f" ({why})")
        raise ApiError(
            400,
            f"the budget is too small for any answer: {why}",
            code="budget_too_small",
            param="apportion.budget",
        )

    async def shutdown(self) -> None:
        """Stop every live job, and give them a few seconds to end."""
        for job in list(self.live):
            job.stop()
        tasks = [j.task for j in self.live if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
