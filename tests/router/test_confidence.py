"""AUROC, ECE and the isotonic map that `apportion calibrate` reports per strategy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from apportion.router.confidence import (
    MIN_MAP_ANSWERS,
    IsotonicMap,
    auroc,
    confidence_report,
    ece,
    fit_confidence_maps,
)
from apportion.traces import ItemResult


def test_auroc_is_how_often_a_right_answer_outscores_a_wrong_one() -> None:
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5  # ties count half
    assert auroc([0.9, 0.3, 0.6], [True, False, False]) == 1.0
    assert auroc([0.9, 0.3], [True, True]) is None  # no wrong answer to rank against


def test_ece_is_zero_when_confidence_is_the_rate_of_right_answers() -> None:
    assert ece([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert ece([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)
    assert ece([], []) == 0.0


def test_the_isotonic_map_is_monotone_and_treats_equal_scores_as_one() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.6, 0.6, 0.9]
    labels = [False, True, False, False, True, False, True, True]
    mapping = IsotonicMap.fit(scores, labels)
    mapped = [mapping(s) for s in sorted(scores)]
    assert mapped == sorted(mapped)
    assert mapping(0.6) == pytest.approx(2 / 3)  # the three 0.6s: two of three right
    constant = IsotonicMap.fit([0.5] * 10, [True] * 3 + [False] * 7)
    assert constant(0.5) == pytest.approx(0.3)  # a constant confidence becomes the accuracy


def row(i: int, confidence: float, correct: bool, strategy: str = "cot") -> ItemResult:
    return ItemResult(
        dataset="d", item_id=f"q{i}", strategy=strategy, gold="1", answer="1" if correct else "2",
        correct=correct, f1=float(correct), confidence=confidence, route=strategy, intent=None,
        error=None, calls=1,
    )  # fmt: skip


def test_the_report_scores_held_out_answers_with_a_map_fitted_on_the_rest() -> None:
    rows = [row(i, 0.5, i % 8 < 2) for i in range(200)]  # constant 0.5, right a quarter
    rows += [row(i, 0.0, False, "direct") for i in range(5)]
    (cot, direct) = confidence_report(rows, train=lambda _d, item: int(item[1:]) % 2 == 0)
    assert cot.strategy == "cot" and cot.n == 100 and cot.auroc == 0.5
    assert cot.ece_raw == pytest.approx(0.25, abs=0.02) and cot.ece_calibrated < 0.05
    assert direct.auroc is None  # never right: nothing to rank


def test_maps_are_fitted_per_strategy_with_enough_answers_and_round_trip() -> None:
    rows = [row(i, 0.9 if i % 4 else 0.2, i % 4 != 0) for i in range(40)]  # sure = right
    rows += [row(i, 0.5, i % 2 == 0, "direct") for i in range(MIN_MAP_ANSWERS - 1)]
    # a router's rows are not a strategy's, however many
    rows += [replace(row(i, 0.9, True), strategy="auto") for i in range(MIN_MAP_ANSWERS)]
    maps = fit_confidence_maps(rows)
    assert set(maps) == {"cot"}  # direct answered too rarely for its shares to mean much
    assert maps["cot"](0.9) == 1.0 and maps["cot"](0.2) == 0.0
    assert IsotonicMap.from_dict(maps["cot"].to_dict()) == maps["cot"]
    with pytest.raises(ValueError, match="not a confidence map"):
        IsotonicMap.from_dict({"thresholds": [0.5, 0.1], "values": [0.2, 0.3]})
