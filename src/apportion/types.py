"""Small value types that flow through a request: query → plan → attempts → answer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
AnswerKind = Literal["number", "text", "choice", "boolean"]
EnergySource = Literal["estimated", "measured"]
ChargeKind = Literal["model", "tool"]
# What the router classifies a query as (router/intent.py's classes).
Intent = Literal["arithmetic", "math_word", "factual", "logic", "code", "chat"]
INTENTS: tuple[Intent, ...] = ("arithmetic", "math_word", "factual", "logic", "code", "chat")


@dataclass(frozen=True)
class ModelCost:
    """What the cost model (apportion.ledger) needs to know about a model."""

    model_id: str
    params: float
    n_layers: int | None = None
    d_model: int | None = None
    local: bool = True
    usd_per_m_prompt: float = 0.0
    usd_per_m_completion: float = 0.0
    joules_per_flop: float = 2.5e-12
    # A LoRA expert served on the model (apportion.experts): its name, and its parameters,
    # r·(d_in + d_out) summed over the adapted matrices, which every token also goes through.
    expert: str | None = None
    adapter_params: float = 0.0


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
    # Of `prompt_tokens`, those the engine took from its KV cache (a prefix it had already
    # read) rather than computing them; 0 where it cannot tell.
    cached_tokens: int = 0
    # The engine that generated it, when not the one asked: a fallback that took the request
    # while that one was down. The ledger charges (and names) this one.
    served_by: ModelCost | None = None
    # The replica of a pool that served it (its URL), when a pool did (engines/pool.py).
    replica: str | None = None
    # What a reasoning model thought before `text`, where its server returns that apart
    # (`reasoning_content`) or marks it (<think>…</think>); its tokens are among
    # `completion_tokens`, as servers count them.
    reasoning: str = ""

    # The text of each token of `token_logprobs` (recorded with them), so that a strategy can
    # read the log-probabilities of one span of the reply, such as its final answer.
    token_texts: tuple[str, ...] | None = None

    @property
    def mean_logprob(self) -> float | None:
        if not self.token_logprobs:
            return None
        return sum(self.token_logprobs) / len(self.token_logprobs)

    def mean_logprob_from(self, find_start: Callable[[str], int | None]) -> float | None:
        """The mean log-probability of the tokens from where `find_start` says a span starts
        in the reply as the tokens spell it (the final answer after a chain of reasoning,
        without the reasoning); whitespace-only tokens are left out. None where the tokens are
        not known, or `find_start` finds no start, or nothing follows it."""
        if not self.token_logprobs or not self.token_texts:
            return None
        if len(self.token_texts) < len(self.token_logprobs):
            return None
        pieces = self.token_texts[: len(self.token_logprobs)]
        start = find_start("".join(pieces))
        if start is None:
            return None
        span, end = [], 0
        for logprob, piece in zip(self.token_logprobs, pieces, strict=True):
            end += len(piece)
            # a token counts if its text that is not whitespace reaches past the start
            if piece.strip() and end - len(piece) + len(piece.rstrip()) > start:
                span.append(logprob)
        return sum(span) / len(span) if span else None


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
    # The most memory the local models this request uses may keep resident together (bytes;
    # engines/memory.py): within the process's memory limit, a tighter one for this request.
    max_memory: int | None = None


@dataclass(frozen=True, kw_only=True)
class Cost:
    """What something spent: tokens, compute, time, energy and money. A call's charge, a
    request's totals and a bench item's result are each a Cost with more beside; `+` adds
    two (a plain Cost), and `Cost.total` adds many."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    energy_j: float = 0.0
    cost_usd: float = 0.0
    # Prompt tokens a model read from its KV cache instead of computing them (a prefix shared
    # with the call before), and the FLOPs that saved. `flops` counts every prompt token,
    # as if uncached, comparable across engines; `flops - flops_cached` is what was computed.
    cached_tokens: int = 0
    flops_cached: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(**{name: getattr(self, name) + getattr(other, name) for name in COST_FIELDS})

    @classmethod
    def total(cls, costs: Iterable[Cost]) -> Cost:
        """The sum, added in order (so floats round as a running sum does)."""
        out = Cost()
        for cost in costs:
            out += cost
        return out

    @property
    def flops_computed(self) -> float:
        """The FLOPs actually computed: `flops` less what a cached prompt prefix saved."""
        return self.flops - self.flops_cached

    def cost_fields(self) -> dict[str, Any]:
        """The cost fields by name, as they are."""
        return {name: getattr(self, name) for name in COST_FIELDS}

    def cost_json(self) -> dict[str, Any]:
        """The cost fields as ledgers show them: times rounded to the microsecond."""
        out = self.cost_fields()
        out["wall_s"] = round(self.wall_s, 6)
        out["cpu_s"] = round(self.cpu_s, 6)
        return out


COST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Cost))


@dataclass(frozen=True, kw_only=True)
class Charge(Cost):
    """One engine or tool call, as the ledger records it."""

    kind: ChargeKind
    name: str  # model id or tool name
    energy_source: EnergySource = "estimated"
    detail: str = ""  # e.g. which strategy step made the call
    # The replica of a pool that served the call (its URL); None for any other engine.
    replica: str | None = None
    # The LoRA expert the model served the call with; None: the base model alone.
    expert: str | None = None

    def to_dict(self) -> dict[str, object]:
        cost = self.cost_json()
        usd = cost.pop("cost_usd")  # energy_source goes before it, as it always has
        out: dict[str, object] = {
            "kind": self.kind,
            "name": self.name,
            **cost,
            "energy_source": self.energy_source,
            "cost_usd": usd,
            "detail": self.detail,
        }
        if self.replica is not None:
            out["replica"] = self.replica  # only where a pool served: other records unchanged
        if self.expert is not None:
            out["expert"] = self.expert  # likewise only where an expert served
        return out


@dataclass(frozen=True, kw_only=True)
class LedgerTotals(Cost):
    """What a request spent in all, and the calls that spent it."""

    calls: tuple[Charge, ...]
    # The most memory the process's local models kept resident during the request, when a
    # memory limit is set (engines/memory.py); 0 otherwise.
    peak_resident_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {**self.cost_json(), "calls": [c.to_dict() for c in self.calls]}
        if self.peak_resident_bytes:
            out["peak_resident_bytes"] = self.peak_resident_bytes
        return out


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
    # The strategy found nothing to answer from (rag: nothing relevant in the store) and says
    # so in `answer`: a valid reply, not an answer to the question.
    abstained: bool = False

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
    # The answer is the chosen attempt's abstention (see Attempt.abstained).
    abstained: bool = False
    # `confidence` mapped to the share of that strategy's answers that were right in the
    # traces the policy was calibrated on (its model); None where the plan had no such map.
    calibrated_confidence: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "strategy": self.strategy,
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "calibrated_confidence": (
                None if self.calibrated_confidence is None
                else round(self.calibrated_confidence, 4)
            ),
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
