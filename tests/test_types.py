"""The shared value types: what a completion's token log-probabilities say about one span."""

from __future__ import annotations

import math

import pytest

from apportion.answers import answer_start
from apportion.types import Completion


def completion(pieces: list[tuple[str, float]], *, texts: bool = True) -> Completion:
    text = "".join(p for p, _ in pieces)
    return Completion(
        text, 10, len(pieces), "stop", tuple(lp for _, lp in pieces),
        token_texts=tuple(p for p, _ in pieces) if texts else None,
    )  # fmt: skip


def test_the_answer_span_is_read_after_the_last_marker() -> None:
    c = completion([
        ("So", -2.0), (" 3", -1.5), (" the", -0.5), (" answer", -0.1), (" is", -0.1),
        (" 4", -3.0), (".", -1.0), ("\nThe", -0.2), (" Answer", -0.1), (" is", -0.1),
        (" ", -0.5), ("12", -0.2), (".", -0.4),
    ])  # fmt: skip
    # after the last "answer is" (any case): " " (whitespace, left out), "12" and "."
    assert c.mean_logprob_from(answer_start) == pytest.approx((-0.2 - 0.4) / 2)
    assert c.mean_logprob is not None and c.mean_logprob < c.mean_logprob_from(answer_start)


def test_a_token_that_holds_the_marker_and_the_answer_counts() -> None:
    c = completion([("Think", -2.0), (" The answer is 7", -0.05)])
    assert c.mean_logprob_from(answer_start) == pytest.approx(-0.05)
    c = completion([("Think", -2.0), ("\n####", -0.3), (" 7", -0.05)])
    assert c.mean_logprob_from(answer_start) == pytest.approx(-0.05)
    c = completion([("So", -2.0), (" \\(\\boxed{", -0.3), ("400", -0.05), ("}\\).", -0.01)])
    assert c.mean_logprob_from(answer_start) == pytest.approx((-0.05 - 0.01) / 2)


@pytest.mark.parametrize(
    "made",
    [
        completion([("no", -1.0), (" marker", -1.0)]),  # no marker
        completion([("The", -1.0), (" answer is", -1.0)]),  # nothing after it
        completion([("The answer is", -1.0), (" 5", -0.1)], texts=False),  # texts unknown
        Completion("x", 1, 1, "stop"),  # no log-probabilities
    ],
)
def test_no_span_where_it_cannot_be_read(made: Completion) -> None:
    assert made.mean_logprob_from(answer_start) is None


def test_the_last_token_without_a_logprob_is_not_read() -> None:
    # llama.cpp records no log-probability for the final token (no call follows it)
    c = Completion("The answer is 5", 3, 2, "stop", (-0.1,), token_texts=("The answer is", " 5"))
    assert c.mean_logprob_from(answer_start) is None
    assert math.exp(c.mean_logprob or 0) == pytest.approx(math.exp(-0.1))
