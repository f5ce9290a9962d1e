from dataclasses import replace

import pytest

from apportion.bench.frontier import ORACLE, Point, oracle, pareto_front, summarize
from apportion.bench.runner import ItemResult

BASE = ItemResult(
    dataset="d", item_id="0", strategy="s", gold="1", answer="1", correct=True, f1=1.0,
    confidence=1.0, route="s", intent=None, error=None, prompt_tokens=10, completion_tokens=5,
    flops=100.0, wall_s=1.0, cpu_s=0.0, energy_j=10.0, cost_usd=0.0, calls=1,
)  # fmt: skip


def r(item: str, strategy: str, correct: bool, flops: float, energy: float = 1.0) -> ItemResult:
    return replace(
        BASE, item_id=item, strategy=strategy, correct=correct, flops=flops, energy_j=energy
    )


RESULTS = [
    # item 1: direct right and cheapest → oracle takes direct
    r("1", "direct", True, 10), r("1", "cot", True, 100), r("1", "symbolic", False, 0, 0.1),
    # item 2: only cot right → oracle pays cot
    r("2", "direct", False, 10), r("2", "cot", True, 100), r("2", "symbolic", False, 0, 0.1),
    # item 3: symbolic right at 0 FLOPs → oracle takes it
    r("3", "direct", False, 10), r("3", "cot", True, 100), r("3", "symbolic", True, 0, 0.1),
    # item 4: nobody right → oracle wrong, pays the cheapest (symbolic: 0 FLOPs)
    r("4", "direct", False, 10), r("4", "cot", False, 100), r("4", "symbolic", False, 0, 0.2),
]  # fmt: skip


def test_oracle_takes_cheapest_correct_per_item() -> None:
    picks = {p.item_id: p for p in oracle(RESULTS)}
    assert {k: p.route for k, p in picks.items()} == {
        "1": "direct", "2": "cot", "3": "symbolic", "4": "symbolic",
    }  # fmt: skip
    assert all(p.strategy == ORACLE for p in picks.values())
    assert [picks[k].correct for k in "1234"] == [True, True, True, False]


def test_oracle_breaks_flops_ties_by_energy() -> None:
    rs = [r("1", "a", True, 0, energy=5.0), r("1", "b", True, 0, energy=2.0)]
    assert oracle(rs)[0].route == "b"


def test_summary_numbers() -> None:
    s = summarize(RESULTS)
    strategies = s["strategies"]
    assert s["n_items"] == 4
    assert strategies["cot"]["accuracy"] == pytest.approx(0.75)
    assert strategies["direct"]["flops"]["mean"] == pytest.approx(10)
    assert strategies[ORACLE]["accuracy"] == pytest.approx(0.75)
    assert strategies[ORACLE]["flops"]["mean"] == pytest.approx((10 + 100 + 0 + 0) / 4)
    lo, hi = strategies["cot"]["accuracy_ci95"]
    assert lo < 0.75 < hi
    assert s["oracle_routes"] == {"direct": 1, "cot": 1, "symbolic": 1}
    # direct ties symbolic on accuracy (25%) at more FLOPs: dominated
    assert s["pareto_flops"] == ["symbolic", "cot"]


def test_summary_compares_only_items_every_strategy_finished() -> None:
    partial = [*RESULTS, r("5", "direct", True, 10)]  # item 5 lacks cot and symbolic
    assert summarize(partial)["n_items"] == 4


def test_pareto_front_drops_dominated_points() -> None:
    pts = [Point("a", 1, 0.2), Point("b", 2, 0.1), Point("c", 3, 0.5), Point("d", 3, 0.4)]
    assert [p.name for p in pareto_front(pts)] == ["a", "c"]


def test_oracle_ignores_the_adaptive_policy() -> None:
    rs = [*RESULTS, r("2", "auto", True, 1)]  # auto right and cheapest on item 2
    picks = {p.item_id: p for p in oracle(rs)}
    assert picks["2"].route == "cot"
