"""Routing features (the classifier's own cases are in test_intent.py) and the rule ladders."""

from apportion.router.features import extract_features, intent_probabilities, top_intent
from apportion.router.policy import RulePolicy
from apportion.types import Budget


def test_features_count_what_the_difficulty_estimate_reads() -> None:
    f = extract_features("Tom has 12 apples and buys 30 more. How many now?")
    assert (f.intent, f.has_math_expression, f.n_numbers, f.n_words) == ("math_word", False, 4, 11)


def test_a_math_expression_pulls_towards_arithmetic() -> None:
    shares = intent_probabilities("how much is 2+2", has_math_expression=True)
    assert top_intent(shares) == "arithmetic"
    assert extract_features("What is 17*23+5?").has_math_expression


def test_rule_policy_puts_solver_first_for_arithmetic() -> None:
    plan = RulePolicy().plan(extract_features("What is 17*23+5?"), Budget())
    assert plan.steps[0].strategy == "symbolic"


def test_an_equation_behind_a_condition_is_math_and_the_solver_answers_it() -> None:
    from apportion.runtime import Engine

    question = "If 6x + 72 = 174, what is x?"  # held out in issue 12: the solver declined it
    features = extract_features(question)
    assert features.has_math_expression and features.intent == "arithmetic"
    answer = Engine().ask(question, strategy="symbolic")
    assert (answer.answer, answer.strategy) == ("x = 17", "symbolic")
