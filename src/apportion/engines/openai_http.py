"""An engine for any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama, APIs."""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Sequence
from typing import Any

import httpx

from apportion.config import RemoteEngineConfig
from apportion.engines.base import GenerationCancelled
from apportion.errors import ContextOverflowError, EngineError
from apportion.ledger import ModelCost
from apportion.types import Completion, Message

# Without a tokenizer we can only estimate prompt length; ~4 characters per token is the usual
# rule of thumb for English. The server's reported usage is what gets charged.
CHARS_PER_TOKEN = 4


class OpenAIHttpEngine:
    """Calls `/v1/chat/completions`; charges the `usage` the server reports.

    Servers that omit `usage` (llama.cpp's server does for streamed replies) are metered by the
    estimate above, never charged zero.
    """

    def __init__(self, config: RemoteEngineConfig, *, client: httpx.Client | None = None) -> None:
        self.config = config
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise EngineError(
                    f"engine {config.id!r} needs an API key in ${config.api_key_env}",
                    f"export {config.api_key_env}=...",
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.Client(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s
        )
        self._cost = ModelCost(
            model_id=config.id,
            params=config.params,
            n_layers=config.n_layers,
            d_model=config.d_model,
            local=False,
            usd_per_m_prompt=config.usd_per_m_prompt,
            usd_per_m_completion=config.usd_per_m_completion,
            joules_per_flop=config.joules_per_flop,
        )

    @property
    def model_id(self) -> str:
        return self.config.id

    @property
    def cost(self) -> ModelCost:
        return self._cost

    @property
    def context_size(self) -> int:
        return self.config.context

    def count_tokens(self, messages: Sequence[Message]) -> int:
        # Role markers add a few tokens per message in every chat template.
        return sum(len(m.content) // CHARS_PER_TOKEN + 4 for m in messages)

    def _check_fits(self, messages: Sequence[Message]) -> None:
        estimate = self.count_tokens(messages)
        if estimate >= self.context_size:
            raise ContextOverflowError(
                f"the prompt takes about {estimate} tokens; {self.model_id} has a "
                f"{self.context_size}-token context",
                "shorten the question",
            )

    def generate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> list[Completion]:
        self._check_fits(messages)
        out: list[Completion] = []
        # One request per sample: many servers ignore or reject n > 1.
        for i in range(n):
            body: dict[str, Any] = {
                "model": self.config.model,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            if stop:
                body["stop"] = list(stop)
            if seed is not None:
                body["seed"] = seed + i
            if logprobs:
                body["logprobs"] = True
            out.append(self._post(body, messages))
        return out

    def _post(self, body: dict[str, Any], messages: Sequence[Message]) -> Completion:
        try:
            resp = self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise EngineError(
                f"engine {self.model_id!r} at {self.config.base_url} is unreachable: {e}",
                "check that the server is running and base_url ends in /v1",
            ) from e
        if resp.status_code >= 400:
            raise EngineError(
                f"engine {self.model_id!r} answered HTTP {resp.status_code}: {resp.text[:300]}"
            )
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise EngineError(f"engine {self.model_id!r} sent a malformed reply: {e}") from e
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        token_logprobs = None
        content_lp = (choice.get("logprobs") or {}).get("content")
        if content_lp:
            token_logprobs = tuple(float(t["logprob"]) for t in content_lp if "logprob" in t)
        return Completion(
            text=text,
            prompt_tokens=int(prompt_tokens)
            if prompt_tokens is not None
            else self.count_tokens(messages),
            completion_tokens=int(completion_tokens)
            if completion_tokens is not None
            else max(1, len(text) // CHARS_PER_TOKEN),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            token_logprobs=token_logprobs,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generator[str, None, Completion]:
        """One sample over server-sent events (see TextEngine.stream).

        Charges the server's `usage` when a chunk carries it (we ask with `include_usage`);
        llama.cpp's server never sends it when streaming, so then the prompt is estimated as in
        `count_tokens` and each content-bearing chunk counts as one generated token (servers
        send one chunk per token).
        """
        self._check_fits(messages)
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        pieces: list[str] = []
        content_chunks = 0
        usage: dict[str, Any] = {}
        finish = "stop"
        cancelled = False
        try:
            # Leaving this block closes the connection, which is how a server learns to stop.
            with self._client.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise EngineError(
                        f"engine {self.model_id!r} answered HTTP {resp.status_code}: "
                        f"{resp.text[:300]}"
                    )
                for line in resp.iter_lines():
                    data = line[5:].strip() if line.startswith("data:") else ""
                    if not data:
                        continue
                    if data == "[DONE]":
                        break
                    chunk = self._parse_chunk(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                        piece = (choice.get("delta") or {}).get("content")
                        if not piece:
                            continue
                        pieces.append(piece)
                        content_chunks += 1
                        try:
                            yield piece
                        except GenerationCancelled:
                            cancelled = True
                            break
                    if cancelled:
                        finish = "cancelled"
                        break
        except httpx.HTTPError as e:
            raise EngineError(
                f"engine {self.model_id!r} at {self.config.base_url} is unreachable: {e}",
                "check that the server is running and base_url ends in /v1",
            ) from e
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return Completion(
            text="".join(pieces),
            prompt_tokens=int(prompt_tokens)
            if prompt_tokens is not None
            else self.count_tokens(messages),
            completion_tokens=int(completion_tokens)
            if completion_tokens is not None
            else content_chunks,
            finish_reason=finish,
        )

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError as e:
            raise EngineError(f"engine {self.model_id!r} sent a malformed chunk: {e}") from e
        if not isinstance(chunk, dict):
            raise EngineError(f"engine {self.model_id!r} sent a malformed chunk: {data[:200]}")
        if chunk.get("error"):
            raise EngineError(f"engine {self.model_id!r} failed mid-stream: {chunk['error']}")
        return chunk

    def close(self) -> None:
        self._client.close()
