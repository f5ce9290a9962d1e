"""A trained LoRA adapter (PEFT's tensors) written as a llama.cpp GGUF adapter file.

llama.cpp reads an adapter whose `general.type` is "adapter", `adapter.type` "lora",
`adapter.lora.alpha` a FLOAT32 (its scale is alpha / rank), and, per adapted matrix, two
tensors named after the base tensor: `blk.3.attn_q.weight.lora_a` of shape (rank, d_in) and
`….lora_b` of shape (d_out, rank), as numpy holds them (ggml lists dimensions the other way
round). Its `general.architecture` must be the base model's.

llama-architecture GGUFs hold the query and key projections with their rows permuted for
llama.cpp's rotary embedding (transformers undoes that when it loads one); an adapter's B
matrix for those projections gets the same permutation, or its update lands on the wrong rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apportion.arrays import read_npz
from apportion.errors import UsageError

# Hugging Face module name (within a decoder layer) → GGUF tensor name (within `blk.N`).
_MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# The architectures whose GGUF conversion permutes the q and k rows (see the module docstring).
_PERMUTED = {"llama"}
ARCHITECTURES = frozenset({"llama", "qwen2"})

_NAME = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


@dataclass(frozen=True)
class AdapterShape:
    """What the base model's shape contributes to the conversion."""

    architecture: str
    n_head: int
    n_head_kv: int


def _permute_rows(b: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """The row order llama.cpp's llama conversion gives q/k projections, applied to B."""
    rows = b.shape[0]
    return (
        b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)
    )


def gguf_tensors(
    lora: Mapping[str, np.ndarray[Any, Any]], shape: AdapterShape
) -> dict[str, np.ndarray[Any, Any]]:
    """PEFT state-dict entries (`…layers.3.self_attn.q_proj.lora_A.weight`) → GGUF tensors."""
    if shape.architecture not in ARCHITECTURES:
        raise UsageError(
            f"experts are not supported for the {shape.architecture!r} architecture",
            f"train them on a model of one of these: {', '.join(sorted(ARCHITECTURES))}",
        )
    out: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in lora.items():
        match = _NAME.search(key)
        if match is None:
            raise UsageError(f"not a LoRA tensor of a decoder layer: {key}")
        layer, module, which = match.groups()
        target = _MODULES.get(module)
        if target is None:
            raise UsageError(
                f"LoRA on {module} cannot be served by llama.cpp here",
                f"adapt only: {', '.join(m.split('.')[-1] for m in _MODULES)}",
            )
        tensor = np.ascontiguousarray(value, dtype=np.float32)
        if which == "B" and shape.architecture in _PERMUTED and target in ("attn_q", "attn_k"):
            heads = shape.n_head if target == "attn_q" else shape.n_head_kv
            tensor = _permute_rows(tensor, heads)
        out[f"blk.{layer}.{target}.weight.lora_{which.lower()}"] = tensor
    return out


def adapted_params(tensors: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """The adapter's parameters, r·(d_in + d_out) summed over adapted matrices: a token costs
    2 FLOPs per parameter through them, as through the base weights (apportion.ledger)."""
    return int(sum(t.size for t in tensors.values()))


def write_adapter(
    tensors: Mapping[str, np.ndarray[Any, Any]],
    path: Path,
    *,
    architecture: str,
    alpha: float,
    name: str,
) -> None:
    """Write GGUF adapter tensors (from `gguf_tensors`) to `path`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("general.name", name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for key in sorted(tensors):
        # float16 halves the file; llama.cpp computes the update in float32 either way
        writer.add_tensor(key, tensors[key].astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_adapter(path: Path) -> tuple[dict[str, np.ndarray[Any, Any]], str, float, str]:
    """A GGUF adapter file's tensors, architecture, alpha and name (what `write_adapter` wrote)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def text(key: str) -> str:
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    alpha_field = reader.fields["adapter.lora.alpha"]
    alpha = float(alpha_field.parts[alpha_field.data[0]][0])
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return tensors, text("general.architecture"), alpha, text("general.name")


def pack_adapter(gguf_path: Path, npz_path: Path) -> None:
    """Store an adapter's tensors and header as a compressed NumPy file: the form a shipped
    expert takes in the package (the GGUF file is written from it into the model cache)."""
    tensors, architecture, alpha, name = read_adapter(gguf_path)
    arrays: dict[str, Any] = {
        "__architecture": np.array(architecture), "__alpha": np.array(alpha),
        "__name": np.array(name), **tensors,
    }  # fmt: skip
    np.savez_compressed(npz_path, **arrays)


def unpack_adapter(npz_path: Path, gguf_path: Path) -> None:
    """Write the GGUF adapter file a `pack_adapter` file holds (the same bytes as the one it
    was packed from: same header, same float16 tensors, in the same order)."""
    data = read_npz(npz_path)
    tensors = {k: v for k, v in data.items() if not k.startswith("__")}
    architecture, alpha = str(data["__architecture"]), float(data["__alpha"])
    name = str(data["__name"])
    write_adapter(tensors, gguf_path, architecture=architecture, alpha=alpha, name=name)
