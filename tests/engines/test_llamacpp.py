"""The in-process llama.cpp engine on the smallest real model (SmolLM2-135M)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.errors import ContextOverflowError
from apportion.types import Message

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol(settings: Settings) -> Iterator[object]:
    from apportion.engines.llamacpp import LlamaCppEngine

    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    engine = LlamaCppEngine("smollm2-135m", path, n_ctx=512, threads=1)
    yield engine
    engine.close()


MESSAGES = [Message("user", "Say hello in French.")]


def test_generate_reports_tokens_and_knows_its_size(smol) -> None:  # type: ignore[no-untyped-def]
    (c,) = smol.generate(MESSAGES, max_tokens=16)
    assert c.text.strip()
    assert c.completion_tokens >= 1
    # our own count of the templated prompt matches what llama.cpp evaluated
    assert smol.count_tokens(MESSAGES) == c.prompt_tokens
    assert 1.0e8 < smol.cost.params < 1.7e8
    assert smol.cost.n_layers == 30 and smol.cost.d_model == 576


def test_logprobs_without_logits_all(smol) -> None:  # type: ignore[no-untyped-def]
    (c,) = smol.generate(MESSAGES, max_tokens=12, logprobs=True)
    assert c.token_logprobs is not None
    # every sampled token but the last is recorded
    assert len(c.token_logprobs) == c.completion_tokens - 1
    assert all(lp <= 0.0 for lp in c.token_logprobs)
    # greedy picks the argmax, which must carry real probability mass
    assert max(c.token_logprobs) > -1.0


def test_greedy_is_deterministic_without_prefix_reuse(smol) -> None:  # type: ignore[no-untyped-def]
    a = smol.generate(MESSAGES, max_tokens=10, reuse_prefix=False)
    smol.generate([Message("user", "Something else entirely.")], max_tokens=6)
    b = smol.generate(MESSAGES, max_tokens=10, reuse_prefix=False)
    assert a[0].text == b[0].text
    samples = smol.generate(MESSAGES, max_tokens=10, temperature=1.0, n=3, seed=7)
    assert len(samples) == 3


def test_prompt_beyond_context_is_refused(smol) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContextOverflowError, match="512-token context"):
        smol.generate([Message("user", "word " * 1000)], max_tokens=8)


def test_prompt_tokens_read_from_the_kv_cache_are_counted(smol) -> None:  # type: ignore[no-untyped-def]
    """A call whose prompt shares a prefix with the call before reads that prefix from the KV
    cache: the completion says how many tokens, measured from what llama.cpp evaluated."""
    system = Message("system", "You are a careful assistant. " * 8)
    first = [system, Message("user", "Name a fruit.")]
    second = [system, Message("user", "Name a colour.")]
    (a,) = smol.generate(first, max_tokens=4, reuse_prefix=False)
    assert a.cached_tokens == 0  # the context was reset: every prompt token computed
    (b,) = smol.generate(second, max_tokens=4)
    shared = smol.count_tokens([system]) - 2  # the system turn, less its end-of-turn tokens
    assert shared <= b.cached_tokens < b.prompt_tokens
    (c,) = smol.generate(second, max_tokens=4, reuse_prefix=False)
    assert c.cached_tokens == 0
    # streamed alike
    pieces = smol.stream(first, max_tokens=4)
    try:
        while True:
            next(pieces)
    except StopIteration as done:
        streamed = done.value
    assert shared <= streamed.cached_tokens < streamed.prompt_tokens
