"""Multiple choice through the Python API: options the question does not show are listed by
letter, and the model is asked for the letter."""

from __future__ import annotations

from apportion.runtime import Engine
from fakes import ScriptedEngine


def test_ask_with_choices_shows_them_and_asks_for_the_letter() -> None:
    engine = Engine()
    scripted = ScriptedEngine(["B"])
    engine.register(scripted)
    answer = engine.ask(
        "What is the capital of France?",
        choices=["Berlin", "Paris", "Rome"],
        strategy="direct",
        model="scripted",
    )
    (messages,) = scripted.calls
    assert messages[-1].content == "What is the capital of France?\nA. Berlin\nB. Paris\nC. Rome"
    assert "letter of the correct option" in messages[0].content
    assert answer.answer == "B" and not answer.error


def test_choices_the_question_lists_are_not_listed_twice() -> None:
    engine = Engine()
    scripted = ScriptedEngine(["A"])
    engine.register(scripted)
    question = "Which is a fruit?\n(A) apple\n(B) brick"
    engine.ask(question, choices=["apple", "brick"], kind="choice", strategy="direct",
               model="scripted")  # fmt: skip
    assert scripted.calls[0][-1].content == question
