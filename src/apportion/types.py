"""Small value types that flow through a request: query → plan → attempts → answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from apportion.ledger import ModelCost

Role = Literal["system", "user", "assistant"]
AnswerKind = Literal["number", "text", "choice", "boolean"]
EnergySource = Literal["estimated", "measured"]
ChargeKind = Literal["model", "tool"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Completion:
    """One sampled continuation, as an engine returns it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | ...
    # Log-probability of each generated token, when the caller asked for it.
    token_logprobs: tuple[float, ...] | None = None
    # The engine that generated it, when not the one asked: a fallback that took the request
    # while that one was down. The ledger charges (and names) this one.
    served_by: ModelCost | None = None

    @property
    def mean_logprob(self) -> float | None:
        if not self.token_logprobs:
            return None
        return sum(self.token_logprobs) / len(self.token_logprobs)


@dataclass(frozen=True)
class Query:
    """What the caller asks. `kind` and `choices` are hints that bench items carry.

    `text` is the final user message; `history` holds the conversation before it (system, user
    and assistant turns, oldest first), which prompts carry between their own system message and
    `text`. Empty for a single question.
    """

    text: str
    kind: AnswerKind | None = None
    choices: tuple[str, ...] = ()
    history: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Budget:
    """Hard caps for one request; None means uncapped."""

    max_flops: float | None = None
    max_usd: float | None = None
    max_seconds: float | None = None


@dataclass(frozen=True)
class Charge:
    """One engine or tool call, as the ledger records it."""

    kind: ChargeKind
    name: str  # model id or tool name
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    energy_j: float = 0.0
    energy_source: EnergySource = "estimated"
    cost_usd: float = 0.0
    detail: str = ""  # e.g. which strategy step made the call

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "flops": self.flops,
            "wall_s": round(self.wall_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "energy_j": self.energy_j,
            "energy_source": self.energy_source,
            "cost_usd": self.cost_usd,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class LedgerTotals:
    prompt_tokens: int
    completion_tokens: int
    flops: float
    wall_s: float
    cpu_s: float
    energy_j: float
    cost_usd: float
    calls: tuple[Charge, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "flops": self.flops,
            "wall_s": round(self.wall_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "energy_j": self.energy_j,
            "cost_usd": self.cost_usd,
            "calls": [c.to_dict() for c in self.calls],
        }


@dataclass(frozen=True)
class Attempt:
    """What one strategy produced. `answer` is None when it failed; `error` then says why."""

    strategy: str
    answer: str | None
    confidence: float  # in [0, 1]
    candidates: tuple[str, ...] = ()
    rationale: str = ""  # the model's reasoning, program or solver expression behind the answer
    error: str | None = None
    citations: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.answer is not None and self.error is None


@dataclass(frozen=True)
class Answer:
    """What the caller gets back: the answer, the route taken and what it cost."""

    answer: str
    strategy: str
    intent: str | None
    confidence: float
    ledger: LedgerTotals
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    stopped_for_budget: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "strategy": self.strategy,
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "stopped_for_budget": self.stopped_for_budget,
            "error": self.error,
            "attempts": [
                {
                    "strategy": a.strategy,
                    "answer": a.answer,
                    "confidence": round(a.confidence, 4),
                    "error": a.error,
                    "candidates": list(a.candidates),
                    "citations": list(a.citations),
                }
                for a in self.attempts
            ],
            "ledger": self.ledger.to_dict(),
        }
