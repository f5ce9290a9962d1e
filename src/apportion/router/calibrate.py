"""Calibration: from bench traces of fixed strategies to a policy.json.

For every item the traces hold each fixed strategy's outcome (answered, confidence, correct)
and cost. A ladder ``a@t > b`` is replayed exactly as the executor would run it (router/policy:
`stops_here`, `fallback_choice`): a's answer when it is confident enough, else b's, the costs
added. So every candidate plan gets a measured accuracy and cost per cell without running
anything.

Cells are (intent, difficulty): the intent from the shipped classifier applied to the traced
question, the difficulty from `difficulty_score`, split at the intent's median when the intent
has at least ``2 · min_cell`` items (else one cell, ``intent/*``). One more cell, ``*/*``,
pools every item: it plans for a query whose intent the traces hold no question of, which
held-out sets bring (a policy calibrated without arithmetic questions would otherwise fall
back to the uncalibrated rule ladders). Each cell keeps its Pareto-optimal plans (accuracy
against mean FLOPs); the policy chooses among them at run time.

Deterministic: items, strategies and candidates are visited in sorted order, ties broken by
name, and numbers rounded before they are written, so the same traces give the same file.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

from apportion.errors import UsageError
from apportion.experts.book import ExpertBook
from apportion.router.confidence import fit_confidence_maps
from apportion.router.features import Features, extract_features
from apportion.router.policy import (
    ANY,
    DEFAULT_LAMBDA,
    EASY,
    HARD,
    POLICY_VERSION,
    POOLED_INTENT,
    Candidate,
    Policy,
    Step,
    difficulty_score,
    fallback_choice,
    plan_spec,
    stops_here,
    trade_off,
)
from apportion.strategies.registry import default_registry, models_of, parse_spec
from apportion.traces import ItemResult, is_adaptive, oracle, question_key
from apportion.types import Budget, Cost

__all__ = [
    "DEFAULT_BARS",
    "DEFAULT_LAMBDA",
    "Evaluation",
    "calibrate",
    "evaluate",
    "exact_free_steps",
    "in_training_share",
    "partly_traced",
    "seen_by_experts",
]

DEFAULT_BARS = (0.3, 0.5, 0.7, 0.9)
# Least share of a cell's questions a plan must answer to be chosen there (see calibrate).
MIN_ANSWERED = 0.9
# Least share of the traced items a strategy must have been run on for calibration to use it.
MIN_COVERAGE = 0.9
# Least answers a free step must have given, all right, to be put first in every plan.
MIN_EXACT_ANSWERS = 10


@dataclass(frozen=True)
class _Item:
    features: Features
    outcomes: dict[str, ItemResult]  # strategy -> its result on this item

    @property
    def intent(self) -> str:
        return self.features.intent

    @property
    def score(self) -> float:
        return difficulty_score(self.features)


def _run_ladder(
    steps: Sequence[Step], outcomes: dict[str, ItemResult]
) -> tuple[ItemResult | None, list[ItemResult]]:
    """(the attempt the ladder answers with, or None; the results of the steps that ran)."""
    ran: list[ItemResult] = []
    for step in steps:
        r = outcomes[step.strategy]
        ran.append(r)
        if stops_here(r.ok, r.confidence, step):
            return r, ran
    best = fallback_choice([(r.ok, r.confidence) for r in ran])
    return (None if best is None else ran[best]), ran


def replay(steps: Sequence[Step], outcomes: dict[str, ItemResult]) -> tuple[bool, list[ItemResult]]:
    """(correct, results of the steps that ran): the ladder on one traced item."""
    final, ran = _run_ladder(steps, outcomes)
    return final is not None and final.correct, ran


def _answers(final: ItemResult | None) -> bool:
    """Whether a ladder ended with an answer: not a decline (no answer, an error) and not
    an abstention (rag's "not found in the documents")."""
    return final is not None and final.ok and not final.abstained


def _measure(steps: tuple[Step, ...], items: Sequence[_Item]) -> tuple[Candidate, float]:
    """The plan replayed over `items`: its accuracy and mean costs, and the share of the
    items it answered."""
    correct = answered = 0.0
    spent = Cost()
    for item in items:
        final, ran = _run_ladder(steps, item.outcomes)
        correct += final is not None and final.correct
        answered += _answers(final)
        spent += Cost.total(ran)
    n = len(items)
    return Candidate(
        steps, correct / n, spent.flops / n, spent.wall_s / n, spent.cost_usd / n
    ), answered / n


def _candidates(
    strategies: Sequence[str], bars: Sequence[float], closes: Callable[[str], bool]
) -> list[tuple[Step, ...]]:
    """Single strategies and two-step ladders, each ending with a strategy that `closes` a
    plan (always answers): a plan whose last step can decline answers nothing on a question
    unlike its cell's traces, however well it did on them (`symbolic` alone, declining
    ``6x + 72 = 174``)."""
    closers = [s for s in strategies if closes(s)]
    if not closers:
        raise UsageError(
            f"none of the traced strategies ({', '.join(strategies)}) always answers, so no "
            "plan could be sure to end in one",
            "bench direct or cot as well, e.g. --strategies direct,cot,program,symbolic",
        )
    plans: list[tuple[Step, ...]] = [(Step(s, 0.0),) for s in closers]
    for a, b in permutations(strategies, 2):
        if b in closers:
            plans += [(Step(a, bar), Step(b, 0.0)) for bar in bars]
    return plans


def _pareto(measured: list[Candidate], n: int) -> list[Candidate]:
    """Plans no other plan beats on both accuracy and FLOPs, cheapest first. A dearer plan
    must be right on at least two more of the cell's `n` questions than the cheaper one before
    it: one question is noise, and would let a plan win a cell by luck."""
    # Ties go to the shorter ladder, then the quicker one: a step that adds no FLOPs (a tool,
    # or rag abstaining) still costs time.
    ordered = sorted(
        measured, key=lambda m: (m.flops, -m.accuracy, len(m.steps), m.wall_s, plan_spec(m.steps))
    )
    front: list[Candidate] = []
    for m in ordered:
        if not front or m.accuracy > front[-1].accuracy + 1.5 / n:
            front.append(m)
    return front


_OWN, _LARGE = "\0own", "\0large"


def on_own_model(spec: str) -> bool:
    """Whether a strategy spec runs only on the request's own model: no expert, no other
    model, no cascade to a larger one; what can run wherever the base model can."""
    return models_of(spec, model=_OWN, small=_OWN, large=_LARGE) == [_OWN]


def _front(measured: list[Candidate], n: int) -> list[Candidate]:
    """The Pareto set (`_pareto`), with that of the plans on the request's own model beside it:
    a plan needing an expert or another model is skipped where that one is not here, and what
    is left must still hold the best plan without it, which the whole set may have pruned as
    dominated."""
    front = _pareto(measured, n)
    own = [m for m in measured if all(on_own_model(s.strategy) for s in m.steps)]
    if len(own) == len(measured):
        return front
    specs = {plan_spec(m.steps) for m in front}
    extra = [m for m in _pareto(own, n) if plan_spec(m.steps) not in specs]
    return sorted([*front, *extra], key=lambda m: (m.flops, -m.accuracy, plan_spec(m.steps)))


def exact_free_steps(
    items: Sequence[Mapping[str, ItemResult]], strategies: Sequence[str]
) -> list[str]:
    """Strategies that spent no FLOPs on any traced item and were right every time they
    answered (at least MIN_EXACT_ANSWERS times): solvers. Such a step costs nothing where it
    declines and is right where it answers, so it goes first in every plan of every cell, also
    where the cell's own questions never needed it: its value shows on question shapes a cell
    has not seen (held out one dataset at a time, a policy without it answered the boolean
    formulas of a set it never saw directly, 56% against the solver's 100%)."""
    found = []
    for s in strategies:
        rows = [outcomes[s] for outcomes in items]
        answered = [r for r in rows if r.ok and not r.abstained]
        if (all(r.flops == 0 for r in rows) and len(answered) >= MIN_EXACT_ANSWERS
                and all(r.correct for r in answered)):  # fmt: skip
            found.append(s)
    return found


def _exact_first(
    front: list[Candidate], exact: Sequence[str], bar: float, members: Sequence[_Item]
) -> list[Candidate]:
    """Each plan of `front` with the exact free steps put before it (see exact_free_steps)."""
    if not exact:
        return front
    out = []
    for m in front:
        first = tuple(Step(s, bar) for s in exact if s not in m.specs())
        out.append(_measure(first + m.steps, members)[0] if first else m)
    return out


def seen_by_experts(
    results: Iterable[ItemResult],
    book: ExpertBook,
    *,
    questions_of: Callable[[str], Mapping[str, str]] | None = None,
) -> set[tuple[str, str]]:
    """(dataset, item id) of every item that an expert named in the traces' strategies
    (`program:expert=pal-math`) was trained on, from its manifest's `data.sources`: replayed,
    such an item would credit the expert with what it memorised, so calibration and its
    evaluations leave it out. Datasets repeat each other's questions under other ids (mawps
    holds multiarith's), so given `questions_of(dataset)`, a dataset's questions by item id
    (bench.datasets.questions_by_id: the callers read the shared data, routing does not), a
    traced item whose question is a source's is left out too; without it, ids alone."""
    results = list(results)
    names = {dict(parse_spec(s).params).get("expert") for s in {r.strategy for r in results}}
    sources: set[tuple[str, str]] = set()
    for name in sorted(n for n in names if n):
        for source in book.find(name).manifest.data.sources:
            dataset, _, item_id = source.partition("/")
            sources.add((dataset, item_id))
    if not sources or questions_of is None:
        return sources
    learned: set[str] = set()
    for dataset in sorted({d for d, _ in sources}):
        by_id = questions_of(dataset)
        learned |= {question_key(by_id[i]) for d, i in sources if d == dataset and i in by_id}
    return sources | {(r.dataset, r.item_id) for r in results
                      if r.question and question_key(r.question) in learned}  # fmt: skip


def in_training_share(dataset: str, item_id: str, share: float) -> bool:
    """Whether an item is among the `share` of items calibration may learn from: a stable
    hash of its id, so the held-out rest is the same on every run and machine."""
    return zlib.crc32(f"{dataset}|{item_id}".encode()) % 10_000 < share * 10_000


def _grouped(
    results: Iterable[ItemResult], keep: Callable[[str, str], bool] | None = None
) -> tuple[dict[tuple[str, str], dict[str, ItemResult]], dict[tuple[str, str], str]]:
    """The fixed strategies' results per item (that `keep` admits), and each item's question."""
    grouped: dict[tuple[str, str], dict[str, ItemResult]] = {}
    questions: dict[tuple[str, str], str] = {}
    for r in results:
        if is_adaptive(r.strategy):
            continue  # calibrate from fixed strategies only; auto is what is being built
        if keep is not None and not keep(r.dataset, r.item_id):
            continue
        grouped.setdefault((r.dataset, r.item_id), {})[r.strategy] = r
        if r.question:
            questions[(r.dataset, r.item_id)] = r.question
    return grouped, questions


def _items(
    results: Iterable[ItemResult], keep: Callable[[str, str], bool] | None = None
) -> tuple[list[_Item], list[str]]:
    grouped, questions = _grouped(results, keep)
    if not grouped:
        raise UsageError("the runs hold no results of fixed strategies (in this share)")
    missing = [key for key in grouped if key not in questions]
    if missing:
        raise UsageError(
            f"{len(missing)} traced items carry no question (e.g. {missing[0][0]}/{missing[0][1]})",
            "re-run them with this version of `apportion bench` (--resume replays from cache)",
        )
    counts = _coverage(grouped)
    # Strategies run on (nearly) every item; items lacking one of them are left out.
    strategies = sorted(s for s, c in counts.items() if c >= MIN_COVERAGE * len(grouped))
    items = []
    for key in sorted(grouped):
        outcomes = grouped[key]
        if all(s in outcomes for s in strategies):
            items.append(_Item(extract_features(questions[key]), outcomes))
    return items, strategies


def _coverage(grouped: Mapping[tuple[str, str], Mapping[str, ItemResult]]) -> dict[str, int]:
    """How many of the traced items each strategy was run on."""
    counts: dict[str, int] = {}
    for outcomes in grouped.values():
        for s in outcomes:
            counts[s] = counts.get(s, 0) + 1
    return counts


def partly_traced(results: Iterable[ItemResult]) -> dict[str, float]:
    """The fixed strategies traced on too few of the items for calibration to use them
    (under MIN_COVERAGE), each with the share it covers."""
    grouped, _ = _grouped(results)
    counts = _coverage(grouped)
    return {s: c / len(grouped) for s, c in counts.items() if c < MIN_COVERAGE * len(grouped)}


def traced_items(
    results: Iterable[ItemResult], keep: Callable[[str, str], bool] | None = None
) -> tuple[list[tuple[Features, dict[str, ItemResult]]], list[str]]:
    """The traced questions (each its features and its result per strategy) that `keep`
    admits, and the strategies run on them all: what a per-query predictor is fitted on."""
    items, strategies = _items(results, keep)
    return [(i.features, i.outcomes) for i in items], strategies


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def _candidate_json(m: Candidate) -> dict[str, Any]:
    return {
        "plan": m.spec,
        "accuracy": _r(m.accuracy),
        "flops": _r(m.flops),
        "wall_s": _r(m.wall_s),
        "cost_usd": _r(m.cost_usd),
    }


def calibrate(
    results: Iterable[ItemResult],
    *,
    lam: float = DEFAULT_LAMBDA,
    bars: Sequence[float] = DEFAULT_BARS,
    min_cell: int = 20,
    train_share: float = 1.0,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The policy, as the JSON-ready dict that `CalibratedPolicy.from_dict` reads."""
    if lam < 0:
        raise UsageError(f"lambda must be at least 0, got {lam}")
    if not 0 < train_share <= 1:
        raise UsageError(f"the training share is in (0, 1], got {train_share}")
    items, strategies = _items(
        results, None if train_share == 1 else lambda d, i: in_training_share(d, i, train_share)
    )
    singles = [_measure((Step(s, 0.0),), items)[0] for s in strategies]
    max_flops = max(m.flops for m in singles) or 1.0
    registry = default_registry()
    plans = _candidates(strategies, bars, registry.always_answers)
    exact = exact_free_steps([item.outcomes for item in items], strategies)
    by_intent: dict[str, list[_Item]] = {}
    for item in items:
        by_intent.setdefault(item.intent, []).append(item)
    thresholds: dict[str, float] = {}
    cells: dict[str, Any] = {}
    # POOLED first: every item, for queries of an intent that no cell covers.
    for intent in [POOLED_INTENT, *sorted(by_intent)]:
        group = items if intent == POOLED_INTENT else by_intent[intent]
        parts: dict[str, list[_Item]] = {ANY: group}
        if intent != POOLED_INTENT and len(group) >= 2 * min_cell:
            threshold = statistics.median(i.score for i in group)
            easy = [i for i in group if i.score <= threshold]
            hard = [i for i in group if i.score > threshold]
            if len(easy) >= min_cell and len(hard) >= min_cell:
                thresholds[intent] = _r(threshold)
                parts = {EASY: easy, HARD: hard}
        for difficulty, members in parts.items():
            # Only plans that answer nearly every question of the cell compete: otherwise a
            # plan that declines for free (symbolic on a word problem, rag on one its store
            # cannot know) wins whenever λ prices compute above the accuracy it forgoes.
            measured = [_measure(p, members) for p in plans]
            answering = [m for m, share in measured if share >= MIN_ANSWERED]
            front = _front(answering or [m for m, _ in measured], len(members))
            if exact:  # prefixed, plans may tie: the front again
                front = _front(_exact_first(front, exact, min(bars), members), len(members))
            # what CalibratedPolicy.plan picks when every plan can run
            chosen = max(front, key=lambda m: (trade_off(m, lam, max_flops), -m.flops))
            cells[f"{intent}/{difficulty}"] = {
                "n": len(members),
                "chosen": plan_spec(chosen.steps),
                "candidates": [_candidate_json(m) for m in front],
            }
    return {
        "version": POLICY_VERSION,
        "lambda": lam,
        "max_flops": _r(max_flops),
        "strategies": strategies,
        "bars": list(bars),
        "min_cell": min_cell,
        "train_share": train_share,
        "n_items": len(items),
        "thresholds": thresholds,
        "fixed": {
            plan_spec(m.steps): {"accuracy": _r(m.accuracy), "flops": _r(m.flops)} for m in singles
        },
        "cells": cells,
        # what `ask` reports beside an answer's raw confidence: the share right in these traces
        "confidence_maps": {
            s: m.to_dict()
            for s, m in fit_confidence_maps(
                r for item in items for r in item.outcomes.values()
            ).items()
        },
        "source": source or {},
    }


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean FLOPs on a set of traced items: per fixed strategy, per policy (its
    plans replayed over the traces; None where they need a strategy the traces lack) and for
    the oracle (apportion.traces': the cheapest right strategy)."""

    n: int
    fixed: dict[str, tuple[float, float]]
    policies: dict[str, tuple[float, float] | None]
    oracle: tuple[float, float]
    # Each item answered by its cheapest strategy that gives an answer, chosen with hindsight:
    # a floor under the FLOPs of any policy that answers every question.
    cheapest_answer: tuple[float, float]


def evaluate(
    policies: Mapping[str, Policy],
    results: Iterable[ItemResult],
    *,
    keep: Callable[[str, str], bool] | None = None,
) -> Evaluation:
    """Replay each policy over the traced items that `keep` admits (all by default)."""
    items, strategies = _items(results, keep)
    n = len(items)
    fixed = {s: _measure((Step(s, 0.0),), items)[0] for s in strategies}
    replayed: dict[str, tuple[float, float] | None] = {}
    for name, policy in policies.items():
        plans = [policy.plan(item.features, Budget()).steps for item in items]
        pairs = list(zip(plans, items, strict=True))
        if any(s.strategy not in item.outcomes for steps, item in pairs for s in steps):
            replayed[name] = None
            continue
        correct = flops = 0.0
        for steps, item in pairs:
            won, ran = replay(steps, item.outcomes)
            correct += won
            flops += sum(r.flops for r in ran)
        replayed[name] = (correct / n, flops / n)
    best = oracle(r for item in items for r in item.outcomes.values())
    cheapest = [
        min((r for r in item.outcomes.values() if _answers(r)), key=lambda r: r.flops,
            default=min(item.outcomes.values(), key=lambda r: r.flops))
        for item in items
    ]  # fmt: skip
    return Evaluation(
        n,
        {s: (m.accuracy, m.flops) for s, m in fixed.items()},
        replayed,
        (sum(r.correct for r in best) / n, sum(r.flops for r in best) / n),
        (sum(r.correct for r in cheapest) / n, sum(r.flops for r in cheapest) / n),
    )
