"""Reasoning models behind OpenAI-compatible servers: a thinking budget told to the server in
the fields its engine config names, and the thinking read back apart from the answer and
charged. Against a loopback server that answers as vLLM with a reasoning parser does
(`reasoning_content` beside `content`); the read-back through a real `apportion serve` is in
tests/server/test_openai_contract.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from apportion.config import RemoteEngineConfig
from apportion.engines.layers import cache_key
from apportion.engines.openai_http import OpenAIHttpEngine, split_reasoning, thinking_fields
from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.cot import ChainOfThought
from apportion.types import Message, Query
from fakes import drain
from servers import LoopbackChatServer, sse


@dataclass
class Thought:
    reasoning: str
    content: str
    finish: str = "stop"


class ReasoningServer(LoopbackChatServer):
    """A loopback /v1/chat/completions that replies from a script (the last reply repeats)
    with the thinking in `reasoning_content`, as vLLM's and SGLang's reasoning parsers do,
    streamed or not; it keeps each request's body."""

    def respond(
        self, reply: Thought, body: dict[str, Any]
    ) -> tuple[int, str, str, dict[str, str]]:
        usage = {"prompt_tokens": 11, "completion_tokens": 40}
        if body.get("stream"):
            deltas = [{"reasoning_content": w + " "} for w in reply.reasoning.split()]
            deltas += [{"content": reply.content}]
            chunks = [{"choices": [{"delta": d, "finish_reason": None}]} for d in deltas]
            chunks += [{"choices": [{"delta": {}, "finish_reason": reply.finish}]},
                       {"choices": [], "usage": usage}]  # fmt: skip
            return 200, "text/event-stream", sse(chunks), {}
        message = {"role": "assistant", "content": reply.content,
                   "reasoning_content": reply.reasoning}  # fmt: skip
        payload = json.dumps({
            "choices": [{"message": message, "finish_reason": reply.finish}], "usage": usage,
        })  # fmt: skip
        return 200, "application/json", payload, {}


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ReasoningServer] = []

    def start(*script: Thought) -> ReasoningServer:
        servers.append(ReasoningServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def engine(base: str, *thinking: str) -> OpenAIHttpEngine:
    return OpenAIHttpEngine(RemoteEngineConfig(
        id="qwen3", base_url=base, model="Qwen/Qwen3-8B", params=8e9, max_attempts=1,
        thinking=list(thinking),  # type: ignore[arg-type]
    ))  # fmt: skip


def context(e: OpenAIHttpEngine, ledger: Ledger) -> RunContext:
    return RunContext.over(engine_for=lambda _id: e, default_model="qwen3", ledger=ledger,
                           max_tokens=100)  # fmt: skip


def test_each_control_maps_the_budget_onto_its_field() -> None:
    assert thinking_fields(["reasoning_effort"], 0) == {"reasoning_effort": "low"}
    assert thinking_fields(["reasoning_effort"], 4096) == {"reasoning_effort": "medium"}
    assert thinking_fields(["reasoning_effort"], 20000) == {"reasoning_effort": "high"}
    assert thinking_fields(["enable_thinking", "thinking_budget"], 0) == {
        "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    assert thinking_fields(["enable_thinking", "thinking_budget", "thinking_token_budget"],
                           256) == {
        "chat_template_kwargs": {"enable_thinking": True, "thinking_budget": 256},
        "thinking_token_budget": 256,
    }  # fmt: skip
    assert thinking_fields([], 256) == {}


def test_thinking_is_read_from_its_field_or_from_think_tags() -> None:
    assert split_reasoning({"content": "42", "reasoning_content": "6*7"}) == ("6*7", "42")
    assert split_reasoning({"content": "42", "reasoning": "6*7"}) == ("6*7", "42")
    assert split_reasoning({"content": "<think>\n6*7\n</think>\n\n42"}) == ("6*7", "42")
    # cut off while thinking: no answer yet
    assert split_reasoning({"content": "<think>6 times 7 is"}) == ("6 times 7 is", "")
    assert split_reasoning({"content": "The answer is 42."}) == ("", "The answer is 42.")


def test_the_server_is_told_the_budget_and_the_thinking_comes_back_apart(serve: Any) -> None:
    server = serve(Thought("Six sevens make forty-two.", "The answer is 42."))
    e = engine(server.base, "enable_thinking", "thinking_token_budget")
    assert e.takes_think_budget and not engine(server.base).takes_think_budget
    (reply,) = e.generate([Message("user", "6*7?")], max_tokens=64, think_budget=128)
    assert reply.reasoning == "Six sevens make forty-two." and reply.text == "The answer is 42."
    body = server.requests[-1]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["thinking_token_budget"] == 128
    e.generate([Message("user", "6*7?")], max_tokens=64)  # no budget: the server is not told
    assert "chat_template_kwargs" not in server.requests[-1]
    streamed, completion = drain(
        e.stream([Message("user", "6*7?")], max_tokens=64, think_budget=0)
    )
    assert streamed == ["The answer is 42."]  # the thinking is not the answer's stream
    assert completion.reasoning == "Six sevens make forty-two. "
    assert completion.completion_tokens == 40  # the server's count, thinking included
    assert server.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_cot_tells_the_server_its_budget_and_keeps_the_thinking_as_rationale(
    serve: Any,
) -> None:
    server = serve(Thought("Six sevens make forty-two.", "The answer is 42."))
    ledger = Ledger()
    attempt = ChainOfThought(think_budget=256).run(
        Query("What is 6*7?", kind="number"),
        context(engine(server.base, "thinking_token_budget"), ledger),
    )
    assert attempt.answer == "42"
    assert attempt.rationale == "Six sevens make forty-two.\nThe answer is 42."
    (body,) = server.requests
    # thinking capped by the server; the reply has the budget and max_tokens for the answer
    assert body["thinking_token_budget"] == 256 and body["max_tokens"] == 256 + 100
    (call,) = ledger.totals().calls
    assert call.completion_tokens == 40  # thinking and answer, as the server counts them


def test_when_thinking_takes_the_whole_reply_the_answer_is_forced_with_thinking_off(
    serve: Any,
) -> None:
    server = serve(
        Thought("Six sevens... let me check again, six sevens", "", finish="length"),
        Thought("", "The answer is 42."),
    )
    ledger = Ledger()
    e = engine(server.base, "enable_thinking")
    attempt = ChainOfThought(think_budget=64).run(
        Query("What is 6*7?", kind="number"), context(e, ledger)
    )
    assert attempt.answer == "42" and "[thinking budget reached]" in attempt.rationale
    first, forced = server.requests
    assert first["chat_template_kwargs"] == {"enable_thinking": True}
    assert forced["chat_template_kwargs"] == {"enable_thinking": False}
    # the thinking so far is handed back as the assistant's turn, then the answer asked for
    assert forced["messages"][-2] == {"role": "assistant",
                                      "content": "Six sevens... let me check again, six sevens"}
    assert [c.detail for c in ledger.totals().calls] == ["cot", "cot: answer"]


def test_an_engine_not_told_how_to_take_a_budget_gets_none(serve: Any) -> None:
    """Without `thinking` in its config, cot caps and forces the reasoning itself, as for a
    local model, and the server sees no thinking fields."""
    server = serve(Thought("", "Six sevens. The answer is 42."))
    attempt = ChainOfThought(think_budget=256).run(
        Query("What is 6*7?", kind="number"), context(engine(server.base), Ledger())
    )
    assert attempt.answer == "42"
    (body,) = server.requests
    assert body["max_tokens"] == 256
    assert not {"chat_template_kwargs", "thinking_token_budget", "reasoning_effort"} & set(body)


def test_a_budget_keys_the_completion_cache_apart_only_when_set() -> None:
    plain = cache_key("m", [Message("user", "q")], 64, 0.0, 1, None, 0, False)
    assert plain == cache_key("m", [Message("user", "q")], 64, 0.0, 1, None, 0, False,
                              think_budget=None)  # fmt: skip
    assert plain != cache_key("m", [Message("user", "q")], 64, 0.0, 1, None, 0, False,
                              think_budget=128)  # fmt: skip
