"""`apportion serve --deterministic`, and `"apportion": {"deterministic": true}` per request:
the same greedy request gives the same answer whatever the server ran before (issue 18's
check). Without it llama.cpp reuses the cached prompt prefix of the previous request, and on
some CPUs (AMD EPYC, AVX2) that flips a greedy token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from server.support import serve_process

pytestmark = pytest.mark.model

HELLO = [{"role": "user", "content": "Say hello."}]
OTHERS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Name three colours."}],
]


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[openai.OpenAI]:
    with serve_process(
        "--model", "smollm2-135m", "--threads", "1", "--keys-db", str(tmp_path / "keys.db"),
        "--log-level", "warning", *args,
    ) as (url, _):  # fmt: skip
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, messages: Any, **extra: Any) -> str:
    resp = client.chat.completions.create(
        model="direct", messages=messages, max_tokens=64, temperature=0, **extra
    )
    return resp.choices[0].message.content or ""


def test_serve_deterministic_answers_alike_whatever_ran_before(tmp_path: Path) -> None:
    with serving(tmp_path, "--deterministic") as client:
        first = ask(client, HELLO)
        for messages in OTHERS:
            ask(client, messages)
        assert first and ask(client, HELLO) == first


def test_a_request_asks_for_determinism_in_the_apportion_object(tmp_path: Path) -> None:
    deterministic = {"extra_body": {"apportion": {"deterministic": True}}}
    with serving(tmp_path) as client:
        first = ask(client, HELLO, **deterministic)
        for messages in OTHERS:
            ask(client, messages)
        assert first and ask(client, HELLO, **deterministic) == first
        with pytest.raises(openai.BadRequestError, match="deterministic"):
            ask(client, HELLO, extra_body={"apportion": {"deterministic": "yes"}})
