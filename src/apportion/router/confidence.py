"""How far each strategy's confidence can be trusted, measured on traces.

For every fixed strategy, over the items where it answered: AUROC (how well its confidence
ranks its right answers above its wrong ones; 0.5 is chance) and ECE (expected calibration
error over ten equal bins: how far "0.8" is from being right 80% of the time), raw and after
an isotonic map fitted on the training share of the items (pool-adjacent-violators, so the
map is monotone and keeps the ranking, hence the AUROC). `apportion calibrate` prints them,
and writes each strategy's map into the policy, whose plans carry them: an answer of `auto`
reports its confidence mapped (Answer.calibrated_confidence).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from apportion.traces import ItemResult, is_adaptive


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The probability that a right answer scores above a wrong one (ties count half); None
    without both."""
    ranked = sorted(zip(scores, labels, strict=True))
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j share their mean
        rank_sum += mean_rank * sum(1 for _, y in ranked[i:j] if y)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def ece(confidences: Sequence[float], labels: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: the mean |accuracy − confidence| over equal-width bins,
    weighted by how many answers fall in each."""
    if not confidences:
        return 0.0
    totals = [[0.0, 0.0, 0] for _ in range(bins)]
    for c, y in zip(confidences, labels, strict=True):
        b = min(int(max(c, 0.0) * bins), bins - 1)
        totals[b][0] += c
        totals[b][1] += float(y)
        totals[b][2] += 1
    n = len(confidences)
    return sum(abs(t[1] - t[0]) for t in totals if t[2]) / n


@dataclass(frozen=True)
class IsotonicMap:
    """A monotone step map from raw confidence to the share of answers that were right."""

    thresholds: tuple[float, ...]  # the lowest raw score of each step
    values: tuple[float, ...]

    def __call__(self, confidence: float) -> float:
        i = bisect.bisect_right(self.thresholds, confidence) - 1
        return self.values[max(i, 0)]

    @classmethod
    def fit(cls, confidences: Sequence[float], labels: Sequence[bool]) -> IsotonicMap:
        """Pool adjacent violators over the answers sorted by confidence."""
        points: dict[float, list[float]] = {}  # equal scores are one point, whatever labels
        for c, y in zip(confidences, labels, strict=True):
            point = points.setdefault(c, [0.0, 0.0])
            point[0] += float(y)
            point[1] += 1
        blocks: list[list[float]] = []  # [lowest score, sum of labels, count]
        for c in sorted(points):
            blocks.append([c, *points[c]])
            while len(blocks) > 1 and (
                blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]
            ):
                _, total, count = blocks.pop()  # merged into the block before it
                blocks[-1][1] += total
                blocks[-1][2] += count
        if not blocks:
            return cls((0.0,), (0.5,))
        return cls(tuple(b[0] for b in blocks), tuple(b[1] / b[2] for b in blocks))

    def to_dict(self) -> dict[str, list[float]]:
        return {"thresholds": [round(t, 6) for t in self.thresholds],
                "values": [round(v, 4) for v in self.values]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> IsotonicMap:
        thresholds = tuple(float(t) for t in data["thresholds"])
        values = tuple(float(v) for v in data["values"])
        if not thresholds or len(thresholds) != len(values) or list(thresholds) != sorted(
            thresholds
        ):
            raise ValueError(f"not a confidence map: {dict(data)!r}")
        return cls(thresholds, values)


# Least answers a strategy must have given in calibration for its confidence to get a map:
# below it, the shares the map would state are too noisy to show a user as probabilities.
MIN_MAP_ANSWERS = 20


def fit_confidence_maps(results: Iterable[ItemResult]) -> dict[str, IsotonicMap]:
    """Per fixed strategy with at least MIN_MAP_ANSWERS answers: the isotonic map from its raw
    confidence to the share of its answers that were right. One map per strategy, pooled over
    intents: split by intent as well, the shipped traces' training half leaves each map a few
    dozen answers."""
    by_strategy: dict[str, list[ItemResult]] = {}
    for r in results:
        if not is_adaptive(r.strategy) and r.ok:  # as confidence_report scores them
            by_strategy.setdefault(r.strategy, []).append(r)
    return {
        s: IsotonicMap.fit([r.confidence for r in rs], [r.correct for r in rs])
        for s, rs in sorted(by_strategy.items()) if len(rs) >= MIN_MAP_ANSWERS
    }  # fmt: skip


@dataclass(frozen=True)
class ConfidenceRow:
    strategy: str
    n: int  # answers scored (held out)
    accuracy: float
    auroc: float | None
    ece_raw: float
    ece_calibrated: float


def confidence_report(
    results: Iterable[ItemResult], train: Callable[[str, str], bool] | None = None
) -> list[ConfidenceRow]:
    """Per fixed strategy: AUROC and ECE on the items `train` leaves out (all items when it
    is None, then the map is fitted and scored on the same items), raw and mapped."""
    by_strategy: dict[str, list[ItemResult]] = {}
    for r in results:
        if is_adaptive(r.strategy) or not r.ok:
            continue  # confidence says how far to trust an answer: rows with one
        by_strategy.setdefault(r.strategy, []).append(r)
    rows = []
    for strategy, rs in sorted(by_strategy.items()):
        fit_on = [r for r in rs if train is None or train(r.dataset, r.item_id)]
        scored = [r for r in rs if train is None or not train(r.dataset, r.item_id)]
        if not scored or not fit_on:
            continue
        mapping = IsotonicMap.fit([r.confidence for r in fit_on], [r.correct for r in fit_on])
        confidences = [r.confidence for r in scored]
        labels = [r.correct for r in scored]
        rows.append(ConfidenceRow(
            strategy, len(scored), sum(labels) / len(labels), auroc(confidences, labels),
            ece(confidences, labels), ece([mapping(c) for c in confidences], labels),
        ))  # fmt: skip
    return rows
