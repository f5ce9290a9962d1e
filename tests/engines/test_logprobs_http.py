"""Token log-probabilities over HTTP: the OpenAI `logprobs.content` a server such as vLLM sends
(each token's text and log-probability) comes back on the completion, texts and all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apportion.config import RemoteEngineConfig
from apportion.engines.openai_http import OpenAIHttpEngine
from apportion.types import Message
from servers import LoopbackChatServer

# (token, logprob): unsure reasoning, a sure answer
TOKENS = [("Half", -1.2), (" of", -0.9), (" 48", -1.5), (" is", -0.7), (" 24", -1.1),
          (".", -0.8), (" The", -0.3), (" answer", -0.1), (" is", -0.1), (" 72", -0.02),
          (".", -0.04)]  # fmt: skip


class LogprobServer(LoopbackChatServer):
    def respond(self, reply: Any, body: dict[str, Any]) -> tuple[int, str, str, dict[str, str]]:
        content = [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                   for t, lp in TOKENS] if body.get("logprobs") else None  # fmt: skip
        payload = json.dumps({
            "choices": [{"message": {"content": "".join(t for t, _ in TOKENS)},
                         "logprobs": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": len(TOKENS)},
        })  # fmt: skip
        return 200, "application/json", payload, {}


@pytest.fixture
def engine() -> Iterator[OpenAIHttpEngine]:
    server = LogprobServer([None])
    config = RemoteEngineConfig(id="remote", base_url=server.base, model="m", params=1e8)
    yield OpenAIHttpEngine(config)
    server.close()


def test_token_texts_come_back_with_their_logprobs(engine: OpenAIHttpEngine) -> None:
    (c,) = engine.generate([Message("user", "q")], max_tokens=32, logprobs=True)
    assert c.token_texts == tuple(t for t, _ in TOKENS)
    assert c.token_logprobs == tuple(lp for _, lp in TOKENS)
    (plain,) = engine.generate([Message("user", "q")], max_tokens=32)
    assert plain.token_texts is None and plain.token_logprobs is None
