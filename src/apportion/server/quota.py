"""API keys at request time: who is calling, and the holds that keep each key's daily budget
under concurrency (auth.py keeps them; see its docstring).

A request is admitted with an open hold (`admit`); before each of its model calls the job's
budget is lowered to what the key has left (`refresh_budget`) and its hold raised to what it
has spent plus the call's worst case (`reserve`, which refuses the call if that does not fit);
when the job ends the hold is settled to what it spent (`settle`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial

import anyio
import anyio.to_thread
from fastapi.security import HTTPAuthorizationCredentials

from apportion.errors import BudgetExceededError
from apportion.ledger import ModelCost, call_flops
from apportion.server.auth import (
    Allowance,
    ApiKey,
    KeyStore,
    Spend,
    seconds_until_utc_midnight,
)
from apportion.server.errors import ApiError
from apportion.server.jobs import Job, RunSpec

log = logging.getLogger("apportion.server")

# Retry-After for a key whose budget is held by its other requests in flight.
HELD_RETRY_S = 2


class KeyQuota:
    """The key store as requests use it; a no-op without one."""

    def __init__(
        self, keys: KeyStore | None, limiter: anyio.CapacityLimiter, *, ttl_s: float
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        # a hold outlives its request only if the server dies: then it expires on its own
        self.ttl_s = ttl_s

    async def enabled(self) -> bool:
        keys = self.keys
        return keys is not None and await anyio.to_thread.run_sync(
            keys.enabled, limiter=self.limiter
        )

    async def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> ApiKey | None:
        keys = self.keys
        if keys is None or not await anyio.to_thread.run_sync(keys.enabled, limiter=self.limiter):
            return None
        unauthorized = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "this server needs an API key: send `Authorization: Bearer KEY`",
                code="missing_api_key",
                headers=unauthorized,
            )
        key = await anyio.to_thread.run_sync(
            keys.authenticate, credentials.credentials, limiter=self.limiter
        )
        if key is None:
            raise ApiError(
                401, "the API key is not valid", code="invalid_api_key", headers=unauthorized
            )
        return key

    async def admit(self, spec: RunSpec, key: ApiKey | None, job_id: str) -> RunSpec:
        """Open the key's hold for this request, refusing a key with nothing left (spent, or
        held by its other requests in flight); the request's budget is capped at what is left,
        so one request cannot overdraw it."""
        if key is None or self.keys is None:
            return spec
        result = await anyio.to_thread.run_sync(
            partial(self.keys.open_hold, key, job_id, ttl_s=self.ttl_s),
            limiter=self.limiter,
        )
        if not result.granted:
            raise self.quota_error(key, result.others)
        b = spec.request.budget
        flops, usd, capped = b.max_flops, b.max_usd, False
        allowance = result.available
        if allowance.flops is not None and (flops is None or allowance.flops < flops):
            flops, capped = allowance.flops, True
        if allowance.usd is not None and (usd is None or allowance.usd < usd):
            usd, capped = allowance.usd, True
        request = replace(spec.request, budget=replace(b, max_flops=flops, max_usd=usd))
        return replace(spec, request=request, key_capped=capped)

    @staticmethod
    def quota_error(key: ApiKey, others: int, why: str = "") -> ApiError:
        if others:
            return ApiError(
                429,
                f"the API key {key.name!r} has {others} other request(s) in flight holding "
                f"what is left of its daily budget{why}; retry when they finish",
                type="insufficient_quota",
                code="daily_budget_held",
                headers={"Retry-After": str(HELD_RETRY_S)},
            )
        return ApiError(
            429,
            f"the API key {key.name!r} has spent its daily budget{why}; it resets at 00:00 UTC",
            type="insufficient_quota",
            code="daily_budget_exceeded",
            headers={"Retry-After": str(seconds_until_utc_midnight())},
        )

    def refresh_budget(self, job: Job) -> None:
        """Before a model call (worker thread): lower the job's budget to what its key has
        left beside the other requests in flight, so the ledger refuses a call the key cannot
        pay for with its usual error. (What the job has spent is not settled yet, so it is
        part of that: the job may spend `available` in all.)"""
        if job.key is None or self.keys is None or job.ledger is None:
            return
        available = self.keys.available(job.key, job.id)
        b = job.spec.request.budget
        flops, usd = b.max_flops, b.max_usd
        if available.flops is not None:
            flops = available.flops if flops is None else min(flops, available.flops)
        if available.usd is not None:
            usd = available.usd if usd is None else min(usd, available.usd)
        job.ledger.budget = replace(b, max_flops=flops, max_usd=usd)

    def reserve(
        self, job: Job, cost: ModelCost, prompt_tokens: int, max_tokens: int, n: int
    ) -> None:
        """Before a model call (worker thread): raise the job's hold to what it has spent plus
        the call's worst case, or refuse the call (a budget stop, 429 if nothing answered)."""
        if job.key is None or self.keys is None or job.ledger is None:
            return
        worst_flops = n * call_flops(cost, prompt_tokens, max_tokens)
        worst_usd = 0.0
        if job.key.daily_usd is not None:
            if cost.local:
                # billed by the second: the worst case is all the time the budget leaves
                left = job.ledger.seconds_left(cost)
                rate = job.ledger.hardware.usd_per_hour / 3600.0
                worst_usd = 0.0 if rate <= 0 else float("inf") if left is None else left * rate
            else:
                worst_usd = (
                    n
                    * (
                        prompt_tokens * cost.usd_per_m_prompt
                        + max_tokens * cost.usd_per_m_completion
                    )
                    / 1e6
                )
        spent = job.ledger.totals()
        held_usd = spent.cost_usd + worst_usd
        if cost.local and job.ledger.budget.max_usd is not None:
            # the time cut-off keeps the call within the budget: hold exactly that, not its
            # round trip through seconds (which can come out an ulp above it)
            held_usd = min(held_usd, job.ledger.budget.max_usd)
        result = self.keys.hold(
            job.key, job.id, flops=spent.flops + worst_flops, usd=held_usd, ttl_s=self.ttl_s
        )
        if not result.granted:
            job.quota_others = result.others
            raise BudgetExceededError(
                f"a {cost.model_id} call may need {worst_flops:.3g} FLOPs"
                + (f" and ${worst_usd:.6f}" if job.key.daily_usd is not None else "")
                + f"; the API key has {_left(result.available)} left today beside "
                f"{result.others} other request(s) in flight",
                "retry later",
            )

    def settle(self, job: Job) -> None:
        if not job.holding or job.key is None or self.keys is None:
            return
        job.holding = False
        totals = job.ledger.totals() if job.ledger is not None else None
        answer = job.answer
        if answer is not None:
            outcome = "ok" if answer.answer else ("budget" if answer.stopped_for_budget
                                                  else "no_answer")  # fmt: skip
        else:
            outcome = "cancelled" if job.cancel.is_set() else "error"
        models = [c.name for c in totals.calls if c.kind == "model"] if totals else []
        spend = Spend(
            route=answer.strategy if answer is not None else job.spec.request.strategy,
            model=models[-1] if models else job.spec.request.model,
            prompt_tokens=totals.prompt_tokens if totals else 0,
            completion_tokens=totals.completion_tokens if totals else 0,
            outcome=outcome,
        )
        try:
            self.keys.settle(
                job.key.id, job.id, flops=totals.flops if totals else 0.0,
                usd=totals.cost_usd if totals else 0.0, spend=spend,
            )  # fmt: skip
        except Exception:  # spending must not turn a served answer into an error
            log.exception("could not record spending for key %s", job.key.name)


def _left(allowance: Allowance) -> str:
    parts = []
    if allowance.flops is not None:
        parts.append(f"{max(allowance.flops, 0.0):.3g} FLOPs")
    if allowance.usd is not None:
        parts.append(f"${max(allowance.usd, 0.0):.6f}")
    return " and ".join(parts) or "no cap"
