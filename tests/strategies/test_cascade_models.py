"""A cascade on two real local models: escalation happens and both models are charged."""

import pytest

from apportion.engine import Engine

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
