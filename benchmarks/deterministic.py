"""What `deterministic` mode costs: every prompt read in full, instead of reusing the prefix a
previous call left in llama.cpp's cache.

The prompts are those a bench run sends, in its order (item by item, each strategy in turn),
so the prefix reused is what a real run reuses: mostly the chat template and the strategy's
system prompt. Each pass reads every prompt (a one-token call: the prefill alone); passes
alternate between the modes, so a busy machine slows both alike. The ledger charges the full
prompt in both modes; "computed" counts what llama.cpp evaluated.

    python benchmarks/deterministic.py --dataset gsm8k --dataset svamp --limit 20
    python benchmarks/deterministic.py --dataset gsm8k --dataset svamp --limit 20 --order strategy
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from apportion.bench.session import load_bench_items
from apportion.config import Settings
from apportion.engines import catalogue
from apportion.engines.llamacpp import LlamaCppEngine
from apportion.ledger import model_flops
from apportion.strategies.registry import default_registry
from apportion.types import Message, Query


def prompts(
    datasets: list[str], limit: int, strategies: list[str], data_dir: Path | None, order: str
) -> list[list[Message]]:
    """The prompts `apportion bench --dataset ... --limit N --strategies ...` sends, in its
    order (item by item); or strategy by strategy, as a server answering a stream of requests
    routed alike sees them."""
    registry = default_registry()
    items, _ = load_bench_items([], datasets, limit, 0, data_dir)
    pairs = [(item, spec) for item in items for spec in strategies]
    if order == "strategy":
        pairs = [(item, spec) for spec in strategies for item in items]
    out = []
    for item, spec in pairs:
        query = Query(item.question, kind=item.kind, choices=item.choices)
        out.append(registry.build(spec).messages(query))  # type: ignore[attr-defined]
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--strategies", default="direct,cot")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--passes", type=int, default=2, help="passes per mode")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--order", choices=("item", "strategy"), default="item",
        help="item: as bench sends them; strategy: each strategy's prompts in a row",
    )
    args = parser.parse_args()
    settings = Settings.load()
    path = catalogue.resolve(args.model, settings.models_dir)
    engine = LlamaCppEngine(args.model, path, n_ctx=4096, threads=args.threads)
    calls = prompts(
        args.dataset, args.limit, args.strategies.split(","), args.data_dir, args.order
    )
    tokens = [engine._prompt_tokens(m) for m in calls]
    # what a reusing call evaluates: its prompt past the prefix the previous call left cached
    # (llama-cpp-python re-reads at least the last token)
    cached = [0] + [
        min(common_prefix(prev, cur), len(cur) - 1)
        for prev, cur in itertools.pairwise(tokens)
    ]
    cost = engine.cost
    charged = sum(model_flops(cost.params, len(t), 0, cost.n_layers, cost.d_model) for t in tokens)
    computed = sum(
        model_flops(cost.params, len(t), 0, cost.n_layers, cost.d_model)
        - model_flops(cost.params, c, 0, cost.n_layers, cost.d_model)
        for t, c in zip(tokens, cached, strict=True)
    )
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.passes):
        for reuse in (True, False):
            engine.generate([Message("user", "warm up")], max_tokens=1, reuse_prefix=False)
            started = time.perf_counter()
            for messages in calls:
                engine.generate(messages, max_tokens=1, reuse_prefix=reuse)
            seconds[reuse].append((time.perf_counter() - started) / len(calls))
    n = len(calls)
    print(
        f"{n} prompts ({', '.join(args.dataset)} × {args.strategies}, {args.order} order), "
        f"{args.model}, "
        f"{args.threads} thread(s), {args.passes} passes per mode"
    )
    print(
        f"mean prompt tokens {statistics.mean(len(t) for t in tokens):.1f}, "
        f"of which a reusing call finds cached {statistics.mean(cached):.1f}"
    )
    print(
        f"prompt FLOPs charged (both modes) {charged / n:.3g} per call; computed with "
        f"prefix reuse {computed / n:.3g} ({computed / charged:.0%}), deterministic "
        f"{charged / n:.3g} (100%)"
    )
    reuse_s, fresh_s = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(
        f"prefill wall time per call: prefix reuse {reuse_s * 1000:.0f} ms, deterministic "
        f"{fresh_s * 1000:.0f} ms ({fresh_s / reuse_s - 1:+.0%})"
    )
    engine.close()


if __name__ == "__main__":
    main()
