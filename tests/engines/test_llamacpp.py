"""The in-process llama.cpp engine on the smallest real model (SmolLM2-135M)."""

from __future__ import annotations

import pytest

from apportion.errors import ContextOverflowError
from apportion.types import Message

pytestmark = pytest.mark.model


MESSAGES = [Message("user", "Say hello in French.")]


def test_generate_reports_tokens_and_knows_its_size(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    (c,) = smol_llamacpp.generate(MESSAGES, max_tokens=16)
    assert c.text.strip()
    assert c.completion_tokens >= 1
    # our own count of the templated prompt matches what llama.cpp evaluated
    assert smol_llamacpp.count_tokens(MESSAGES) == c.prompt_tokens
    assert 1.0e8 < smol_llamacpp.cost.params < 1.7e8
    assert smol_llamacpp.cost.n_layers == 30 and smol_llamacpp.cost.d_model == 576


def test_an_engine_built_directly_keeps_off_the_amx_path_where_it_crashes(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    from apportion.engines.cpu import choose_extra_buffers

    # built without a choice (as conftest does), it decides as extra_buffers = "auto": on a
    # CPU with AMX its first decode would otherwise segfault (llama.cpp issue 20824)
    assert smol_llamacpp.extra_buffers == choose_extra_buffers("auto").enabled


def test_logprobs_without_logits_all(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    (c,) = smol_llamacpp.generate(MESSAGES, max_tokens=12, logprobs=True)
    assert c.token_logprobs is not None
    # every sampled token but the last is recorded
    assert len(c.token_logprobs) == c.completion_tokens - 1
    assert all(lp <= 0.0 for lp in c.token_logprobs)
    # greedy picks the argmax, which must carry real probability mass
    assert max(c.token_logprobs) > -1.0
    # each recorded token's text, in order: together they spell the reply but its last token
    assert c.token_texts is not None and len(c.token_texts) == len(c.token_logprobs)
    assert c.text.startswith("".join(c.token_texts)) and "".join(c.token_texts).strip()


def test_greedy_is_deterministic_without_prefix_reuse(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    a = smol_llamacpp.generate(MESSAGES, max_tokens=10, reuse_prefix=False)
    smol_llamacpp.generate([Message("user", "Something else entirely.")], max_tokens=6)
    b = smol_llamacpp.generate(MESSAGES, max_tokens=10, reuse_prefix=False)
    assert a[0].text == b[0].text
    samples = smol_llamacpp.generate(MESSAGES, max_tokens=10, temperature=1.0, n=3, seed=7)
    assert len(samples) == 3


def test_prompt_beyond_context_is_refused(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContextOverflowError, match="512-token context"):
        smol_llamacpp.generate([Message("user", "word " * 1000)], max_tokens=8)


def test_prompt_tokens_read_from_the_kv_cache_are_counted(smol_llamacpp) -> None:  # type: ignore[no-untyped-def]
    """A call whose prompt shares a prefix with the call before reads that prefix from the KV
    cache: the completion says how many tokens, measured from what llama.cpp evaluated."""
    system = Message("system", "You are a careful assistant. " * 8)
    first = [system, Message("user", "Name a fruit.")]
    second = [system, Message("user", "Name a colour.")]
    (a,) = smol_llamacpp.generate(first, max_tokens=4, reuse_prefix=False)
    assert a.cached_tokens == 0  # the context was reset: every prompt token computed
    (b,) = smol_llamacpp.generate(second, max_tokens=4)
    # the system turn, less its end-of-turn tokens
    shared = smol_llamacpp.count_tokens([system]) - 2
    assert shared <= b.cached_tokens < b.prompt_tokens
    (c,) = smol_llamacpp.generate(second, max_tokens=4, reuse_prefix=False)
    assert c.cached_tokens == 0
    # streamed alike
    pieces = smol_llamacpp.stream(first, max_tokens=4)
    try:
        while True:
            next(pieces)
    except StopIteration as done:
        streamed = done.value
    assert shared <= streamed.cached_tokens < streamed.prompt_tokens
