"""What llama.cpp's extra buffer types (weight repacking, AMX) are worth on this machine.

`[llamacpp] extra_buffers = "auto"` turns them off where llama.cpp would take its AMX path
(engines/cpu.py); this measures what that costs, and what "off" costs anywhere else. Each
model is loaded once per setting; the settings alternate, round after round, so a busy
machine slows both alike. Prompt speed comes from a one-token call on a fresh context
(prefill only); generation speed from the rest of a longer call.

    python benchmarks/extra_buffers.py --model qwen2.5-coder-0.5b --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.engines.cpu import cpu_flags, probe_amx
from apportion.engines.llamacpp import LlamaCppEngine
from apportion.types import Message

PROMPT = [
    Message("system", "You are a careful assistant."),
    Message(
        "user",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May? "
        "Explain each step of your reasoning before you give the final number. " * 3,
    ),
]


def measure(engine: LlamaCppEngine, max_tokens: int) -> tuple[float, float]:
    """(prompt tokens per second, generated tokens per second), both from a fresh context."""
    started = time.perf_counter()
    (first,) = engine.generate(PROMPT, max_tokens=1, reuse_prefix=False)
    prefill_s = time.perf_counter() - started
    started = time.perf_counter()
    (full,) = engine.generate(PROMPT, max_tokens=max_tokens, reuse_prefix=False)
    total_s = time.perf_counter() - started
    decode_s = max(total_s - prefill_s, 1e-9)
    return first.prompt_tokens / prefill_s, max(full.completion_tokens - 1, 1) / decode_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model id (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    settings = Settings.load()
    flags = cpu_flags()
    print(f"CPU: {' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx'))))}")
    print(f"AMX probe: {probe_amx().describe()}")
    for model_id in args.model or ["qwen2.5-coder-0.5b"]:
        path = catalogue.resolve(model_id, settings.models_dir)
        engines = {
            on: LlamaCppEngine(model_id, path, n_ctx=2048, threads=args.threads, extra_buffers=on)
            for on in (True, False)
        }
        samples: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        measure(engines[True], 8)  # warm the page cache and the kernels
        measure(engines[False], 8)
        for _ in range(args.rounds):
            for on in (True, False):
                samples[on].append(measure(engines[on], args.max_tokens))
        for on in (True, False):
            prompt = statistics.median(s[0] for s in samples[on])
            gen = statistics.median(s[1] for s in samples[on])
            print(
                f"{model_id}  extra_buffers={'on ' if on else 'off'}  "
                f"prompt {prompt:7.1f} tok/s  generation {gen:6.1f} tok/s  "
                f"(median of {args.rounds}, {args.threads} thread(s))"
            )
        for engine in engines.values():
            engine.close()


if __name__ == "__main__":
    main()
