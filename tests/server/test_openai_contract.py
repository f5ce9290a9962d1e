"""The OpenAI streaming and parameter contract, through the official `openai` client on a live
server: the usage chunk only with include_usage, the same ledger streamed or not, the role
chunk at once with progress while non-streaming strategies work, `stop` on every route, and
a 400 `unsupported_parameter` for every parameter that is not honoured."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.config import Settings
from apportion.server.app import create_app
from server.support import FakeEngine, fake_core, live_server

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "Say something."}]
ARITHMETIC = [{"role": "user", "content": "What is 17*23+5?"}]
PROGRAM = "```python\ndef solve():\n    return 6 * 7\n```"


def _ext(obj: Any) -> dict[str, Any]:
    """The `apportion` extension object of a response or chunk."""
    return dict((obj.model_extra or {}).get("apportion") or {})


@pytest.fixture(scope="module")
def fake_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    core = fake_core(tmp_path_factory.mktemp("contract"), FakeEngine("The answer is 7."))
    with live_server(create_app(core.settings, engine=core)) as url:
        yield url


@pytest.fixture(scope="module")
def client(fake_url: str) -> Any:
    return openai.OpenAI(base_url=f"{fake_url}/v1", api_key="unused", max_retries=0)


# -- the usage chunk -----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["direct", "cot", "apportion-auto", "consistency:n=2,rule=fixed"])
def test_the_plain_client_loop_works_on_every_route(client: Any, model: str) -> None:
    """`for chunk in stream: print(chunk.choices[0].delta.content or "")` never raises."""
    messages = ARITHMETIC if model == "apportion-auto" else QUESTION
    stream = client.chat.completions.create(model=model, messages=messages, stream=True)
    printed = io.StringIO()
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        print(chunk.choices[0].delta.content or "", file=printed, end="")
    assert printed.getvalue().strip()
    assert all(len(c.choices) == 1 for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    # without include_usage the apportion object rides on the finish chunk
    assert _ext(last)["ledger"]["flops"] >= 0 and _ext(last)["strategy"]


def test_include_usage_ends_with_a_usage_chunk_as_openai_does(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model="direct",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + 4
    assert _ext(last)["strategy"] == "direct"
    assert all(c.usage is None for c in chunks[:-1])
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert not _ext(chunks[-2])  # the apportion object is in the last chunk only


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_ledger_is_the_non_streamed_ledger(client: Any, include_usage: bool) -> None:
    ledger = {"apportion": {"return_ledger": True}}
    plain = client.chat.completions.create(
        model="consistency:n=3,rule=fixed", messages=QUESTION, extra_body=ledger
    )
    options = {"include_usage": True} if include_usage else None
    chunks = list(
        client.chat.completions.create(
            model="consistency:n=3,rule=fixed",
            messages=QUESTION,
            stream=True,
            stream_options=options,
            extra_body=ledger,
        )
    )
    streamed = _ext(chunks[-1])["ledger"]
    expected = _ext(plain)["ledger"]
    assert streamed["calls"] is not None and len(streamed["calls"]) == 3
    keys = ("prompt_tokens", "completion_tokens", "flops")
    assert [[c[k] for k in keys] for c in streamed["calls"]] == [
        [c[k] for k in keys] for c in expected["calls"]
    ]
    assert streamed["flops"] == expected["flops"]


# -- opening at once, and progress ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reply"),
    [
        ("program", PROGRAM),
        ("consistency:n=3,rule=fixed", "Thinking about it here. The answer is 7."),
        ("best_of_n:n=2", "Thinking about it here. The answer is 7."),
    ],
)
def test_role_chunk_and_progress_arrive_while_the_strategy_works(
    tmp_path: Path, model: str, reply: str
) -> None:
    engine = FakeEngine(reply, delay_s=0.15)  # every call takes a second or more
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model=model, messages=QUESTION, stream=True)
        first = next(iter(stream))
        # the role chunk came while the first model call was still generating
        assert first.choices[0].delta.role == "assistant"
        assert engine.tokens_generated < len(reply.split(" "))
        rest = list(stream)
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in rest)
    content = "".join(c.choices[0].delta.content or "" for c in rest)
    assert "[fake]" in reasoning  # a model call started
    assert "tokens on fake" in reasoning  # a model call was charged
    progress = [_ext(c) for c in rest if _ext(c).get("event") == "progress"]
    assert progress and progress[0]["call"] == "fake"
    assert content in ("42", "7")


def test_solver_route_streams_progress_then_the_answer(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(model="apportion-auto", messages=ARITHMETIC, stream=True)
    )
    reasoning = "".join(
        c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks
    )
    assert "sympy" in reasoning
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "396"


# -- stop ---------------------------------------------------------------------------------------


def test_stop_ends_a_direct_answer_whatever_the_engine_does(tmp_path: Path) -> None:
    engine = FakeEngine("alpha beta gamma delta")  # ignores stop sequences
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        plain = client.chat.completions.create(model="direct", messages=QUESTION, stop="gam")
        assert plain.choices[0].message.content == "alpha beta "
        assert plain.choices[0].finish_reason == "stop"
        assert engine.stops[-1] == ("gam",)  # handed to the engine too
        chunks = list(
            client.chat.completions.create(
                model="direct", messages=QUESTION, stop=["zzz", "a d"], stream=True
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == "alpha beta gamm"
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_cuts_the_answer_of_other_routes_but_not_their_reasoning(tmp_path: Path) -> None:
    engine = FakeEngine("Six sevens are 42. The answer is 42.")
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(model="cot", messages=QUESTION, stop=["2"])
        assert resp.choices[0].message.content == "4"
        assert engine.stops[-1] == ()  # the reasoning was generated in full
        solved = client.chat.completions.create(
            model="apportion-auto", messages=ARITHMETIC, stop=["9"], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in solved) == "3"


@pytest.mark.model
def test_stop_is_honoured_by_llama_cpp(settings: Settings) -> None:
    config = settings.model_copy(update={"default_model": "smollm2-135m", "threads": 1})
    question = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    with live_server(create_app(config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        free = client.chat.completions.create(model="direct", messages=question, max_tokens=40)
        text = free.choices[0].message.content
        # a word from the middle of the free reply (greedy decoding: the same reply)
        stop = next(w for w in text.split()[1:] if text.index(w) > 0)
        cut = client.chat.completions.create(
            model="direct", messages=question, max_tokens=40, stop=[stop]
        )
        assert cut.choices[0].message.content == text[: text.index(stop)].strip()
        assert cut.choices[0].finish_reason == "stop"
        # the engine stopped generating there, so fewer tokens were spent
        assert cut.usage.completion_tokens < free.usage.completion_tokens
        chunks = list(
            client.chat.completions.create(
                model="direct", messages=question, max_tokens=40, stop=[stop], stream=True
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed.strip() == cut.choices[0].message.content


def test_prompt_tokens_served_from_the_kv_cache_are_reported(settings: Settings) -> None:
    """A request sharing a prompt prefix with the one before is served partly from llama.cpp's
    KV cache: usage says how much, as OpenAI's does, and the HTTP engine reads it back."""
    from apportion.config import RemoteEngineConfig
    from apportion.engines.openai_http import OpenAIHttpEngine
    from apportion.types import Message

    config = settings.model_copy(update={"default_model": "smollm2-135m", "threads": 1})
    system = {"role": "system", "content": "You are a careful assistant. " * 8}
    with live_server(create_app(config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(
            model="direct", messages=[system, {"role": "user", "content": "Name a fruit."}],
            max_tokens=4,
        )  # fmt: skip
        again = client.chat.completions.create(
            model="direct", messages=[system, {"role": "user", "content": "Name a colour."}],
            max_tokens=4, extra_body={"apportion": {"return_ledger": True}},
        )  # fmt: skip
        cached = again.usage.prompt_tokens_details.cached_tokens
        assert 0 < cached < again.usage.prompt_tokens
        ledger = _ext(again)["ledger"]
        assert ledger["cached_tokens"] == cached and 0 < ledger["flops_cached"] < ledger["flops"]
        remote = OpenAIHttpEngine(RemoteEngineConfig(
            id="remote", base_url=f"{url}/v1", model="direct", params=134.5e6,
        ))  # fmt: skip
        (reply,) = remote.generate(
            [Message("system", system["content"]), Message("user", "Name a tree.")], max_tokens=4
        )
        remote.close()
    assert 0 < reply.cached_tokens < reply.prompt_tokens


def test_the_http_engine_reads_a_servers_reasoning_apart_from_its_answer(fake_url: str) -> None:
    """apportion serve answers `cot` as a reasoning model's server does: the chain in
    `reasoning_content`, the answer in `content`. Our HTTP engine, pointed at it, keeps the
    two apart, streamed or not, and charges the tokens of both."""
    from apportion.config import RemoteEngineConfig
    from apportion.engines.openai_http import OpenAIHttpEngine
    from apportion.types import Message
    from fakes import drain

    remote = OpenAIHttpEngine(RemoteEngineConfig(
        id="remote", base_url=f"{fake_url}/v1", model="cot", params=1e8,
    ))  # fmt: skip
    question = [Message("user", "Say something.")]
    (reply,) = remote.generate(question, max_tokens=16)
    assert (reply.reasoning, reply.text) == ("The answer is 7.", "7")
    assert reply.completion_tokens == 4  # the fake's four words: the chain's tokens
    shown, streamed = drain(remote.stream(question, max_tokens=16))
    remote.close()
    assert "".join(shown) == "7" and streamed.reasoning.endswith("The answer is 7.")


# -- every parameter honoured or refused ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tools",
        ),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"top_p": 0.5}, "top_p"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"store": True}, "store"),
        ({"extra_body": {"best_of": 3}}, "best_of"),
        ({"extra_body": {"apportion": {"budgt": {}}}}, "apportion.budgt"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    client: Any, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="direct", messages=QUESTION, **kwargs)
    error = info.value.body
    assert error["code"] == "unsupported_parameter", error
    assert error["param"] == param
    assert param.split(".")[0] in error["message"]


def test_neutral_values_of_unsupported_parameters_are_accepted(client: Any) -> None:
    resp = client.chat.completions.create(
        model="direct",
        messages=QUESTION,
        n=1,
        logprobs=False,
        top_p=1,
        presence_penalty=0,
        frequency_penalty=0,
        response_format={"type": "text"},
        tool_choice="none",
        user="tester-7",
        store=False,
    )
    assert resp.choices[0].message.content == "The answer is 7."


def test_temperature_that_a_route_cannot_use_is_noted(client: Any) -> None:
    resp = client.chat.completions.create(model="direct", messages=QUESTION, temperature=0.9)
    assert any("temperature 0.9 is not used" in n for n in _ext(resp)["notes"])
    greedy = client.chat.completions.create(model="direct", messages=QUESTION, temperature=0)
    assert _ext(greedy)["notes"] == []


def test_reasoning_effort_sets_the_thinking_budget_of_cot(tmp_path: Path) -> None:
    """The openai client's `reasoning_effort` caps cot's reasoning (EFFORT_THINK_BUDGETS);
    where it ran out before the final line, the answer is forced, and a route without a
    thinking budget says the effort was not used."""
    from apportion.server.schemas import ReasoningEffort
    from apportion.server.translate import EFFORT_THINK_BUDGETS

    assert set(EFFORT_THINK_BUDGETS) == set(ReasoningEffort.__args__)  # every level maps

    def reply(messages: list[Any]) -> str:
        if messages[-1].content.startswith("Stop thinking now"):
            return "The answer is 4."
        return " ".join(["step"] * 100) + " The answer is 4."

    engine = FakeEngine(reply)
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        capped = client.chat.completions.create(
            model="cot", messages=QUESTION, reasoning_effort="minimal"
        )
        assert _ext(capped)["strategy"] == "cot:think_budget=64"
        assert capped.choices[0].message.content == "4"
        # 64 words of reasoning, then the forced final line
        assert [len(c) for c in engine.calls] == [2, 4]
        assert engine.tokens_generated == 64 + 4
        none = client.chat.completions.create(
            model="cot", messages=QUESTION, reasoning_effort="none"
        )
        assert _ext(none)["strategy"] == "cot:think_budget=0"
        assert none.choices[0].message.content == "4" and len(engine.calls) == 3
        full = client.chat.completions.create(
            model="cot", messages=QUESTION, reasoning_effort="high"
        )
        assert _ext(full)["strategy"] == "cot" and _ext(full)["notes"] == []
        direct = client.chat.completions.create(
            model="direct", messages=QUESTION, reasoning_effort="low"
        )
        assert (
            "reasoning_effort 'low' is not used: direct has no thinking budget"
            in (_ext(direct)["notes"])
        )
        routed = client.chat.completions.create(
            model="apportion-auto", messages=ARITHMETIC, reasoning_effort="low"
        )
        assert any("auto picks each step's own thinking budget" in n for n in _ext(routed)["notes"])
        own = client.chat.completions.create(
            model="cot:think_budget=32", messages=QUESTION, reasoning_effort="medium"
        )
        assert _ext(own)["strategy"] == "cot:think_budget=32"
        assert any("sets its own think_budget" in n for n in _ext(own)["notes"])
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="cot", messages=QUESTION, extra_body={"reasoning_effort": "extreme"}
            )
        assert info.value.body["param"] == "reasoning_effort"


def test_stream_options_without_stream_is_refused(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="direct", messages=QUESTION, stream_options={"include_usage": True}
        )
    assert info.value.body["param"] == "stream_options"


# -- the schema and validation agree ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", False),
        ("seed", "7"),
        ("max_tokens", True),
        ("temperature", True),
        ("stream", "yes"),
        ("n", 1.0),
    ],
)
def test_values_of_the_wrong_json_type_are_refused(fake_url: str, field: str, value: Any) -> None:
    body = {"model": "direct", "messages": QUESTION, field: value}
    r = httpx.post(f"{fake_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    schema = httpx.get(f"{fake_url}/openapi.json").json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    declared = request["properties"][field]
    types = {t.get("type") for t in declared.get("anyOf", [declared])}
    assert {"integer", "number", "boolean"} & types  # and the schema says so
    assert request["additionalProperties"] is False


def test_empty_content_is_valid_before_the_question_and_refused_as_it(fake_url: str) -> None:
    url = f"{fake_url}/v1/chat/completions"
    earlier = [{"role": "system", "content": ""}, {"role": "assistant", "content": ""}, *QUESTION]
    assert httpx.post(url, json={"model": "direct", "messages": earlier}, timeout=30).is_success
    empty_last = [{"role": "user", "content": ""}]
    r = httpx.post(url, json={"model": "direct", "messages": empty_last}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # the schema cannot express the rule, so it says it in words
    schema = httpx.get(f"{fake_url}/openapi.json").json()
    messages = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["messages"]
    assert "last message must be the user's" in messages["description"]


# -- errors mid-stream -----------------------------------------------------------------------


def test_a_failure_after_the_stream_opened_is_an_error_event(tmp_path: Path) -> None:
    """A call that fails after the stream has opened ends it with OpenAI's error event, which
    the official client raises; the server never answers 500."""
    calls = {"n": 0}

    def reply(_: Any) -> str:  # every second call fails
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("engine fell over")
        return "Thinking slowly. The answer is 7."

    engine = FakeEngine(reply, delay_s=0.2)
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        seen = []
        with pytest.raises(openai.APIError) as info:
            for chunk in client.chat.completions.create(
                model="best_of_n:n=2", messages=QUESTION, stream=True
            ):
                seen.append(chunk)
        assert seen and seen[0].choices[0].delta.role == "assistant"
        assert "RuntimeError" in str(info.value)
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions",
            json={"model": "best_of_n:n=2", "messages": QUESTION, "stream": True},
        ) as resp:  # fmt: skip
            assert resp.status_code == 200
            events = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert json.loads(events[-1])["error"]["code"] == "internal_error"


def test_concurrent_streams_each_get_their_own_answer(tmp_path: Path) -> None:
    engine = FakeEngine(lambda msgs: f"reply to {msgs[-1].content}", local=False, delay_s=0.02)
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        got: dict[int, str] = {}

        def ask(i: int) -> None:
            with contextlib.closing(
                client.chat.completions.create(
                    model="direct",
                    messages=[{"role": "user", "content": f"q{i}"}],
                    stream=True,
                )
            ) as stream:
                got[i] = "".join(c.choices[0].delta.content or "" for c in stream)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert got == {i: f"reply to q{i}" for i in range(6)}
