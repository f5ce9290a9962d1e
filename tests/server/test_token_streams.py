"""The server streams a strategy's tokens by what the strategy declares (`token_stream`), not
by its name: plug-in strategies unlike any built-in get the same treatment as direct and cot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx

from apportion.router.policy import RulePolicy
from apportion.runtime import Engine
from apportion.server.app import create_app
from apportion.strategies.base import RunContext
from apportion.strategies.registry import TokenStream, default_registry
from apportion.types import Attempt, Message, Query
from server.support import FakeEngine, fake_settings, live_server

CHAT = "/v1/chat/completions"
REPLY = "alpha beta gamma delta"


@dataclass(frozen=True)
class Quiet:
    """One call whose text is the answer; the strategy does not say what its tokens are."""

    max_tokens: int | None = None

    always_answers: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "quiet"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        (c,) = ctx.generate([Message("user", query.text)], max_tokens=self.max_tokens)
        return Attempt(self.name, c.text, 0.9, rationale=c.text)


@dataclass(frozen=True)
class Verbatim(Quiet):
    """The same call, declared to be the answer."""

    token_stream: ClassVar[TokenStream] = "answer"

    @property
    def name(self) -> str:
        return "verbatim"


@dataclass(frozen=True)
class Musing(Quiet):
    """One call whose text is reasoning; its last word is the answer."""

    token_stream: ClassVar[TokenStream] = "reasoning"

    @property
    def name(self) -> str:
        return "musing"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        (c,) = ctx.generate([Message("user", query.text)], max_tokens=self.max_tokens)
        return Attempt(self.name, c.text.split()[-1], 0.9, rationale=c.text)


def _core(tmp_path: Path, engine: FakeEngine) -> Engine:
    registry = default_registry([("verbatim", Verbatim), ("quiet", Quiet), ("musing", Musing)])
    core = Engine(
        settings=fake_settings(tmp_path, engine.model_id), registry=registry, policy=RulePolicy()
    )
    core.register(engine)
    return core


def _body(model: str, *, stream: bool, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Go on."}],
        "stream": stream,
        **extra,
    }


def _stream(url: str, body: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """(content, reasoning_content, chunks) of a streamed request."""
    with httpx.stream("POST", url + CHAT, json=body, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        chunks = [
            json.loads(ln[6:])
            for ln in resp.iter_lines()
            if ln.startswith("data: ") and ln != "data: [DONE]"
        ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    return content, reasoning, chunks


def test_the_registry_says_what_each_strategys_tokens_are() -> None:
    registry = default_registry([("verbatim", Verbatim), ("quiet", Quiet), ("musing", Musing)])
    assert registry.token_stream("direct") == "answer"
    assert registry.token_stream("cot:temperature=0.5") == "reasoning"
    assert registry.token_stream("verbatim:max_tokens=3") == "answer"
    assert registry.token_stream("musing") == "reasoning"
    assert registry.token_stream("quiet") is None
    assert registry.token_stream("consistency:n=4") is None
    assert registry.token_stream("none") is None  # what an answer that never ran says


def test_a_plug_in_whose_tokens_are_the_answer_streams_them_as_content(tmp_path: Path) -> None:
    engine = FakeEngine(REPLY)
    with live_server(create_app(fake_settings(tmp_path), engine=_core(tmp_path, engine))) as url:
        content, reasoning, chunks = _stream(url, _body("verbatim", stream=True, stop=["gamma"]))
        # its tokens were the content as they came, up to the stop sequence, which the
        # engine was handed too; nothing is shown as reasoning
        assert content == "alpha beta "
        assert reasoning == ""
        assert engine.stops[-1] == ("gamma",)
        pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert len([p for p in pieces if p]) >= 2  # token by token, not one piece at the end
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

        plain = httpx.post(url + CHAT, json=_body("verbatim", stream=False, max_tokens=2)).json()
        assert plain["choices"][0]["message"]["content"] == "alpha beta"
        assert plain["choices"][0]["message"].get("reasoning_content") is None
        # one call, cut by max_tokens: the answer is that call's tokens, so "length"
        assert plain["choices"][0]["finish_reason"] == "length"


def test_a_plug_in_that_does_not_say_streams_its_work_as_reasoning(tmp_path: Path) -> None:
    engine = FakeEngine(REPLY)
    with live_server(create_app(fake_settings(tmp_path), engine=_core(tmp_path, engine))) as url:
        content, reasoning, chunks = _stream(url, _body("quiet", stream=True, stop=["gamma"]))
        assert content == "alpha beta "  # the answer, cut at the stop sequence, at the end
        assert REPLY in reasoning  # its call's tokens, shown as work in progress
        assert engine.stops[-1] == ()  # the engine is not told: the tokens are not the answer
        assert any(c.get("apportion", {}).get("event") == "progress" for c in chunks)

        plain = httpx.post(url + CHAT, json=_body("quiet", stream=False, max_tokens=2)).json()
        assert plain["choices"][0]["message"]["content"] == "alpha beta"
        assert plain["choices"][0]["finish_reason"] == "stop"


def test_a_plug_in_whose_tokens_are_reasoning_streams_them_so(tmp_path: Path) -> None:
    engine = FakeEngine(REPLY)
    with live_server(create_app(fake_settings(tmp_path), engine=_core(tmp_path, engine))) as url:
        content, reasoning, chunks = _stream(url, _body("musing", stream=True))
        assert reasoning == REPLY
        assert content == "delta"
        assert not any(c.get("apportion", {}).get("event") == "progress" for c in chunks)

        plain = httpx.post(url + CHAT, json=_body("musing", stream=False)).json()
        message = plain["choices"][0]["message"]
        assert message["content"] == "delta"
        assert message["reasoning_content"] == REPLY
