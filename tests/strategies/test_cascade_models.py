"""A cascade on two real local models: escalation happens and both models are charged."""

import pytest

from apportion.runtime import Engine

pytestmark = pytest.mark.model


def test_cascade_escalates_and_charges_both_models() -> None:
    engine = Engine()
    try:
        # 4 tokens leave the small model no room for a final answer line, so its probe has no
        # votes and the cascade must escalate.
        answer = engine.ask(
            "Tom has 3 apples and buys 4 more. How many apples does he have?",
            strategy="cascade:small=smollm2-135m,large=qwen2.5-coder-0.5b,probe=cot,probe_n=2",
            max_tokens=4,
        )
    finally:
        engine.close()
    names = [c.name for c in answer.ledger.calls]
    assert names[:2] == ["smollm2-135m", "smollm2-135m"]
    assert "qwen2.5-coder-0.5b" in names
    small = [c for c in answer.ledger.calls if c.name == "smollm2-135m"]
    large = [c for c in answer.ledger.calls if c.name == "qwen2.5-coder-0.5b"]
    # the same tokens cost more FLOPs on the larger model
    per_token = [c.flops / (c.prompt_tokens + c.completion_tokens) for c in (small[0], large[0])]
    assert per_token[1] > 2 * per_token[0]


def test_default_cascade_probes_with_a_program_scored_by_its_token_probability() -> None:
    engine = Engine()
    try:
        # threshold 1.0: no probability reaches it, so the probe's score shows in the rationale
        answer = engine.ask(
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?",
            strategy="cascade:small=qwen2.5-coder-0.5b,large=qwen2.5-coder-0.5b,threshold=1.0",
        )
    finally:
        engine.close()
    names = [c.name for c in answer.ledger.calls]
    assert names == ["qwen2.5-coder-0.5b", "sandbox", "qwen2.5-coder-0.5b", "sandbox"]
    (attempt,) = answer.attempts
    small = float(attempt.rationale.split("small confidence ")[1].split("]")[0])
    assert 0.3 < small < 1.0 and small not in (0.8, 0.6)  # a probability, not the fixed scores
    assert answer.answer == "72"
