"""`question_first`: the question before a strategy's instructions, so that every step of a
plan on one model starts its prompt with the same tokens and reuses the KV cache of the step
before (strategies/prompts.py's `instructed`)."""

from __future__ import annotations

import pytest

from apportion.strategies.cot import ChainOfThought
from apportion.strategies.direct import Direct
from apportion.strategies.program import Program
from apportion.types import Message, Query

Q = Query(
    "Natalia sold 48 clips to her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "number",
    history=(Message("user", "Hi."), Message("assistant", "Hello! Ask away.")),
)
STRATEGIES = (Direct, ChainOfThought, Program)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_default_puts_the_instructions_first(strategy: type) -> None:
    messages = strategy().messages(Q)
    assert messages[0].role == "system" and Q.text not in messages[0].content
    assert messages[1:] == [*Q.history, Message("user", Q.text)]


def test_question_first_prompts_of_every_strategy_share_all_but_their_instructions() -> None:
    prompts = [s(question_first=True).messages(Q) for s in STRATEGIES]
    for messages in prompts:
        # no system message of the strategy's own; the conversation, then question + instructions
        assert messages[:-1] == list(Q.history)
        assert messages[-1].role == "user" and messages[-1].content.startswith(Q.text + "\n\n")
    instructions = {m[-1].content[len(Q.text) :] for m in prompts}
    assert len(instructions) == len(STRATEGIES)  # each keeps its own instructions
    # the instructions are those the default puts in the system message
    for s, messages in zip(STRATEGIES, prompts, strict=True):
        assert messages[-1].content.endswith(s().messages(Q)[0].content)


@pytest.mark.model
def test_a_later_step_reads_the_question_from_the_kv_cache(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    """direct, then cot, on one llama.cpp model: laid out question first, cot computes little
    more than its instructions; laid out as by default, it computes the question again."""
    question_tokens = smol_llamacpp.count_tokens(
        [Message("user", Q.text)]
    ) - smol_llamacpp.count_tokens([Message("user", "")])
    cached = {}
    for first in (False, True):
        smol_llamacpp.generate(
            Direct(question_first=first).messages(Q), max_tokens=2, reuse_prefix=False
        )
        (later,) = smol_llamacpp.generate(
            ChainOfThought(question_first=first).messages(Q), max_tokens=2
        )
        cached[first] = later.cached_tokens
    assert cached[True] >= cached[False] + question_tokens - 2
    assert cached[False] < question_tokens
