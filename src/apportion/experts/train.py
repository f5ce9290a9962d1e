"""Train a LoRA adapter on chat examples, on the CPU, from a GGUF base model.

The base is the GGUF file apportion serves (transformers reads it and dequantizes it), so the
adapter is trained on the weights it will run on, give or take the quantization. The loss is
the assistant's last message only: the prompt is context, not something to learn to write.

Float32 by default on CPUs without bfloat16 instructions: on the AMD EPYC (AVX2) this was
measured on, a bfloat16 step of SmolLM2-135M took 25.3 s and a float32 step 1.65 s (a
71-token example, one thread; benchmarks/train_step.py). bfloat16 is the default where the
CPU has AVX-512 BF16 or AMX.

Training stops and resumes: every `save_every` steps the adapter, the optimiser's state and
the step are saved in the work folder, and a rerun with the same data and settings goes on from
there (a different run refuses to, naming what differs).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apportion.errors import UsageError

CHECKPOINT = "checkpoint.pt"
# (step, total steps, loss of that step)
StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in the expert's manifest)."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 1
    learning_rate: float = 2e-4
    batch: int = 4
    max_tokens: int = 512
    dtype: str = "auto"
    seed: int = 0
    max_steps: int | None = None
    save_every: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        if self.rank < 1 or self.batch < 1 or self.epochs < 1 or self.max_tokens < 16:
            raise UsageError("rank, batch and epochs must be at least 1, max_tokens at least 16")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UsageError(f"dtype must be auto, float32 or bfloat16, not {self.dtype!r}")


@dataclass(frozen=True)
class TrainResult:
    """The trained adapter, as GGUF tensors, and what the run measured."""

    tensors: dict[str, Any] = field(repr=False)
    architecture: str
    adapter_params: int
    examples: int
    steps: int
    dtype: str
    loss_first: float
    loss_last: float
    wall_s: float


def example_sources(path: Path) -> list[str]:
    """The distinct `source` fields ("dataset/item_id") of the examples in `path`, sorted:
    what `apportion experts distil` records of the item each example came from."""
    found: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            source = json.loads(line).get("source")
            if isinstance(source, str) and source:
                found.add(source)
    return sorted(found)


def read_examples(path: Path) -> list[list[dict[str, str]]]:
    """Chat examples, one JSON object per line: {"messages": [{"role", "content"}, ...]},
    the last message the assistant's (what is learned)."""
    if not path.is_file():
        raise UsageError(f"training data not found: {path}")
    examples: list[list[dict[str, str]]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            messages = record["messages"]
            chat = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"{path}:{n}: not a chat example ({e})",
                'write one {"messages": [{"role": ..., "content": ...}, ...]} per line',
            ) from None
        if len(chat) < 2 or chat[-1]["role"] != "assistant":
            raise UsageError(f"{path}:{n}: the last message must be the assistant's")
        examples.append(chat)
    if not examples:
        raise UsageError(f"{path} holds no examples")
    return examples


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pick_dtype(requested: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """"auto": bfloat16 where the CPU computes it natively, else float32 (see above)."""
    if requested != "auto":
        return requested
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def _load(base: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    options: dict[str, Any] = {"gguf_file": base.name, "dtype": torch_dtype}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:  # newer transformers keep GGUF blocks packed unless told
        options["quantization_config"] = gguf_config(dequantize=True)
    tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), **options)
    return model, tokenizer


def _encode(tokenizer: Any, chat: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
    """The example's token ids, and how many of them are prompt (not learned)."""
    prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    if not full.startswith(prompt):
        raise UsageError("the chat template renders the prompt differently on its own")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return list(full_ids[:max_tokens]), min(len(prompt_ids), max_tokens)


def _batch(rows: Sequence[tuple[list[int], int]], pad: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids, labels, mask = [], [], []
    for ids, n_prompt in rows:
        extra = width - len(ids)
        input_ids.append(ids + [pad] * extra)
        labels.append([-100] * n_prompt + ids[n_prompt:] + [-100] * extra)
        mask.append([1] * len(ids) + [0] * extra)
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def run_key(base_sha256: str, data_sha256: str, config: TrainConfig) -> str:
    """What a checkpoint must have been made with to be resumed."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("save_every", "threads")}
    text = json.dumps([base_sha256, data_sha256, settings], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def train_adapter(
    base: Path,
    examples: Sequence[list[dict[str, str]]],
    config: TrainConfig,
    *,
    work: Path,
    key: str,
    resume: bool = True,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train a LoRA adapter for the GGUF model at `base` on `examples` (see the module
    docstring), saving checkpoints in `work`; `key` (from `run_key`) identifies the run."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from apportion.experts.convert import AdapterShape, adapted_params, gguf_tensors

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / CHECKPOINT
    saved: dict[str, Any] | None = None
    if resume and checkpoint.is_file():  # checked before the minute a model load takes
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("key") != key:
            raise UsageError(
                f"the checkpoint in {work} was made with other data, base model or settings",
                "rerun with the same ones to resume, or pass --restart to start over",
            )
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    dtype = pick_dtype(config.dtype)
    model, tokenizer = _load(base, dtype)
    architecture = str(model.config.model_type)
    shape = AdapterShape(
        architecture,
        int(model.config.num_attention_heads),
        int(getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads),
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets),
            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        ),
    )  # fmt: skip
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimiser = torch.optim.AdamW(trainable.values(), lr=config.learning_rate)
    encoded = [_encode(tokenizer, chat, config.max_tokens) for chat in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_epoch = math.ceil(len(encoded) / config.batch)
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)

    step, first_loss, last_loss = 0, math.nan, math.nan
    if saved is not None:
        for name, value in saved["adapter"].items():
            trainable[name].data.copy_(value)
        optimiser.load_state_dict(saved["optimiser"])
        step, first_loss = int(saved["step"]), float(saved["loss_first"])
        last_loss = float(saved["loss_last"])

    def save() -> None:
        state = {
            "key": key, "step": step, "loss_first": first_loss, "loss_last": last_loss,
            "adapter": {n: p.detach().clone() for n, p in trainable.items()},
            "optimiser": optimiser.state_dict(),
        }  # fmt: skip
        partial = checkpoint.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(checkpoint)

    model.train()
    while step < total:
        epoch, index = divmod(step, per_epoch)
        order = list(range(len(encoded)))
        random.Random(config.seed + epoch).shuffle(order)
        rows = [encoded[i] for i in order[index * config.batch : (index + 1) * config.batch]]
        loss = model(**_batch(rows, pad)).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        step += 1
        last_loss = float(loss.detach())
        if math.isnan(first_loss):
            first_loss = last_loss
        if step % config.save_every == 0 or step == total:
            save()  # before the step is reported: a caller may stop the run there
        if on_step is not None:
            on_step(step, total, last_loss)

    lora = {
        name: p.detach().to(torch.float32).numpy().astype(np.float32)
        for name, p in trainable.items()
    }
    tensors = gguf_tensors(lora, shape)
    return TrainResult(
        tensors=tensors, architecture=architecture, adapter_params=adapted_params(tensors),
        examples=len(encoded), steps=step, dtype=dtype, loss_first=first_loss,
        loss_last=last_loss, wall_s=time.perf_counter() - started,
    )  # fmt: skip


def train_expert(
    name: str,
    *,
    base_model: str,
    data: Path,
    config: TrainConfig,
    home: Path,
    models_dir: Path,
    strategy: str | None = None,
    commands: Sequence[str] = (),
    resume: bool = True,
    on_step: StepCallback | None = None,
    pull_progress: Any = None,
) -> Any:
    """Train expert `name` on `base_model` (a catalogue id or .gguf path) from the chat
    examples in `data`, convert it to a GGUF adapter and install it in `home/experts`
    (apportion.experts.book); returns the installed Expert. Checkpoints are kept in
    `home/experts/.work/NAME` until the expert is installed."""
    import shutil
    import tempfile
    from datetime import UTC, datetime

    from apportion.engines import catalogue
    from apportion.experts.book import ExpertBook, ExpertManifest, TrainingData, check_name
    from apportion.experts.convert import write_adapter

    check_name(name)
    if base_model in catalogue.CATALOGUE:
        base_sha256 = catalogue.CATALOGUE[base_model].sha256
    elif catalogue.is_local_file(base_model) and Path(base_model).expanduser().is_file():
        base_sha256 = catalogue.sha256_file(Path(base_model).expanduser())
    else:
        raise UsageError(
            f"unknown base model {base_model!r}",
            f"name a catalogue model ({', '.join(catalogue.CATALOGUE)}) or a .gguf file",
        )
    base = catalogue.resolve(base_model, models_dir, progress=pull_progress)
    examples = read_examples(data)
    data_sha256 = file_sha256(data)
    book = ExpertBook(home)
    work = book.root / ".work" / name
    result = train_adapter(
        base, examples, config, work=work, key=run_key(base_sha256, data_sha256, config),
        resume=resume, on_step=on_step,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        adapter = Path(scratch) / "adapter.gguf"
        write_adapter(
            result.tensors, adapter, architecture=result.architecture, alpha=config.alpha,
            name=name,
        )  # fmt: skip
        settings = asdict(config)
        settings["dtype"] = result.dtype
        manifest = ExpertManifest(
            name=name, base_model=base_model, base_sha256=base_sha256,
            architecture=result.architecture, adapter_sha256=file_sha256(adapter),
            adapter_bytes=adapter.stat().st_size, rank=config.rank, alpha=config.alpha,
            targets=list(config.targets), adapter_params=result.adapter_params,
            strategy=strategy,
            data=TrainingData(path=str(data), sha256=data_sha256, examples=result.examples,
                              sources=example_sources(data)),
            training={**settings, "targets": list(config.targets), "steps": result.steps},
            metrics={"loss_first": round(result.loss_first, 6),
                     "loss_last": round(result.loss_last, 6), "train_s": round(result.wall_s, 1)},
            commands=list(commands),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )  # fmt: skip
        expert = book.install(manifest, adapter)
    shutil.rmtree(work, ignore_errors=True)
    return expert
