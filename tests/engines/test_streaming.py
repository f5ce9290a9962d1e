"""Token streaming from both engines, cancellation mid-generation, and RunContext's on_token
path, which must charge the ledger exactly what the plain path charges."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.engines.base import GenerationCancelled
from apportion.engines.openai_http import OpenAIHttpEngine
from apportion.runtime import Engine, Hooks, Request, execute
from apportion.types import Completion, Message
from fakes import drain
from servers import llama_cpp_server

pytestmark = pytest.mark.model

POEM = [Message("user", "Write a short poem about the sea.")]
HELLO = [Message("user", "Say hello.")]


def cancel_after(gen: Generator[str, None, Completion], n: int) -> tuple[list[str], Completion]:
    pieces = [next(gen) for _ in range(n)]
    with pytest.raises(StopIteration) as done:
        gen.throw(GenerationCancelled())
    return pieces, done.value.value


@pytest.fixture(scope="module")
def smol(settings: Settings) -> Iterator[Engine]:
    engine = Engine(settings=settings.model_copy(update={"threads": 1}))
    engine.engine_for("smollm2-135m")
    yield engine
    engine.close()


@pytest.mark.parametrize(("messages", "max_tokens"), [(POEM, 12), (HELLO, 64)])
def test_llamacpp_stream_matches_generate(
    smol: Engine, messages: list[Message], max_tokens: int
) -> None:
    """From the same cache state (a fresh one: `reuse_prefix=False`), streamed and plain
    generation give the same text and usage. A prompt prefix reused from an earlier call is
    evaluated in other batch shapes, which on some CPUs (AMD EPYC, AVX2) flips a greedy token:
    llama.cpp does not promise equal output across cache states, so neither does this test."""
    llm = smol.engine_for("smollm2-135m")
    llm.generate(POEM, max_tokens=4)  # leave a cached prefix behind, as a server would
    (plain,) = llm.generate(messages, max_tokens=max_tokens, reuse_prefix=False)
    pieces, streamed = drain(llm.stream(messages, max_tokens=max_tokens, reuse_prefix=False))
    assert len(pieces) > 1
    assert "".join(pieces) == streamed.text == plain.text
    assert streamed.prompt_tokens == plain.prompt_tokens
    assert streamed.completion_tokens == plain.completion_tokens
    assert streamed.finish_reason == plain.finish_reason


def test_llamacpp_stream_stops_when_cancelled(smol: Engine) -> None:
    llm = smol.engine_for("smollm2-135m")
    pieces, partial = cancel_after(llm.stream(POEM, max_tokens=64), 3)
    assert partial.finish_reason == "cancelled"
    assert partial.text == "".join(pieces)
    assert 3 <= partial.completion_tokens <= 4
    # the context is usable afterwards: from a fresh cache state, the same greedy output
    # as a stream that was never cancelled
    (again,) = llm.generate(POEM, max_tokens=12, reuse_prefix=False)
    _, fresh = drain(llm.stream(POEM, max_tokens=12, reuse_prefix=False))
    assert again.text == fresh.text


def test_on_token_path_charges_what_the_plain_path_charges(smol: Engine) -> None:
    plain = smol.ask(
        "Say hello.", strategy="direct", model="smollm2-135m", max_tokens=16, deterministic=True
    )
    request = Request(
        "Say hello.", strategy="direct", model="smollm2-135m", max_tokens=16, deterministic=True
    )
    seen: list[str] = []
    prepared = smol.prepare(request, Hooks(on_token=seen.append))
    ctx = prepared.ctx
    streamed = execute(prepared.plan, prepared.query, ctx, smol.registry, intent=None)
    assert streamed.answer == plain.answer
    assert "".join(seen).strip() == plain.answer
    assert streamed.ledger.prompt_tokens == plain.ledger.prompt_tokens
    assert streamed.ledger.completion_tokens == plain.ledger.completion_tokens
    assert streamed.ledger.flops == plain.ledger.flops


def test_cancelling_from_on_token_charges_the_partial_call(smol: Engine) -> None:
    seen: list[str] = []

    def on_token(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 4:
            raise GenerationCancelled()

    request = Request("Write a long poem.", strategy="cot", model="smollm2-135m", max_tokens=200)
    prepared = smol.prepare(request, Hooks(on_token=on_token))
    ctx = prepared.ctx
    with pytest.raises(GenerationCancelled):
        execute(prepared.plan, prepared.query, ctx, smol.registry, intent=None)
    (call,) = ctx.ledger.totals().calls
    assert len(seen) == 4 and 4 <= call.completion_tokens <= 5
    assert call.flops > 0 and call.detail == "cot"


# -- the HTTP engine against llama-cpp-python's server ----------------------------------------


@pytest.fixture(scope="module")
def remote(settings: Settings) -> Iterator[OpenAIHttpEngine]:
    path = catalogue.resolve("smollm2-135m", settings.models_dir)
    with llama_cpp_server(path) as base:
        config: Any = RemoteEngineConfig(
            id="remote-smol", base_url=base, model="smol", params=134.5e6, n_layers=30,
            d_model=576,
        )  # fmt: skip
        engine = OpenAIHttpEngine(config)
        yield engine
        engine.close()


def test_http_stream_counts_tokens_when_the_server_sends_no_usage(
    remote: OpenAIHttpEngine,
) -> None:
    # The server reuses its cached prompt prefix, which can flip a greedy token between a
    # first call and later ones; after one warm-up call, the next two start from the same
    # cache state (the prompt's prefix, its last token evaluated afresh).
    remote.generate(POEM, max_tokens=12)
    (plain,) = remote.generate(POEM, max_tokens=12)
    pieces, streamed = drain(remote.stream(POEM, max_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces) == streamed.text == plain.text
    # one chunk per token: the count matches the server's own non-streamed usage
    assert streamed.completion_tokens == len(pieces) == plain.completion_tokens
    assert streamed.prompt_tokens == remote.count_tokens(POEM)
    assert streamed.finish_reason == "length"


def test_http_stream_stops_when_cancelled(remote: OpenAIHttpEngine) -> None:
    pieces, partial = cancel_after(remote.stream(POEM, max_tokens=200), 2)
    assert partial.finish_reason == "cancelled"
    assert partial.completion_tokens == 2 and partial.text == "".join(pieces)
    # the server is free again at once
    (after,) = remote.generate(HELLO, max_tokens=4)
    assert after.completion_tokens >= 1


def test_without_prefix_reuse_the_same_request_gives_the_same_tokens_whatever_ran_before(
    smol: Engine,
) -> None:
    """What `deterministic` mode rests on. With prefix reuse, the first call on a fresh
    context and later identical calls differed after 41 characters on an AMD EPYC (issue 18);
    without it every call starts from the same state."""
    llm = smol.engine_for("smollm2-135m")
    (first,) = llm.generate(HELLO, max_tokens=64, reuse_prefix=False)
    llm.generate(POEM, max_tokens=8)
    llm.generate(HELLO, max_tokens=64)  # a reusing call, leaving its own cache state behind
    (again,) = llm.generate(HELLO, max_tokens=64, reuse_prefix=False)
    _, streamed = drain(llm.stream(HELLO, max_tokens=64, reuse_prefix=False))
    assert first.text == again.text == streamed.text
    assert first.completion_tokens == again.completion_tokens == streamed.completion_tokens
