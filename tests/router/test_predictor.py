"""The per-query success predictor: fitted on traced questions, it tells apart questions that
the same intent cell lumps together, and its policy closes a declining step."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from apportion.router.features import extract_features
from apportion.router.predictor import DIM, PredictedPolicy, SuccessPredictor, fit_predictor
from apportion.traces import ItemResult
from apportion.types import INTENTS, Budget

CLOSERS = {"cot"}


def _examples() -> list[tuple[object, dict[str, tuple[bool, float]]]]:
    """Word problems: those about trains only `program` gets right, those about apples only
    `cot` (the same intent and sizes, so only the words tell them apart)."""
    out = []
    for i in range(30):
        train = f"A train goes {i + 20} miles in {i % 5 + 2} hours. How far in {i % 3 + 4} hours?"
        apples = f"Sam has {i + 3} apples and gives {i % 4 + 1} to Ann. How many apples are left?"
        out.append((extract_features(train), {"program": (True, 2e11), "cot": (False, 5e11)}))
        out.append((extract_features(apples), {"program": (False, 2e11), "cot": (True, 5e11)}))
    return out


def test_predicts_per_question_and_round_trips() -> None:
    predictor = fit_predictor(_examples(), ["cot", "program"], closes=CLOSERS.__contains__)
    train = extract_features("A train travels 95 miles in 3 hours. How far in 7 hours?")
    apples = extract_features("Sam has 41 apples and gives 2 to Ann. How many apples are left?")
    assert predictor.predict(train)["program"] > 0.6 > predictor.predict(apples)["program"]
    assert predictor.predict(apples)["cot"] > 0.6 > predictor.predict(train)["cot"]
    again = SuccessPredictor.from_dict(predictor.to_dict())  # six significant digits kept
    assert again.predict(train) == pytest.approx(predictor.predict(train), abs=1e-5)
    assert predictor.expected_flops("cot", "math_word") == 5e11

    policy = PredictedPolicy(predictor, lam=0.1, max_flops=5e11)
    plan = policy.plan(train, Budget())
    # program can decline (no solve(), a crash), so the best closer follows it
    assert [s.strategy for s in plan.steps] == ["program", "cot"] and plan.steps[0].stop_at > 0
    assert [s.strategy for s in policy.plan(apples, Budget()).steps] == ["cot"]
    assert [s.strategy for s in policy.plan(train, Budget(), unavailable=frozenset({"program"})
                                             ).steps] == ["cot"]  # fmt: skip


class ParityEmbedder:
    """A stand-in sentence embedder: the parity of the question's number, which no n-gram of
    an unseen number tells."""

    name = "parity"
    dim = 2

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        odd = [int(re.findall(r"\d+", t)[0]) % 2 for t in texts]
        return np.array([[1.0 - o, float(o)] for o in odd], dtype=np.float32)


def test_a_sentence_embedding_is_a_feature_when_an_embedder_is_given() -> None:
    examples = [
        (extract_features(f"Tell me about order number {i}."),
         {"program": (i % 2 == 0, 2e11), "cot": (i % 2 == 1, 5e11)})
        for i in range(60)
    ]  # fmt: skip
    even = extract_features("Tell me about order number 1000.")
    odd = extract_features("Tell me about order number 1001.")
    embedder = ParityEmbedder()
    with_it = fit_predictor(examples, ["cot", "program"], closes=CLOSERS.__contains__,
                            embedder=embedder, steps=1000)  # fmt: skip
    assert embedder.calls == 1  # the training questions, in one batch
    assert with_it.weights.shape[0] == DIM + len(INTENTS) + embedder.dim
    assert with_it.predict(even)["program"] > 0.6 > with_it.predict(odd)["program"]
    without = fit_predictor(examples, ["cot", "program"], closes=CLOSERS.__contains__, steps=1000)
    gap = without.predict(even)["program"] - without.predict(odd)["program"]
    assert abs(gap) < 0.2  # the n-grams alone cannot tell unseen even numbers from odd


def test_a_free_step_never_wrong_goes_first_in_every_predicted_plan() -> None:
    examples = [
        (f, {**outcomes, "symbolic": (False, 0.0)}) for f, outcomes in _examples()
    ]  # fmt: skip
    predictor = fit_predictor(examples, ["cot", "program", "symbolic"],
                              closes=CLOSERS.__contains__, first=["symbolic"])  # fmt: skip
    policy = PredictedPolicy(predictor, lam=0.1, max_flops=5e11)
    apples = extract_features("Sam has 41 apples and gives 2 to Ann. How many apples are left?")
    plan = policy.plan(apples, Budget())
    assert [(s.strategy, s.stop_at) for s in plan.steps] == [("symbolic", 0.3), ("cot", 0.0)]
    assert SuccessPredictor.from_dict(predictor.to_dict()).first == ("symbolic",)
    no_solver = policy.plan(apples, Budget(), unavailable=frozenset({"symbolic"}))
    assert [s.strategy for s in no_solver.steps] == ["cot"]


def _book_questions(*, with_solver: bool) -> list[ItemResult]:
    """Who wrote which book: direct is cheap and right exactly when sure (0.9), wrong when
    unsure (0.2, every fourth question); cot is dear and always right. `with_solver`: a free
    solver answers, rightly, exactly the questions direct is unsure of."""
    from router.test_calibrate import result

    rows = []
    for i in range(40):
        q = f"Who wrote book number {i} of the {['red', 'blue'][i % 2]} shelf?"
        sure = i % 4 != 0
        rows += [
            result(f"q{i}", "direct", correct=sure, confidence=0.9 if sure else 0.2, flops=1e8,
                   question=q),
            result(f"q{i}", "cot", correct=True, confidence=0.6, flops=1.5e10, question=q),
        ]  # fmt: skip
        if with_solver:
            rows.append(result(f"q{i}", "symbolic", correct=not sure, confidence=1.0, flops=0.0,
                               question=q, answer=None if sure else "x"))  # fmt: skip
    return rows


def test_a_cheap_answer_that_is_unsure_hands_over_where_the_traces_say_it_pays() -> None:
    """Facts: direct is cheap and right exactly when sure (0.9), wrong when unsure (0.2); cot
    is dear and always right. Predicted alone, direct leads (cheaper for nearly the same
    expected accuracy at this λ); the learned bar sends its unsure answers on to cot."""
    from apportion.router.predictor import fit_predicted_policy

    rows = _book_questions(with_solver=False)
    unsure_first = fit_predicted_policy(rows, lam=0.6)
    assert unsure_first.predictor.bars == {"direct": 0.3}
    plan = unsure_first.plan(extract_features("Who wrote book number 7 of the red shelf?"),
                             Budget())  # fmt: skip
    assert [(s.strategy, s.stop_at) for s in plan.steps] == [("direct", 0.3), ("cot", 0.0)]
    # at a price where cot's extra right answers do not pay, direct answers alone
    assert fit_predicted_policy(rows, lam=4.0).predictor.bars == {}


def test_a_bar_is_learned_on_the_questions_that_reach_it_behind_the_solver() -> None:
    """As above, but the solver, put first in every plan, answers exactly the questions where
    direct is unsure: behind it direct's unsure answers never come, so no bar pays (replayed
    without the solver, the same traces would learn direct's 0.3)."""
    from apportion.router.predictor import fit_predicted_policy

    policy = fit_predicted_policy(_book_questions(with_solver=True), lam=0.6)
    assert policy.predictor.first == ("symbolic",)
    assert policy.predictor.bars == {}
    # on the blue shelf direct was always sure and right, and the solver never answered
    plan = policy.plan(extract_features("Who wrote book number 7 of the blue shelf?"), Budget())
    assert [(s.strategy, s.stop_at) for s in plan.steps] == [("symbolic", 0.3), ("direct", 0.0)]
