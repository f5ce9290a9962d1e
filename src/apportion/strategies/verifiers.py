"""Verifiers score candidate answers for best-of-N. One small protocol, two implementations.

- `logprob`: the model's own geometric-mean token probability, exp(mean log-probability), of
  each chain (generic; free, since it is recorded during sampling). Without log-probabilities
  (under a time cap, or from a server that gives none), the share of chains that agree.
- `agreement`: for math, run independent programs for the same problem and score each chain of
  thought by how many executed programs (weight 2) and other chains (weight 1) reach its answer.
  Executed code is a check the chain cannot talk its way past.

Scores lie in [0, 1], so the winner's score doubles as the strategy's confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from apportion.answers import vote_key
from apportion.strategies.base import RunContext
from apportion.strategies.program import Program
from apportion.types import Query

PROGRAM_WEIGHT = 2.0


@dataclass(frozen=True)
class Candidate:
    answer: str
    text: str
    mean_logprob: float | None


class Verifier(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_logprobs(self) -> bool: ...

    def score(self, query: Query, candidates: Sequence[Candidate], ctx: RunContext) -> list[float]:
        """One score in [0, 1] per candidate; higher is better."""
        ...


@dataclass(frozen=True)
class LogprobVerifier:
    name: str = "logprob"
    needs_logprobs: bool = True

    def score(self, query: Query, candidates: Sequence[Candidate], ctx: RunContext) -> list[float]:
        if any(c.mean_logprob is None for c in candidates):
            # No log-probabilities (a time cap streams calls, which carry none; some servers
            # give none): score each chain by the share of chains that reach its answer.
            keys = [vote_key(c.answer, query.kind) for c in candidates]
            return [keys.count(k) / len(keys) if k is not None else 0.0 for k in keys]
        return [math.exp(c.mean_logprob) for c in candidates if c.mean_logprob is not None]


@dataclass(frozen=True)
class AgreementVerifier:
    programs: int = 2
    temperature: float = 0.7
    model: str | None = None
    name: str = "agreement"
    needs_logprobs: bool = False

    def score(self, query: Query, candidates: Sequence[Candidate], ctx: RunContext) -> list[float]:
        program = Program(self.model, None, self.temperature)
        executed = []
        for i in range(self.programs):
            attempt = program.run(query, ctx, seed=ctx.seed + 101 + i)
            if attempt.ok:
                executed.append(vote_key(attempt.answer, query.kind))
        keys = [vote_key(c.answer, query.kind) for c in candidates]
        most = PROGRAM_WEIGHT * self.programs + len(candidates) - 1
        scores = []
        for i, key in enumerate(keys):
            if key is None:
                scores.append(0.0)
                continue
            by_programs = sum(k == key for k in executed)
            by_chains = sum(k == key for j, k in enumerate(keys) if j != i)
            scores.append((PROGRAM_WEIGHT * by_programs + by_chains) / most if most else 0.0)
        return scores


VERIFIERS = ("logprob", "agreement")


def make_verifier(name: str, *, model: str | None = None) -> Verifier:
    if name == "logprob":
        return LogprobVerifier()
    if name == "agreement":
        return AgreementVerifier(model=model)
    raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}")
