"""In-process llama.cpp engine (llama-cpp-python). One model load per engine object."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from apportion.engines.base import GenerationCancelled
from apportion.engines.cpu import choose_extra_buffers
from apportion.engines.layers import Call, Layer
from apportion.errors import ContextOverflowError, EngineError
from apportion.ledger import ModelCost
from apportion.types import Completion, Message

# Below this many free tokens we refuse rather than return a truncated stub.
MIN_COMPLETION_TOKENS = 8
# The longest cached prompt whose KV entries are kept for an adapter while another one is in
# use (about 12 KB a token for Qwen2.5-0.5B; see `_apply_adapter`).
MAX_KEPT_PROMPT_TOKENS = 2048

# llama-cpp-python's Llama builds its model parameters from llama_model_default_params()
# and exposes no `use_extra_bufts`; loads that need it off swap that function for the length
# of the load, one load at a time.
_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def model_params(*, use_extra_bufts: bool) -> Iterator[None]:
    """Loads inside this block get `use_extra_bufts` set as asked."""
    import llama_cpp.llama_cpp as native

    with _LOAD_LOCK:
        original = native.llama_model_default_params

        def with_setting() -> Any:
            params = original()
            params.use_extra_bufts = use_extra_bufts
            return params

        native.llama_model_default_params = with_setting
        try:
            yield
        finally:
            native.llama_model_default_params = original


def default_threads() -> int:
    """Threads for generation: the cores not already busy.

    On a loaded 2-core box, asking for 2 threads made llama.cpp's threads wait on each other
    (16 tok/s vs 41 tok/s with 1 thread, measured), so count only the free cores.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


class _LogprobRecorder:
    """A logits processor that records the log-probability of each sampled token.

    llama-cpp-python only returns logprobs with `logits_all=True`, which made generation ~13x
    slower. Instead: at each step, the processor sees the token chosen at the previous step (the
    last of `input_ids`) and the logits it was chosen from (kept from the previous call). The
    final token's log-probability is not seen, since no call follows it.
    """

    def __init__(self) -> None:
        self.values: list[float] = []
        self.tokens: list[int] = []  # the token of each value
        self._prev: np.ndarray[Any, Any] | None = None

    def __call__(self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> Any:
        if self._prev is not None:
            token = int(input_ids[-1])
            self.values.append(float(self._prev[token]))
            self.tokens.append(token)
        top = float(np.max(scores))
        log_z = top + math.log(float(np.sum(np.exp(scores - top))))
        self._prev = scores - log_z
        return scores


class _TokenCounter:
    """A logits processor that counts sampling steps.

    Streamed completions carry no usage, and re-tokenizing the text need not give back the
    tokens that were sampled; the processor runs once per sampled token, including an
    end-of-generation token, which the non-streamed usage does not count.
    """

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> Any:
        self.steps += 1
        return scores


class LlamaCppEngine:
    """A GGUF model loaded once; calls are serialised (llama.cpp contexts are not thread-safe)."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        seed: int = 0,
        extra_buffers: bool | None = None,
    ) -> None:
        """`extra_buffers`: load with llama.cpp's extra buffer types (engines/cpu.py); None
        decides as `extra_buffers = "auto"` does, off where llama.cpp's AMX path would run,
        so that an engine built here directly (a test, a benchmark) cannot crash at its first
        decode on such a CPU."""
        try:
            from llama_cpp import Llama
        except ImportError as e:  # the `local` extra is optional
            raise EngineError(
                "llama-cpp-python is not installed", "pip install 'apportion[local]'"
            ) from e
        self._model_id = model_id
        self._lock = threading.Lock()
        # LoRA adapters loaded on this model (by file), and the one the context now applies.
        self._adapters: dict[Path, Any] = {}
        self._active_adapter: Path | None = None
        # Per adapter (None: the base alone), the prompt cache it left when another came in.
        self._kept: dict[Path | None, tuple[list[int], Any]] = {}
        self.threads = threads or default_threads()
        if extra_buffers is None:
            extra_buffers = choose_extra_buffers("auto").enabled
        self.extra_buffers = extra_buffers
        try:
            with model_params(use_extra_bufts=extra_buffers):
                self._llm = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    seed=seed,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama.cpp could not load {path}: {e}") from e
        meta: dict[str, str] = dict(self._llm.metadata)
        arch = meta.get("general.architecture", "")
        n_layers = meta.get(f"{arch}.block_count")
        d_model = meta.get(f"{arch}.embedding_length")
        self._formatter = self._template_formatter()
        # What each generation evaluated: the first eval of a call is the prompt's tokens that
        # the KV cache did not hold (llama-cpp-python keeps the prefix it shares with the last
        # call), so the prompt tokens read from cache are measured, not inferred.
        self._evals: list[int] = []
        evaluate = self._llm.eval

        def counted(tokens: Sequence[int]) -> None:
            self._evals.append(len(tokens))
            evaluate(tokens)

        self._llm.eval = counted  # type: ignore[method-assign]
        self._warm_up()
        self._cost = ModelCost(
            model_id=model_id,
            params=float(self._llm._model.n_params()),
            n_layers=int(n_layers) if n_layers else None,
            d_model=int(d_model) if d_model else None,
            local=True,
        )

    def _warm_up(self) -> None:
        """One forward pass at load, so the first request does not pay for faulting in the
        weights and allocating compute buffers (seconds on a cold page cache), which would
        also make it look far slower than the model is (engines/speed.py measures calls)."""
        tokens = self._llm.tokenize(b" OK", add_bos=False, special=False)
        if tokens:
            self._llm.eval(tokens[:1])
        self._llm.reset()  # type: ignore[no-untyped-call]

    def _template_formatter(self) -> Any:
        """The formatter llama-cpp-python itself builds from `tokenizer.chat_template`."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template or self._llm.chat_format != "chat_template.default":
            return None
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        model = self._llm._model
        return Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def cost(self) -> ModelCost:
        return self._cost

    @property
    def context_size(self) -> int:
        return int(self._llm.n_ctx())

    @property
    def trained_context(self) -> int:
        """The context length the model was trained on: the most `n_ctx` should be."""
        return int(self._llm._model.n_ctx_train())

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """Tokenize exactly as create_chat_completion will: the GGUF's own chat template."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        if self._formatter is None:
            text = "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant: "
            return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        result = self._formatter(messages=chat)
        return list(
            self._llm.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        )

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_tokens(messages))

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
        reuse_prefix: bool = True,
        adapter: Path | None = None,
    ) -> list[Completion]:
        """See TextEngine.generate; `adapter`: a LoRA adapter loaded with `with_adapter` to
        generate with, None for the base model alone."""
        max_tokens, _ = self._fit(messages, max_tokens)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        out: list[Completion] = []
        with self._lock:
            self._apply_adapter(adapter)
            for i in range(n):
                recorder = _LogprobRecorder() if logprobs else None
                kwargs: dict[str, Any] = {}
                if recorder is not None:
                    from llama_cpp import LogitsProcessorList

                    kwargs["logits_processor"] = LogitsProcessorList([recorder])
                if not reuse_prefix:
                    self._llm.reset()  # type: ignore[no-untyped-call]  # read the whole prompt
                self._evals.clear()
                try:
                    resp: Any = self._llm.create_chat_completion(
                        messages=chat,  # type: ignore[arg-type]
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=list(stop) if stop else None,
                        seed=None if seed is None else seed + i,
                        **kwargs,
                    )
                except ValueError as e:
                    raise EngineError(f"llama.cpp generation failed: {e}") from e
                choice = resp["choices"][0]
                usage = resp["usage"]
                prompt_tokens = int(usage["prompt_tokens"])
                out.append(
                    Completion(
                        text=choice["message"]["content"] or "",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=int(usage["completion_tokens"]),
                        finish_reason=str(choice.get("finish_reason") or "stop"),
                        token_logprobs=tuple(recorder.values) if recorder else None,
                        token_texts=self._token_texts(recorder.tokens) if recorder else None,
                        cached_tokens=self._cached(prompt_tokens),
                    )
                )
        return out

    def _token_texts(self, tokens: Sequence[int]) -> tuple[str, ...]:
        """Each token's text on its own (a character split across tokens reads as U+FFFD in
        each part: only ever used to find a span, never as the reply)."""
        return tuple(
            self._llm.detokenize([t]).decode("utf-8", errors="replace")
            for t in tokens
        )

    def _cached(self, prompt_tokens: int) -> int:
        """Of the last call's `prompt_tokens`, those taken from the KV cache: the rest were
        the call's first evaluation."""
        if not self._evals:
            return 0
        return max(prompt_tokens - self._evals[0], 0)

    def _fit(self, messages: Sequence[Message], max_tokens: int) -> tuple[int, int]:
        """`max_tokens` clipped to the room the prompt leaves, and the prompt's tokens; refuses
        a prompt that leaves almost none rather than return a truncated stub."""
        if max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {max_tokens}")
        prompt_tokens = self.count_tokens(messages)
        room = self.context_size - prompt_tokens
        if room < MIN_COMPLETION_TOKENS:
            trained = self.trained_context
            raise ContextOverflowError(
                f"the prompt takes {prompt_tokens} tokens; {self.model_id} was loaded with a "
                f"{self.context_size}-token context",
                f"shorten the question, or raise the context size with --n-ctx N or "
                f"n_ctx = N in the config (up to {trained:,}, what {self.model_id} was trained on)"
                if trained > self.context_size
                else f"shorten the question: {self.model_id} was trained on {trained:,} tokens",
            )
        return min(max_tokens, room), prompt_tokens

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        reuse_prefix: bool = True,
        adapter: Path | None = None,
    ) -> Generator[str, None, Completion]:
        """One sample, piece by piece (see TextEngine.stream). The same prompt, parameters and
        seed, from the same cache state, give the same text and token counts as `generate`.
        `adapter` as in `generate`."""
        from llama_cpp import LogitsProcessorList

        max_tokens, prompt_tokens = self._fit(messages, max_tokens)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        counter = _TokenCounter()
        pieces: list[str] = []
        finish = "stop"
        # Held across yields: the context is busy until this generation ends or is closed.
        chunks: Any = None
        with self._lock:
            self._apply_adapter(adapter)
            if not reuse_prefix:
                self._llm.reset()  # type: ignore[no-untyped-call]
            self._evals.clear()
            try:
                chunks = self._llm.create_chat_completion(
                    messages=chat,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=list(stop) if stop else None,
                    seed=seed,
                    stream=True,
                    logits_processor=LogitsProcessorList([counter]),
                )
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    piece = choice["delta"].get("content")
                    if not piece:
                        continue
                    pieces.append(piece)
                    try:
                        yield piece
                    except GenerationCancelled:
                        finish = "cancelled"
                        break
            except ValueError as e:
                raise EngineError(f"llama.cpp generation failed: {e}") from e
            finally:
                # Stop llama.cpp's generator now, not when it is garbage-collected.
                if chunks is not None:
                    chunks.close()
            cached = self._cached(prompt_tokens)  # read before the next call clears it
        steps = counter.steps
        # A "stop" without stop strings was an end-of-generation token: sampled, so counted
        # above, but not part of the completion (as in the non-streamed usage). With stop
        # strings the reason is ambiguous and the count may include that one token.
        if finish == "stop" and not stop and steps > 0:
            steps -= 1
        return Completion(
            text="".join(pieces),
            prompt_tokens=prompt_tokens,
            completion_tokens=steps,
            finish_reason=finish,
            cached_tokens=cached,
        )

    # -- LoRA experts ------------------------------------------------------------------------

    def with_adapter(self, expert: str, path: Path, adapter_params: float) -> AdaptedEngine:
        """This model served with the LoRA adapter at `path` (a GGUF adapter file), as the
        engine of `expert`: it shares the loaded weights, context and lock with this one, and
        the adapter is switched in per call. The adapter is loaded once."""
        import llama_cpp

        path = path.resolve()
        with self._lock:
            if path not in self._adapters:
                handle = llama_cpp.llama_adapter_lora_init(
                    self._llm._model.model, str(path).encode("utf-8")
                )
                if not handle:
                    raise EngineError(
                        f"llama.cpp could not load the adapter of expert {expert!r} ({path}) "
                        f"on {self.model_id}",
                        "check that the expert was trained on this model: "
                        f"apportion experts show {expert}",
                    )
                # freed with the model (llama.cpp owns adapters loaded on it)
                self._adapters[path] = handle
        return AdaptedEngine(self, expert, path, adapter_params)

    def _apply_adapter(self, adapter: Path | None) -> None:
        """Make the context apply `adapter` (None: none), under the lock.

        KV entries computed under one adapter are wrong under another, so the prompt cache
        cannot carry over a switch. Instead, each adapter's cache is put aside when another
        comes in and put back when it returns: without that, every switch made the next
        request read its shared prompt prefix again (+1.16 s a request with the direct prompt
        on Qwen2.5-0.5B here; the switch itself takes 0.7 ms: benchmarks/expert_switch.py)."""
        if adapter == self._active_adapter:
            return
        import llama_cpp

        ctx = self._llm._ctx.ctx
        kept = self._keep_prompt_cache()
        if kept is not None:
            self._kept[self._active_adapter] = kept
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            status = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if status != 0:
            raise EngineError(f"llama.cpp could not switch LoRA adapters (status {status})")
        self._active_adapter = adapter
        self._restore_prompt_cache(self._kept.pop(adapter, None))

    def _keep_prompt_cache(self) -> tuple[list[int], Any] | None:
        """The cached prompt's tokens and their KV entries (sequence 0), or None."""
        import llama_cpp

        n = int(self._llm.n_tokens)
        if n == 0 or n > MAX_KEPT_PROMPT_TOKENS:
            return None
        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0) != size:
            return None
        return [int(t) for t in self._llm.input_ids[:n]], buffer

    def _restore_prompt_cache(self, kept: tuple[list[int], Any] | None) -> None:
        """Put back a cache from `_keep_prompt_cache`; with none, start from an empty one."""
        import llama_cpp

        self._llm.reset()  # type: ignore[no-untyped-call]
        ctx = self._llm._ctx.ctx
        # the cells only: zeroing the buffers too (data=True) took 7 ms a switch, for nothing
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)
        if kept is None:
            return
        tokens, buffer = kept
        if llama_cpp.llama_state_seq_set_data(ctx, buffer, len(buffer), 0) != len(buffer):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)
            return
        self._llm.input_ids[: len(tokens)] = tokens
        self._llm.n_tokens = len(tokens)
        # the logits in hand are not those of the last cached token: generation re-reads it
        self._llm._requires_eval = True

    def close(self) -> None:
        close = getattr(self._llm, "close", None)
        if callable(close):
            close()


class AdaptedEngine(Layer):
    """A loaded llama.cpp model served with one LoRA adapter (an expert; see
    `LlamaCppEngine.with_adapter`): a layer over the base engine whose calls carry the
    adapter. Its model id is the expert's name; its cost is the base model's plus the
    adapter's parameters, and names the expert, so the ledger charges both."""

    def __init__(
        self, base: LlamaCppEngine, expert: str, path: Path, adapter_params: float
    ) -> None:
        super().__init__(base)
        self.adapter = path
        self._model_id = expert
        self._cost = replace(base.cost, expert=expert, adapter_params=float(adapter_params))

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def cost(self) -> ModelCost:
        return self._cost

    def call(self, c: Call) -> list[Completion]:
        return c.generate_on(self.inner, adapter=self.adapter)

    def open(self, c: Call) -> Generator[str, None, Completion]:
        return c.stream_on(self.inner, adapter=self.adapter)
