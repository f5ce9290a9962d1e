"""Per-query success prediction (router v2, first part): for each strategy, the probability
that it answers this question right, read from the question itself, and the FLOPs it is
expected to spend; the policy then picks per question instead of per cell of the traces.

- Features: the intent classifier's hashed word and character n-grams and cues
  (router/intent.py, the one definition), folded into `DIM` buckets, and the intent
  probabilities; with an `Embedder` (the `embed` extra's MiniLM), the question's sentence
  embedding after them. Measured leave-one-dataset-out on the shipped traces
  (`benchmarks/router_lodo.py --embed`), the embedding does not help (see the README), so
  nothing is shipped with it.
- Model: one L2-regularised logistic regression per strategy, fitted on bench traces with
  NumPy alone (full-batch gradient descent on a convex loss, so the fit is deterministic);
  small enough to ship beside the intent classifier.
- Expected FLOPs: the strategy's mean over the training traces of the question's intent
  (over all of them where the intent has too few).

`PredictedPolicy` maximises predicted accuracy − λ · FLOPs / max FLOPs, like the calibrated
policy, and closes a plan whose step can decline with the strategy predicted best among those
that always answer. As in the cells (router/calibrate.py: exact_free_steps), a step that cost
nothing and was never wrong in the traces (the solver) goes first in every plan. The bar under
which a first step hands over is learned on the traces (`learn_bars`): a declining step's
among calibration's bars, and for one that always answers, whether an unsure answer goes on
to the closer predicted best after it (a ladder such as `direct@0.3>cot`).

`apportion calibrate --router predictor` writes one into a policy file (beside the cells,
which it also holds): `"router": "predictor"` makes `load_policy` (router/policy_file.py)
read it as this policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.errors import UsageError
from apportion.router.confidence import IsotonicMap
from apportion.router.features import Features
from apportion.router.intent import hashed_features
from apportion.router.policy import (
    Candidate,
    Plan,
    Step,
    check_version,
    read_confidence_maps,
    trade_off,
    with_calibration,
)
from apportion.tools.store.embed import Embedder
from apportion.traces import ItemResult
from apportion.types import INTENTS, Budget

DIM = 4096
# Intents with fewer training items than this take the overall mean FLOPs of a strategy.
MIN_INTENT_ITEMS = 10
# A declining first step (a solver, a program) ends the plan when it answers this surely.
DECLINER_BAR = 0.5
# The bar of an exact free step put first (the lowest of calibration's DEFAULT_BARS).
EXACT_BAR = 0.3
# The policy file's name for this router (its "router" field; the cells have none).
ROUTER = "predictor"


def vector(
    features: Features, embedding: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """The predictor's input for one question: folded hashed n-grams, then intent shares,
    then its sentence embedding where one is given."""
    x = np.zeros(DIM + len(INTENTS), dtype=np.float32)
    hashed = hashed_features(features.text, has_math_expression=features.has_math_expression)
    for index, value in hashed.items():
        x[index % DIM] += value
    shares = dict(features.intent_probabilities)
    for i, intent in enumerate(INTENTS):
        x[DIM + i] = shares.get(intent, 0.0)
    return x if embedding is None else np.concatenate([x, embedding.astype(np.float32)])


def _fit_logistic(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], l2: float, steps: int
) -> tuple[npt.NDArray[np.float32], float]:
    """Weights and bias of min mean log-loss + l2/2·|w|², by gradient descent with a step
    size from the loss's smoothness bound (deterministic: no sampling)."""
    n, d = x.shape
    w = np.zeros(d, dtype=np.float64)
    prior = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    b = float(np.log(prior / (1 - prior)))
    # the log-loss gradient is (‖X‖²/4n)-Lipschitz; rows are about unit length
    rate = 1.0 / (0.25 * float(np.max(np.sum(x * x, axis=1))) + l2)
    xd = x.astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xd @ w + b)))
        error = p - y
        w -= rate * (xd.T @ error / n + l2 * w)
        b -= rate * float(error.mean())
    return w.astype(np.float32), b


@dataclass(frozen=True)
class SuccessPredictor:
    """P(right) per strategy from the question, and expected FLOPs per strategy and intent."""

    strategies: tuple[str, ...]
    weights: npt.NDArray[np.float32]  # (DIM + intents) × strategies
    bias: npt.NDArray[np.float32]
    flops: dict[str, dict[str, float]]  # strategy → intent (or "*") → mean FLOPs
    closers: tuple[str, ...]  # the strategies that always answer
    # the sentence embedder whose vectors the weights were fitted with (not serialised)
    embedder: Embedder | None = None
    # free steps never wrong in the traces, put first in every plan (exact_free_steps)
    first: tuple[str, ...] = ()
    # per first step, the confidence under which the plan goes on to a closer, where the
    # traces favoured another than the default (`learn_bars`)
    bars: dict[str, float] = field(default_factory=dict)

    def predict(self, features: Features) -> dict[str, float]:
        embedding = None if self.embedder is None else self.embedder.embed([features.text])[0]
        logits = vector(features, embedding) @ self.weights + self.bias
        p = 1.0 / (1.0 + np.exp(-logits))
        return {s: float(v) for s, v in zip(self.strategies, p, strict=True)}

    def expected_flops(self, strategy: str, intent: str) -> float:
        by_intent = self.flops[strategy]
        return by_intent.get(intent, by_intent["*"])

    def to_dict(self) -> dict[str, Any]:
        # six significant digits: the file stays a few hundred KiB, the choices do not move
        return {
            "strategies": list(self.strategies), "closers": list(self.closers),
            "weights": [[float(f"{v:.6g}") for v in row] for row in self.weights.tolist()],
            "bias": [float(f"{v:.6g}") for v in self.bias.tolist()], "flops": self.flops,
            "first": list(self.first), "bars": self.bars,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuccessPredictor:
        return cls(
            tuple(data["strategies"]), np.asarray(data["weights"], dtype=np.float32),
            np.asarray(data["bias"], dtype=np.float32),
            {s: dict(v) for s, v in data["flops"].items()}, tuple(data["closers"]),
            first=tuple(data.get("first", ())),
            bars={k: float(v) for k, v in data.get("bars", {}).items()},
        )  # fmt: skip


def fit_predictor(
    examples: Sequence[tuple[Features, dict[str, tuple[bool, float]]]],
    strategies: Sequence[str],
    *,
    closes: Callable[[str], bool],
    l2: float = 1e-3,
    steps: int = 300,
    embedder: Embedder | None = None,
    first: Sequence[str] = (),
) -> SuccessPredictor:
    """Fit on traced questions: each its features and, per strategy, (right, FLOPs); with
    `embedder`, each question's sentence embedding is a feature too."""
    embeddings: Sequence[npt.NDArray[np.float32] | None] = (
        [None] * len(examples) if embedder is None
        else list(embedder.embed([f.text for f, _ in examples]))
    )  # fmt: skip
    x = np.stack([vector(f, e) for (f, _), e in zip(examples, embeddings, strict=True)])
    columns, biases = [], []
    for s in strategies:
        y = np.array([outcomes[s][0] for _, outcomes in examples], dtype=np.float32)
        w, b = _fit_logistic(x, y, l2, steps)
        columns.append(w)
        biases.append(b)
    flops: dict[str, dict[str, float]] = {}
    for s in strategies:
        spent: dict[str, list[float]] = {}
        for f, outcomes in examples:
            spent.setdefault(f.intent, []).append(outcomes[s][1])
            spent.setdefault("*", []).append(outcomes[s][1])
        flops[s] = {k: float(np.mean(v)) for k, v in spent.items()
                    if k == "*" or len(v) >= MIN_INTENT_ITEMS}  # fmt: skip
    return SuccessPredictor(
        tuple(strategies), np.stack(columns, axis=1), np.asarray(biases, dtype=np.float32),
        flops, tuple(s for s in strategies if closes(s)), embedder, tuple(first),
    )  # fmt: skip


@dataclass(frozen=True)
class PredictedPolicy:
    """Per question: the strategy of highest predicted accuracy − λ·FLOPs/max FLOPs; one that
    can decline is followed by the closer predicted best (see the module docstring)."""

    predictor: SuccessPredictor
    lam: float
    max_flops: float
    source: dict[str, Any] = field(default_factory=dict)
    # strategy spec → raw confidence → share right in the traces (as CalibratedPolicy's)
    confidence_maps: dict[str, IsotonicMap] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "policy") -> PredictedPolicy:
        """Read the predictor of a policy file that `calibrate --router predictor` wrote."""
        check_version(data, where)
        try:
            return cls(
                SuccessPredictor.from_dict(data["predictor"]),
                lam=float(data["lambda"]),
                max_flops=float(data["predictor_max_flops"]),
                source=dict(data.get("source", {})),
                confidence_maps=read_confidence_maps(data),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{where} is not a predictor policy file: {e!r}") from e

    def to_dict(self) -> dict[str, Any]:
        """What a policy file holds of this router, beside the cells (see `from_dict`)."""
        return {
            "router": ROUTER,
            "predictor": self.predictor.to_dict(),
            "predictor_max_flops": float(f"{self.max_flops:.6g}"),
        }

    def step_specs(self) -> frozenset[str]:
        return frozenset(self.predictor.strategies)

    def plan(
        self, features: Features, budget: Budget, *, unavailable: frozenset[str] = frozenset()
    ) -> Plan:
        return with_calibration(self._plan(features, budget, unavailable), self.confidence_maps)

    def _plan(self, features: Features, budget: Budget, unavailable: frozenset[str]) -> Plan:
        return self.plan_from(self.predictor.predict(features), features, budget, unavailable)

    def plan_from(
        self,
        p: dict[str, float],
        features: Features,
        budget: Budget,
        unavailable: frozenset[str] = frozenset(),
    ) -> Plan:
        """The plan for a question whose predicted accuracies `p` are already known."""
        usable = [s for s in self.predictor.strategies if s not in unavailable]
        candidates = [
            Candidate((Step(s, 0.0),), p[s], self.predictor.expected_flops(s, features.intent),
                      0.0, 0.0)
            for s in usable
        ]  # fmt: skip
        if budget.max_flops is not None:
            fits = [c for c in candidates if c.flops <= budget.max_flops]
            candidates = fits or [min(candidates, key=lambda c: c.flops)]
        scored = [(c, trade_off(c, self.lam, self.max_flops)) for c in candidates]
        best, _ = max(scored, key=lambda cs: (cs[1], -cs[0].flops))
        chosen = best.steps[0].strategy
        steps: tuple[Step, ...] = (Step(chosen, 0.0),)
        closers = [s for s in self.predictor.closers if s in usable]
        bar = self.predictor.bars.get(chosen)
        if chosen not in self.predictor.closers and closers:
            closer = max(closers, key=lambda s: p[s])
            steps = (Step(chosen, DECLINER_BAR if bar is None else bar), Step(closer, 0.0))
        elif bar and len(closers) > 1:
            # a closer unsure of its answer hands over to the closer predicted best after it
            closer = max((s for s in closers if s != chosen), key=lambda s: p[s])
            steps = (Step(chosen, bar), Step(closer, 0.0))
        exact = tuple(Step(s, EXACT_BAR) for s in self.predictor.first
                      if s in usable and s != chosen)  # fmt: skip
        steps = exact + steps
        ranked = ", ".join(f"{s} {p[s]:.0%}" for s in sorted(p, key=lambda s: -p[s]))
        return Plan(
            steps,
            f"predicted for this question: {ranked}; max accuracy − {self.lam:g}·FLOPs/"
            f"{self.max_flops:.3g}",
            expected={"accuracy": best.accuracy, "flops": best.flops},
            alternatives=tuple(scored),
        )


def fit_predicted_policy(
    results: Sequence[ItemResult],
    lam: float,
    *,
    embedder: Embedder | None = None,
    confidence_maps: dict[str, IsotonicMap] | None = None,
) -> PredictedPolicy:
    """The per-query policy fitted on traced questions: a predictor over the strategies run
    on them all (as calibration takes them), the solver first where it was never wrong."""
    # imported here: routing at run time (router/policy_file.py) loads this module, and
    # calibration's imports (experts, the strategy registry) are not routing's
    from apportion.router.calibrate import exact_free_steps, traced_items
    from apportion.strategies.registry import default_registry

    items, strategies = traced_items(results)
    if not items:
        raise UsageError("no traced question to fit the predictor on")
    examples = [
        (features, {s: (outcomes[s].correct, outcomes[s].flops) for s in strategies})
        for features, outcomes in items
    ]
    predictor = fit_predictor(
        examples, strategies, closes=default_registry().always_answers, embedder=embedder,
        first=exact_free_steps([outcomes for _, outcomes in items], strategies),
    )  # fmt: skip
    max_flops = max(predictor.expected_flops(s, "*") for s in strategies) or 1.0
    policy = PredictedPolicy(predictor, lam, max_flops, confidence_maps=confidence_maps or {})
    bars = learn_bars(policy, [outcomes for _, outcomes in items], [f for f, _ in items])
    return replace(policy, predictor=replace(predictor, bars=bars))


# Fewest traced questions a first step must lead on before its bar is learned.
MIN_BAR_ITEMS = 20


def learn_bars(
    policy: PredictedPolicy,
    outcomes: Sequence[dict[str, ItemResult]],
    features: Sequence[Features],
) -> dict[str, float]:
    """Per strategy the policy puts first, the escalation bar that maximises accuracy −
    λ·FLOPs/max FLOPs over the traced questions it leads on, replayed behind the plan's exact
    free steps (a question the solver answers never reaches the bar): for a step that can
    decline, among calibration's bars (DECLINER_BAR by default); for one that always answers,
    whether to hand an unsure answer to the closer predicted best after it, and under which
    confidence (by default it does not). Kept only where the traces favour another bar than
    the default (ties keep it)."""
    from apportion.router.calibrate import DEFAULT_BARS, replay

    closers = set(policy.predictor.closers)
    # per lead step: each question's exact free steps in front, the step after, its traces
    led: dict[str, list[tuple[tuple[Step, ...], str, dict[str, ItemResult]]]] = {}
    for feats, traced in zip(features, outcomes, strict=True):
        p = policy.predictor.predict(feats)
        planned = policy.plan_from(p, feats, Budget()).steps
        first = policy.predictor.first
        exact = tuple(s for s in planned if s.stop_at == EXACT_BAR and s.strategy in first)
        steps = [s for s in planned if s not in exact]
        lead = steps[0].strategy
        if len(steps) > 1:
            then = steps[1].strategy
        else:
            others = [c for c in closers if c != lead]
            if not others:
                continue
            then = max(others, key=lambda c: p[c])
        led.setdefault(lead, []).append((exact, then, traced))
    bars: dict[str, float] = {}
    for lead, group in led.items():
        if len(group) < MIN_BAR_ITEMS:
            continue
        default = 0.0 if lead in closers else DECLINER_BAR
        options = [default, *(b for b in DEFAULT_BARS if b != default)]

        def score(bar: float, lead: str = lead, group: list[Any] = group) -> float:
            right = flops = 0.0
            for exact, then, traced in group:
                # replayed behind the exact steps, as the plan runs: a question the solver
                # answers never reaches the bar
                ladder = exact + (
                    (Step(lead, bar), Step(then, 0.0)) if bar > 0 else (Step(lead, 0.0),)
                )
                won, ran = replay(ladder, traced)
                right += won
                flops += sum(r.flops for r in ran)
            return (right - policy.lam * flops / policy.max_flops) / len(group)

        best = max(options, key=score)  # the first best: the default on a tie
        if best != default:
            bars[lead] = best
    return bars
