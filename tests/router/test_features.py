import pytest

from apportion.router.features import classify_intent, extract_features
from apportion.router.policy import RulePolicy
from apportion.types import Budget


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
        ("not ( True ) and ( True ) is", "logic"),
        ("Tell me a joke about penguins", "chat"),
    ],
)
def test_rule_intents(text: str, intent: str) -> None:
    assert extract_features(text).intent == intent


def test_math_expression_wins_over_keywords() -> None:
    assert classify_intent("how much is 2+2", has_math_expression=True) == "arithmetic"


def test_rule_policy_puts_solver_first_for_arithmetic() -> None:
    plan = RulePolicy().plan(extract_features("What is 17*23+5?"), Budget())
    assert plan.steps[0].strategy == "symbolic"
