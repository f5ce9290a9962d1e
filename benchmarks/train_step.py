"""Seconds per LoRA training step on this CPU, per dtype: why `experts train --dtype auto`
picks float32 where the CPU has no bfloat16 instructions. The same model, example and
adapter as training uses (apportion.experts.train), one step after a warm-up one.

    python benchmarks/train_step.py --model smollm2-135m --dtype float32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.experts.train import _batch, _encode, _load, pick_dtype

EXAMPLE = [
    {"role": "user", "content": "Tom has 3 boxes of 12 apples and eats 5. How many are left?"},
    {"role": "assistant", "content": "```python\ndef solve():\n    return 3 * 12 - 5\n```"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", action="append", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    base = catalogue.resolve(args.model, Settings.load().models_dir)
    print(f"{args.model}, {args.threads} thread(s); auto picks {pick_dtype('auto')} here")
    for dtype in args.dtype or ["float32", "bfloat16"]:
        model, tokenizer = _load(base, dtype)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))  # fmt: skip
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batch = _batch([_encode(tokenizer, EXAMPLE, 512)], pad)
        times = []
        for _ in range(args.steps + 1):
            started = time.perf_counter()
            model(**batch).loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            times.append(time.perf_counter() - started)
        tokens = int(batch["input_ids"].shape[1])
        print(f"{dtype:>9}: {statistics.median(times[1:]):.2f} s a step "
              f"({tokens} tokens, median of {args.steps} after a warm-up)")  # fmt: skip


if __name__ == "__main__":
    main()
