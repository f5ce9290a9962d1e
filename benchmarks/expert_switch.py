"""What switching LoRA adapters between consecutive requests costs (issue 16's target: under
5 ms per request).

A random rank-8 adapter on q_proj and v_proj of the model (its effect does not matter here) is
installed as an expert in a scratch APPORTION_HOME. Then:

1. the switch itself, `llama_set_adapters_lora` and the prompt cache's change of hands,
   timed over `--switches` alternations once both sides have a prompt cached;
2. requests end to end, `direct` with 8 new tokens over distinct questions: every request on
   the expert, against requests alternating base / expert. The difference per request is the
   switch plus the shared prompt prefix (system prompt, chat template) that the reset makes
   the next request read again.

    python benchmarks/expert_switch.py --model qwen2.5-coder-0.5b --requests 24
    python benchmarks/expert_switch.py --model qwen2.5-coder-0.5b --requests 24 --reset-on-switch

`--reset-on-switch` measures the first version, which emptied the prompt cache at every switch
instead of setting each adapter's aside.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.experts.book import ExpertBook, ExpertManifest, TrainingData
from apportion.experts.convert import write_adapter
from apportion.runtime import Request, Runtime

QUESTIONS = [f"In one word, what colour is a {thing}?" for thing in (
    "banana", "lemon", "cherry", "leaf", "cloud", "coal", "snow", "sky", "carrot", "grape",
    "orange", "tomato", "lime", "plum", "rose", "violet", "pumpkin", "strawberry", "olive",
    "mint", "salmon", "sand", "chocolate", "pearl", "ruby", "emerald", "sapphire", "ivory",
)]  # fmt: skip


def random_adapter(path: Path, meta: dict[str, str], rank: int = 8) -> int:
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    d = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv = int(meta.get(f"{arch}.attention.head_count_kv", heads)) * (d // heads)
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        for name, out in (("attn_q", d), ("attn_v", kv)):
            tensors[f"blk.{i}.{name}.weight.lora_a"] = rng.normal(0, 0.01, (rank, d))
            tensors[f"blk.{i}.{name}.weight.lora_b"] = rng.normal(0, 0.01, (out, rank))
    write_adapter(tensors, path, architecture=arch, alpha=16, name="switch-bench")
    return sum(t.size for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reset-on-switch", action="store_true",
                        help="keep no adapter's prompt cache across a switch")  # fmt: skip
    args = parser.parse_args()
    shared = Settings.load()
    catalogue.resolve(args.model, shared.models_dir)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        (home / "models").symlink_to(shared.models_dir, target_is_directory=True)
        rt = Runtime(settings=Settings(home=home, threads=args.threads))
        base = rt.engine_for(args.model)
        if args.reset_on_switch:
            base._keep_prompt_cache = lambda: None  # type: ignore[attr-defined]
        adapter = home / "adapter.gguf"
        params = random_adapter(adapter, dict(base._llm.metadata))  # type: ignore[attr-defined]
        sha = hashlib.sha256(adapter.read_bytes()).hexdigest()
        ExpertBook(home).install(ExpertManifest(
            name="switch-bench", base_model=args.model,
            base_sha256=catalogue.CATALOGUE[args.model].sha256, architecture="qwen2",
            adapter_sha256=sha, adapter_bytes=adapter.stat().st_size, rank=8, alpha=16,
            targets=["q_proj", "v_proj"], adapter_params=params,
            data=TrainingData(path="-", sha256="-", examples=0),
        ), adapter)  # fmt: skip
        expert = rt.engine_for("switch-bench")
        path = expert.adapter  # type: ignore[attr-defined]

        def run(models: list[str]) -> list[float]:
            walls = []
            for question, model in zip(QUESTIONS, models, strict=False):
                t0 = time.perf_counter()
                rt.answer(Request(question, strategy="direct", model=model, max_tokens=8))
                walls.append(time.perf_counter() - t0)
            return walls[2:]  # the first two warm up

        n = min(args.requests, len(QUESTIONS))
        same = run(["switch-bench"] * n)
        alternating = run([args.model if i % 2 else "switch-bench" for i in range(n)])
        # after the requests: each adapter now has a prompt cache to set aside and put back
        started = time.perf_counter()
        for i in range(args.switches):
            with base._lock:  # type: ignore[attr-defined]
                base._apply_adapter(path if i % 2 == 0 else None)  # type: ignore[attr-defined]
        switch_ms = (time.perf_counter() - started) / args.switches * 1e3

        rt.close()
    kept = "reset at each switch" if args.reset_on_switch else "set aside per adapter"
    print(f"model {args.model}, rank-8 adapter on q_proj+v_proj ({params:,} parameters), "
          f"{args.threads} thread(s), prompt cache {kept}")  # fmt: skip
    print(f"switch (set adapters, prompt cache {kept}): {switch_ms:.3f} ms")
    print(f"direct, 8 tokens, same expert every request: median "
          f"{statistics.median(same) * 1e3:.0f} ms")  # fmt: skip
    print(f"direct, 8 tokens, base/expert alternating:   median "
          f"{statistics.median(alternating) * 1e3:.0f} ms")  # fmt: skip
    print(f"added per request by switching: "
          f"{(statistics.median(alternating) - statistics.median(same)) * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
