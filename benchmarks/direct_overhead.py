"""Wall-time overhead of `Engine.ask(..., strategy="direct")` over a raw llama-cpp-python call.

Both paths share one loaded model, so the difference is apportion's own work (routing features,
prompt building, token counting, the ledger, answer extraction). Runs alternate, so drift in
machine load hits both alike. Greedy decoding makes both paths generate the same tokens.

    python benchmarks/direct_overhead.py [--model qwen2.5-coder-0.5b] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from apportion.runtime import Engine
from apportion.strategies.direct import Direct
from apportion.types import Query

QUESTION = "What is the capital of Australia?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    engine = Engine()
    llm_engine = engine.engine_for(args.model)
    llm = llm_engine._llm  # type: ignore[attr-defined]
    chat = [{"role": m.role, "content": m.content} for m in Direct().messages(Query(QUESTION))]

    def raw() -> str:
        out = llm.create_chat_completion(messages=chat, max_tokens=args.max_tokens, temperature=0)
        return str(out["choices"][0]["message"]["content"])

    def ours() -> str:
        answer = engine.ask(
            QUESTION, strategy="direct", model=args.model, max_tokens=args.max_tokens
        )
        return answer.answer

    assert raw().strip() == ours().strip(), "both paths must generate the same text"
    times: dict[str, list[float]] = {"raw": [], "apportion": []}
    for _ in range(args.runs):
        for name, fn in (("raw", raw), ("apportion", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    raw_med = statistics.median(times["raw"])
    ours_med = statistics.median(times["apportion"])
    print(f"model {args.model}, threads {llm_engine.threads}, {args.runs} alternating runs each")  # type: ignore[attr-defined]
    print(f"raw llama-cpp-python  median {raw_med * 1000:.1f} ms")
    print(f"apportion direct      median {ours_med * 1000:.1f} ms")
    print(f"overhead              {100 * (ours_med - raw_med) / raw_med:+.2f}%")


if __name__ == "__main__":
    main()
