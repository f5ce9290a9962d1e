"""An engine for any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama, APIs.

Transient failures (a refused or dropped connection, a timeout, HTTP 408, 429 and 5xx) are
retried with bounded exponential backoff (`RetryPolicy`), honouring the server's Retry-After;
once the retries are spent the request fails with `EngineUnavailableError`, which a
`FallbackEngine` (engines/fallback.py) answers by sending it to the engine's fallback.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from apportion.config import RemoteEngineConfig
from apportion.engines.base import GenerationCancelled
from apportion.errors import ContextOverflowError, EngineError, EngineUnavailableError
from apportion.ledger import ModelCost
from apportion.types import Completion, Message

# Without a tokenizer we can only estimate prompt length; ~4 characters per token is the usual
# rule of thumb for English. The server's reported usage is what gets charged.
CHARS_PER_TOKEN = 4

# Statuses that say "not now" rather than "not this request": timeout, too many requests, and
# every server-side failure (overloaded, restarting, a proxy that lost its upstream).
RETRY_STATUSES = frozenset({408, 429})


def is_transient_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


# reasoning_effort levels for a think budget: the least level whose bound the budget fits
EFFORT_LEVELS = ((1024, "low"), (8192, "medium"))


def thinking_fields(controls: Sequence[str], think_budget: int) -> dict[str, Any]:
    """The request fields that tell a reasoning model's server how long to think, for the
    controls its engine config names (`thinking`):

    - reasoning_effort: "low" up to 1,024 tokens (and for 0: effort cannot say "none"), then
      "medium" up to 8,192, then "high";
    - enable_thinking: chat_template_kwargs.enable_thinking, false for 0 (Qwen3's switch);
    - thinking_budget: chat_template_kwargs.thinking_budget (templates that define it);
    - thinking_token_budget: vLLM's own field, a hard cap on the thinking tokens.

    cot also caps the reply at the budget plus room for the answer, and forces the answer
    when thinking ran out (strategies/cot.py), whether or not the server honours these."""
    body: dict[str, Any] = {}
    template: dict[str, Any] = {}
    for control in controls:
        if control == "reasoning_effort":
            body["reasoning_effort"] = next(
                (level for bound, level in EFFORT_LEVELS if think_budget <= bound), "high"
            )
        elif control == "enable_thinking":
            template["enable_thinking"] = think_budget > 0
        elif control == "thinking_budget" and think_budget > 0:
            template["thinking_budget"] = think_budget
        elif control == "thinking_token_budget":
            body["thinking_token_budget"] = think_budget
    if template:
        body["chat_template_kwargs"] = template
    return body


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(message: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer) of a reply's message: the server's `reasoning_content` (vLLM's and
    SGLang's reasoning parsers, DeepSeek's API) or `reasoning`, else a <think>…</think> block
    the model wrote into the content itself (a server without a reasoning parser); a block cut
    off before it closed is all reasoning."""
    content = str(message.get("content") or "")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        return str(reasoning), content
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return "", content
    inner = stripped[len(THINK_OPEN):]
    thought, closed, answer = inner.partition(THINK_CLOSE)
    return (thought.strip(), answer.lstrip()) if closed else (inner.strip(), "")


def _cached_tokens(usage: dict[str, Any]) -> int:
    """The prompt tokens a server says it served from its prefix cache (OpenAI's, vLLM's and
    SGLang's `usage.prompt_tokens_details.cached_tokens`); 0 when it does not say."""
    details = usage.get("prompt_tokens_details") or {}
    try:
        return max(int(details.get("cached_tokens") or 0), 0)
    except (TypeError, ValueError, AttributeError):
        return 0


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    Attempt k (k = 1, 2, ...) that fails transiently is followed, after a pause, by attempt
    k + 1, until `max_attempts` were made. The pause is the server's Retry-After when it sends
    one, else a random time in [d/2, d] where d = min(max_delay_s, base_delay_s * 2**(k-1)):
    the jitter keeps clients that failed together from retrying together. No retry starts
    later than `max_wait_s` after the first attempt began: a pause that would end later
    (a long Retry-After, say) is not taken, and the request fails at once instead.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_wait_s: float = 30.0

    @classmethod
    def from_config(cls, config: RemoteEngineConfig) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            base_delay_s=config.retry_base_delay_s,
            max_delay_s=config.retry_max_delay_s,
            max_wait_s=config.retry_max_wait_s,
        )

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt `attempt` (from 1) when the server names none."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)

    def pause_s(
        self, attempt: int, elapsed_s: float, retry_after_s: float | None, rng: random.Random
    ) -> float | None:
        """How long to wait before retrying after failed attempt `attempt`, `elapsed_s` after
        the first began; None when no retry is left (attempts or time)."""
        if attempt >= self.max_attempts:
            return None
        pause = retry_after_s if retry_after_s is not None else self.backoff_s(attempt, rng)
        if elapsed_s + pause > self.max_wait_s:
            return None
        return pause


def retry_after_s(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """The wait a 429 or 503 asks for: `retry-after-ms` (OpenAI's), else `Retry-After` as
    seconds or as an HTTP date. None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _Transient(Exception):
    """One attempt failed in a way worth retrying; carries what to tell the user if none is."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class OpenAIHttpEngine:
    """Calls `/v1/chat/completions`; charges the `usage` the server reports.

    Servers that omit `usage` (llama.cpp's server does for streamed replies) are metered by the
    estimate above, never charged zero. `sleep`, `clock` and `rng` pace the retries; tests
    substitute them.
    """

    def __init__(
        self,
        config: RemoteEngineConfig,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        # a pool gives each replica its own engine; this one serves the first URL
        self.base_url = config.urls()[0]
        self.retry = RetryPolicy.from_config(config)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
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
            base_url=self.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s
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
            expert=config.expert,
            adapter_params=config.adapter_params,
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

    @property
    def takes_think_budget(self) -> bool:
        """True when the config names how this server takes a thinking budget."""
        return bool(self.config.thinking)

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
        reuse_prefix: bool = True,  # the server's prompt cache is not ours to switch off
        think_budget: int | None = None,
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
            if think_budget is not None:
                body.update(thinking_fields(self.config.thinking, think_budget))
            out.append(self._post(body, messages))
        return out

    def _with_retries(self, attempt_once: Callable[[], Any]) -> Any:
        """Run `attempt_once` until it succeeds, raises anything but _Transient, or the retry
        policy says stop; then raise EngineUnavailableError."""
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_once()
            except _Transient as e:
                pause = self.retry.pause_s(
                    attempt, self._clock() - started, e.retry_after, self._rng
                )
                if pause is None:
                    raise self._unavailable(e.message, attempt) from e
            self._sleep(pause)

    def _unavailable(self, message: str, attempts: int) -> EngineUnavailableError:
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        return EngineUnavailableError(
            f"engine {self.model_id!r} at {self.base_url} {message} ({tries})",
            "check that the server is running and base_url ends in /v1, or name a `fallback` "
            "engine for it in the config",
        )

    def _transport_failure(self, e: httpx.HTTPError) -> _Transient:
        return _Transient(f"is unreachable: {type(e).__name__}: {e}")

    def _status_failure(self, resp: httpx.Response) -> Exception:
        text = resp.text[:300]
        if is_transient_status(resp.status_code):
            return _Transient(
                f"answered HTTP {resp.status_code}: {text}", retry_after_s(resp.headers)
            )
        return EngineError(f"engine {self.model_id!r} answered HTTP {resp.status_code}: {text}")

    def _post(self, body: dict[str, Any], messages: Sequence[Message]) -> Completion:
        def attempt_once() -> httpx.Response:
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                raise self._transport_failure(e) from e
            if resp.status_code >= 400:
                raise self._status_failure(resp)
            return resp

        resp: httpx.Response = self._with_retries(attempt_once)
        try:
            data = resp.json()
            choice = data["choices"][0]
            reasoning, text = split_reasoning(choice["message"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise EngineError(f"engine {self.model_id!r} sent a malformed reply: {e}") from e
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        token_logprobs = token_texts = None
        content_lp = (choice.get("logprobs") or {}).get("content")
        if content_lp:
            scored = [t for t in content_lp if "logprob" in t]
            token_logprobs = tuple(float(t["logprob"]) for t in scored)
            if all(isinstance(t.get("token"), str) for t in scored):
                token_texts = tuple(str(t["token"]) for t in scored)
        return Completion(
            text=text,
            prompt_tokens=int(prompt_tokens)
            if prompt_tokens is not None
            else self.count_tokens(messages),
            completion_tokens=int(completion_tokens)
            if completion_tokens is not None
            else max(1, (len(reasoning) + len(text)) // CHARS_PER_TOKEN),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            token_logprobs=token_logprobs,
            token_texts=token_texts,
            cached_tokens=_cached_tokens(usage),
            reasoning=reasoning,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        reuse_prefix: bool = True,  # the server's prompt cache is not ours to switch off
        think_budget: int | None = None,
    ) -> Generator[str, None, Completion]:
        """One sample over server-sent events (see TextEngine.stream).

        Charges the server's `usage` when a chunk carries it (we ask with `include_usage`);
        llama.cpp's server never sends it when streaming, so then the prompt is estimated as in
        `count_tokens` and each content-bearing chunk counts as one generated token (servers
        send one chunk per token).

        Failures before the first piece are retried like `generate`'s; once a piece has gone
        to the caller, a failure ends the stream with EngineUnavailableError (no retry could
        take back what was shown).

        A reasoning model's thinking, sent as `reasoning_content` (or `reasoning`) deltas, is
        kept apart in the Completion's `reasoning`, not yielded: the pieces are the answer.
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
        if think_budget is not None:
            body.update(thinking_fields(self.config.thinking, think_budget))
        pieces: list[str] = []
        thought: list[str] = []
        content_chunks = 0
        usage: dict[str, Any] = {}
        finish: str | None = None
        done = False
        cancelled = False

        def attempt_once() -> tuple[httpx.Response, Any]:
            # Open the stream (status and headers only), so that a refused connection or a
            # failing status is retried before anything reaches the caller.
            try:
                resp = self._client.send(
                    self._client.build_request("POST", "/chat/completions", json=body),
                    stream=True,
                )
            except httpx.HTTPError as e:
                raise self._transport_failure(e) from e
            try:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._status_failure(resp)
                return resp, resp.iter_lines()
            except BaseException:
                resp.close()
                raise

        resp, lines = self._with_retries(attempt_once)
        try:
            # Closing the response is how a server learns to stop.
            with contextlib.closing(resp):
                for line in lines:
                    data = line[5:].strip() if line.startswith("data:") else ""
                    if not data:
                        continue
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = self._parse_chunk(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                        delta = choice.get("delta") or {}
                        thinking = delta.get("reasoning_content") or delta.get("reasoning")
                        if thinking:
                            thought.append(str(thinking))
                            content_chunks += 1  # a token, for the estimate without usage
                        piece = delta.get("content")
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
            raise self._unavailable(
                f"failed mid-stream after {content_chunks} pieces: {type(e).__name__}: {e}", 1
            ) from e
        if not (done or finish or cancelled):
            # The body ended with neither a finish_reason nor [DONE]: the server went away
            # mid-reply (a replica shutting down closes its streams), so the reply is cut
            # short. Unavailable, so that a pool or fallback takes the call elsewhere.
            raise self._unavailable(
                f"the stream ended after {content_chunks} pieces without a finish_reason or "
                "[DONE]: the server stopped mid-reply", 1
            )
        finish = finish or "stop"
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
            cached_tokens=_cached_tokens(usage),
            reasoning="".join(thought),
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
