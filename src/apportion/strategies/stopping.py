"""Stopping rules for sampling strategies: pure functions of the votes so far.

- `fixed`: never stop early (classic self-consistency, Wang et al. 2023).
- `esc`: Early-Stopping Self-Consistency (Li et al. 2024): sample in windows of w; stop as soon
  as one whole window agrees.
- `beta`: Adaptive-Consistency (Aggarwal et al. 2023): treat the leader's share among the top
  two answers as Beta(v1+1, v2+1); stop once P(share > 1/2) exceeds a confidence level.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb
from typing import Literal

StopRule = Literal["fixed", "esc", "beta"]
STOP_RULES: tuple[StopRule, ...] = ("fixed", "esc", "beta")


def tally(votes: Sequence[str | None]) -> Counter[str]:
    """Count the votes that produced an answer (None: the sample gave no readable answer)."""
    return Counter(v for v in votes if v is not None)


def leader(votes: Sequence[str | None]) -> tuple[str | None, float]:
    """The majority answer and its share of all samples (None votes count against it).

    Ties go to the answer that reached the tied count first, so the result is deterministic."""
    counts = tally(votes)
    if not counts:
        return None, 0.0
    first_seen = {v: i for i, v in reversed(list(enumerate(votes))) if v is not None}
    best = max(counts, key=lambda v: (counts[v], -first_seen[v]))
    return best, counts[best] / len(votes)


def beta_majority_probability(top: int, second: int) -> float:
    """P(p > 1/2) for p ~ Beta(top+1, second+1): how sure we are the leader stays the leader.

    For integer parameters, P(Beta(a, b) > 1/2) = P(Binomial(a+b-1, 1/2) <= a-1), which is an
    exact finite sum: no numerical integration and no SciPy."""
    if top < 0 or second < 0:
        raise ValueError("vote counts must be non-negative")
    a, b = top + 1, second + 1
    n = a + b - 1
    return float(sum(comb(n, k) for k in range(a))) / float(2**n)


def should_stop(
    votes: Sequence[str | None],
    *,
    rule: StopRule,
    max_samples: int,
    window: int = 2,
    confidence: float = 0.95,
) -> bool:
    """Whether to stop sampling after `votes`."""
    if len(votes) >= max_samples:
        return True
    if not votes or rule == "fixed":
        return False
    if rule == "esc":
        if len(votes) < window or len(votes) % window != 0:
            return False
        last = votes[-window:]
        return last[0] is not None and all(v == last[0] for v in last)
    if rule == "beta":
        counts = tally(votes).most_common(2)
        if not counts:
            return False
        top = counts[0][1]
        second = counts[1][1] if len(counts) > 1 else 0
        return beta_majority_probability(top, second) >= confidence
    raise ValueError(f"unknown stopping rule {rule!r}; valid: {', '.join(STOP_RULES)}")
