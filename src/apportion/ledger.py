"""The ledger and the cost model: the one place that turns a call into FLOPs, joules and dollars.

FLOPs of one model call (decoder-only transformer, forward pass only, Kaplan et al. 2020):

    flops = 2·N·T  +  2·L·d·Σ_{t=1..T} t   =   2·N·T  +  L·d·T·(T+1)

where N is the parameter count, T = prompt + completion tokens, L the number of layers and d the
attention width (n_heads·head_dim, = d_model for these models). The first term is the weight
matmuls (one multiply-add per parameter per token); the second is attention over the context,
where token t attends to t positions (QKᵀ and A·V, each L·d·t multiply-adds). Prompt tokens are
charged in full even when the engine reuses a cached prefix: the figure is the compute the
request implies, comparable across engines. Beside it each charge records the prompt tokens
the engine took from its cache (c) and the FLOPs they saved, 2·N·c + L·d·c·(c+1), so the
FLOPs computed are `flops - flops_cached`. Unknown L or d drop the attention term. A LoRA
expert served on the model adds its own parameters to N: 2·r·(d_in + d_out) FLOPs per adapted
matrix per token (`call_flops`).

Energy: measured from RAPL (`/sys/class/powercap/intel-rapl:*/energy_uj`) when readable,
otherwise estimated as the hardware profile's active watts × wall time for local models,
joules-per-FLOP × FLOPs for remote ones, and watts-per-core × CPU-seconds for tools.
Each charge says which (`energy_source`).

Money: local hardware costs its $/hour × wall time (the whole machine is busy generating); a tool
costs its share of one core, $/hour ÷ cores × CPU time; remote models cost $/1M tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apportion.config import HardwareProfile
from apportion.errors import BudgetExceededError
from apportion.types import Budget, Charge, Cost, LedgerTotals

# ModelCost lives with the other value types (a Completion names the model that served it);
# it is imported from here as much as from there.
from apportion.types import ModelCost as ModelCost


def call_flops(cost: ModelCost, prompt_tokens: int, completion_tokens: int) -> float:
    """FLOPs of one call of the model `cost` describes, its expert's adapter included."""
    return model_flops(
        cost.params + cost.adapter_params, prompt_tokens, completion_tokens, cost.n_layers,
        cost.d_model,
    )  # fmt: skip


def model_flops(
    params: float,
    prompt_tokens: int,
    completion_tokens: int,
    n_layers: int | None = None,
    d_model: int | None = None,
) -> float:
    """Forward-pass FLOPs of one call; see the module docstring for the formula."""
    if params < 0 or prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("params and token counts must be non-negative")
    tokens = prompt_tokens + completion_tokens
    dense = 2.0 * params * tokens
    attention = float(n_layers * d_model * tokens * (tokens + 1)) if n_layers and d_model else 0.0
    return dense + attention


class RaplMeter:
    """Reads the CPU package energy counter when the kernel exposes it (often root-only)."""

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self._files = sorted(root.glob("intel-rapl:[0-9]*/energy_uj")) if root.exists() else []
        self._files = [f for f in self._files if os.access(f, os.R_OK)]

    @property
    def available(self) -> bool:
        return bool(self._files)

    def read_j(self) -> float | None:
        if not self._files:
            return None
        try:
            return sum(int(f.read_text()) for f in self._files) / 1e6
        except (OSError, ValueError):
            return None


@dataclass
class Ledger:
    """Charges for one request. Every engine and tool call goes through `charge_*`."""

    hardware: HardwareProfile = field(default_factory=HardwareProfile)
    budget: Budget = field(default_factory=Budget)
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    charges: list[Charge] = field(default_factory=list)
    # Told of each charge as it is made (the server turns these into progress events).
    on_charge: Callable[[Ledger, Charge], None] | None = field(default=None, repr=False)
    # The most memory local models kept resident during the request (with a memory limit).
    peak_resident_bytes: int = 0

    def _record(self, charge: Charge) -> Charge:
        self.charges.append(charge)
        if self.on_charge is not None:
            self.on_charge(self, charge)
        return charge

    def charge_model(
        self,
        cost: ModelCost,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        wall_s: float,
        measured_energy_j: float | None = None,
        detail: str = "",
        replica: str | None = None,
        cached_tokens: int = 0,
    ) -> Charge:
        flops = call_flops(cost, prompt_tokens, completion_tokens)
        cached_tokens = min(max(cached_tokens, 0), prompt_tokens)
        # the cached prefix is the first c tokens: their weights and attention, as a call of c
        flops_cached = call_flops(cost, cached_tokens, 0) if cached_tokens else 0.0
        if cost.local:
            usd = self.hardware.usd_per_hour * wall_s / 3600.0
            estimated_j = self.hardware.active_watts * wall_s
        else:
            usd = (
                prompt_tokens * cost.usd_per_m_prompt
                + completion_tokens * cost.usd_per_m_completion
            ) / 1e6
            estimated_j = cost.joules_per_flop * flops
        measured = measured_energy_j is not None and measured_energy_j >= 0 and cost.local
        charge = Charge(
            kind="model",
            name=cost.model_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            flops=flops,
            wall_s=wall_s,
            energy_j=measured_energy_j if measured and measured_energy_j else estimated_j,
            energy_source="measured" if measured else "estimated",
            cost_usd=usd,
            cached_tokens=cached_tokens,
            flops_cached=flops_cached,
            detail=detail,
            replica=replica,
            expert=cost.expert,
        )
        return self._record(charge)

    def charge_tool(self, name: str, *, wall_s: float, cpu_s: float, detail: str = "") -> Charge:
        cpu_s = max(cpu_s, 0.0)
        charge = Charge(
            kind="tool",
            name=name,
            wall_s=wall_s,
            cpu_s=cpu_s,
            energy_j=self.hardware.watts_per_core * cpu_s,
            energy_source="estimated",
            cost_usd=self.hardware.usd_per_hour / max(self.cores, 1) * cpu_s / 3600.0,
            detail=detail,
        )
        return self._record(charge)

    def note_resident(self, resident_bytes: int) -> None:
        """The local models now resident: kept if it is the request's peak."""
        self.peak_resident_bytes = max(self.peak_resident_bytes, resident_bytes)

    def totals(self) -> LedgerTotals:
        return LedgerTotals(
            **Cost.total(self.charges).cost_fields(), calls=tuple(self.charges),
            peak_resident_bytes=self.peak_resident_bytes,
        )  # fmt: skip

    def check_model_call(self, cost: ModelCost, prompt_tokens: int, max_tokens: int) -> None:
        """Refuse a model call whose worst case (all max_tokens generated) would break a cap."""
        spent = self.totals()
        b = self.budget
        if b.max_flops is not None:
            worst = call_flops(cost, prompt_tokens, max_tokens)
            if spent.flops + worst > b.max_flops:
                raise BudgetExceededError(
                    f"a {cost.model_id} call of up to {prompt_tokens}+{max_tokens} tokens needs "
                    f"{worst:.3g} FLOPs; {max(b.max_flops - spent.flops, 0):.3g} remain",
                    "raise --budget-flops or lower --max-tokens",
                )
        if b.max_usd is not None and not cost.local:
            worst_usd = (
                prompt_tokens * cost.usd_per_m_prompt + max_tokens * cost.usd_per_m_completion
            ) / 1e6
            if spent.cost_usd + worst_usd > b.max_usd:
                raise BudgetExceededError(
                    f"a {cost.model_id} call may cost ${worst_usd:.6f}; "
                    f"${max(b.max_usd - spent.cost_usd, 0):.6f} remain",
                    "raise --budget-usd",
                )
        left = self.seconds_left(cost)
        if left is not None and left <= 0:
            what = "time" if b.max_seconds is not None and spent.wall_s >= b.max_seconds else "$"
            raise BudgetExceededError(
                f"the {what} budget is spent",
                "raise --budget-seconds" if what == "time" else "raise --budget-usd",
            )

    def seconds_left(self, cost: ModelCost | None = None) -> float | None:
        """How long a call may still run: the time cap, and for a local model the money cap
        turned into time at the hardware's $/hour (no `cost`: a tool call, the time cap only).
        None when neither applies. A local call's time (and so its cost) is unknown in advance,
        so the caller cuts generation off here, and tools get it as their timeout."""
        spent = self.totals()
        limits = []
        if self.budget.max_seconds is not None:
            limits.append(self.budget.max_seconds - spent.wall_s)
        local = cost is not None and cost.local
        if self.budget.max_usd is not None and local and self.hardware.usd_per_hour > 0:
            usd_left = self.budget.max_usd - spent.cost_usd
            limits.append(usd_left * 3600 / self.hardware.usd_per_hour)
        return max(min(limits), 0.0) if limits else None
