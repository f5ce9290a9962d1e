import pytest

from apportion.strategies.stopping import (
    beta_majority_probability,
    leader,
    should_stop,
    tally,
)


def test_tally_ignores_unreadable_samples() -> None:
    assert tally(["4", None, "4", "5"]) == {"4": 2, "5": 1}


def test_leader_share_counts_failures_against_it() -> None:
    assert leader(["4", None, "4", "5"]) == ("4", 0.5)
    assert leader([None, None]) == (None, 0.0)
    # ties go to the answer seen first
    assert leader(["5", "4", "4", "5"]) == ("5", 0.5)


@pytest.mark.parametrize(
    ("top", "second", "expected"),
    [
        (0, 0, 0.5),  # uniform prior: a coin flip
        (1, 0, 0.75),  # Beta(2,1): P(p > 1/2) = 1 - 0.25
        (2, 0, 0.875),
        (3, 0, 0.9375),
        (4, 0, 0.96875),
        (1, 1, 0.5),
        (3, 1, 0.8125),
    ],
)
def test_beta_probability_matches_closed_form(top: int, second: int, expected: float) -> None:
    assert beta_majority_probability(top, second) == pytest.approx(expected)


def test_beta_probability_grows_with_the_lead() -> None:
    values = [beta_majority_probability(k, 2) for k in range(2, 12)]
    assert values == sorted(values) and values[0] == pytest.approx(0.5)


def test_fixed_rule_runs_to_the_cap() -> None:
    assert not should_stop(["4"] * 7, rule="fixed", max_samples=8)
    assert should_stop(["4"] * 8, rule="fixed", max_samples=8)


def test_esc_stops_on_an_agreeing_window_only_at_window_boundaries() -> None:
    assert not should_stop(["4"], rule="esc", max_samples=8, window=2)
    assert should_stop(["4", "4"], rule="esc", max_samples=8, window=2)
    assert not should_stop(["4", "5"], rule="esc", max_samples=8, window=2)
    assert not should_stop(["4", "5", "5"], rule="esc", max_samples=8, window=2)
    assert should_stop(["4", "5", "5", "5"], rule="esc", max_samples=8, window=2)
    assert not should_stop([None, None], rule="esc", max_samples=8, window=2)


def test_beta_stops_when_the_leader_is_safe() -> None:
    # 4 unanimous votes: P = 0.96875 >= 0.95
    assert not should_stop(["4"] * 3, rule="beta", max_samples=8)
    assert should_stop(["4"] * 4, rule="beta", max_samples=8)
    assert not should_stop(["4", "4", "4", "5"], rule="beta", max_samples=8)


def test_unknown_rule_is_an_error() -> None:
    with pytest.raises(ValueError, match="valid: fixed, esc, beta"):
        should_stop(["4"], rule="vibes", max_samples=8)  # type: ignore[arg-type]
