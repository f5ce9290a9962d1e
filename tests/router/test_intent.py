"""The shipped intent classifier: its features, its held-out accuracy, its latency budget's
ingredients (the latency itself is measured by scripts/build_intent_model.py, not here)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apportion.bench.datasets import DATA_DIR_ENV
from apportion.errors import UsageError
from apportion.router.intent import (
    DIM,
    MODEL_FILE,
    IntentClassifier,
    default_classifier,
    hashed_features,
)
from apportion.runtime import conversation_features
from apportion.tools.solver import extract_math
from apportion.types import INTENTS, Message, Query
from shared_data import shared_data_dir


def data_dir() -> Path:
    return shared_data_dir()


def test_features_are_stable_normalised_and_bounded() -> None:
    a = hashed_features("Natalia sold 48 clips in April.", has_math_expression=False)
    b = hashed_features("Natalia sold 48 clips in April.", has_math_expression=False)
    assert a == b  # CRC-32, not the per-process salted hash()
    assert all(0 <= i < DIM for i in a)
    assert math.isclose(math.sqrt(sum(v * v for v in a.values())), 1.0)
    # numbers are reduced to their shape
    c = hashed_features("Natalia sold 17 clips in April.", has_math_expression=False)
    assert a == c
    # very long inputs keep head and tail only
    long = "word " * 100_000 + "How many?"
    assert len(hashed_features(long, has_math_expression=False)) < 200


def test_the_model_ships_with_every_intent() -> None:
    model = default_classifier()
    assert MODEL_FILE.is_file()
    assert set(model.classes) == set(INTENTS)
    assert model.weights.shape == (DIM, len(INTENTS))
    shares = model.probabilities("Who wrote Hamlet?", has_math_expression=False)
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("What is 17*23+5?", "arithmetic"),
        ("Solve 2x + 3 = 11 for x.", "arithmetic"),
        (
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?",
            "math_word",
        ),
        ("What is the capital of Australia?", "factual"),
        ("Write a Python function that reverses a string.", "code"),
        ("Implement a queue using two stacks in Java.", "code"),
        ("not ( True ) and ( True ) is", "logic"),
        ("Tell me a joke about penguins", "chat"),
        ("set an alarm for 7 am tomorrow", "chat"),
    ],
)
def test_typical_queries(text: str, intent: str) -> None:
    has_math = extract_math(text) is not None
    assert default_classifier().predict(text, has_math_expression=has_math) == intent


def test_a_follow_up_takes_its_conversations_intent() -> None:
    # through the engine's own routing path, which classifies the last message once
    def routed(earlier: str, last: str) -> str:
        history = (Message("user", earlier), Message("assistant", "OK."))
        return conversation_features(Query(last, history=history)).intent

    clips = "Natalia sold clips to 48 of her friends in April, and half as many in May."
    assert routed(clips, "How many did she sell altogether?") == "math_word"
    assert routed("What is 17*23+5?", "Who wrote Hamlet?") == "factual"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = default_classifier()
    path = tmp_path / "m.npz"
    model.save(path)
    again = IntentClassifier.load(path)
    assert again.classes == model.classes
    assert np.array_equal(again.weights, model.weights)  # float16 on disk either way


@pytest.mark.slow
def test_held_out_accuracy_is_at_least_90_percent() -> None:
    from apportion.bench.intent_data import labelled_queries

    queries = labelled_queries(data_dir())
    held_out = [q for q in queries if q.held_out]
    assert len(held_out) > 3000 and len(queries) - len(held_out) > 10_000
    assert {q.intent for q in held_out} == set(INTENTS)
    model = default_classifier()
    right = sum(
        model.predict(q.text, has_math_expression=extract_math(q.text) is not None) == q.intent
        for q in held_out
    )
    assert right / len(held_out) >= 0.9
    # the split is a pure function of the text: rebuilding gives the same held-out set
    assert [q.text for q in labelled_queries(data_dir()) if q.held_out] == [
        q.text for q in held_out
    ]


def test_no_shared_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apportion.bench.intent_data import labelled_queries

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=DATA_DIR_ENV) as info:
        labelled_queries()
    assert str(tmp_path / "missing") in str(info.value)  # it names the folder it looked in


def test_the_rebuild_script_starts() -> None:
    """scripts/build_intent_model.py imports what it needs (the labelled queries come from
    apportion.bench.intent_data); a full rebuild is the script's own job."""
    pytest.importorskip("sklearn", reason="scikit-learn is a dev dependency")
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_intent_model.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--data-dir" in proc.stdout
