"""PEFT LoRA tensors → a llama.cpp GGUF adapter: names, shapes, the llama q/k row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apportion.errors import UsageError
from apportion.experts.convert import AdapterShape, adapted_params, gguf_tensors, write_adapter

gguf = pytest.importorskip("gguf")


def _lora(rank: int = 2, d: int = 8, kv: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    p = "base_model.model.model.layers.1.self_attn"
    return {
        f"{p}.q_proj.lora_A.default.weight": rng.normal(size=(rank, d)),
        f"{p}.q_proj.lora_B.default.weight": rng.normal(size=(d, rank)),
        f"{p}.v_proj.lora_A.weight": rng.normal(size=(rank, d)),
        f"{p}.v_proj.lora_B.weight": rng.normal(size=(kv, rank)),
    }


def test_names_shapes_and_parameter_count() -> None:
    lora = _lora()
    out = gguf_tensors(lora, AdapterShape("qwen2", n_head=2, n_head_kv=1))
    assert sorted(out) == [
        "blk.1.attn_q.weight.lora_a", "blk.1.attn_q.weight.lora_b",
        "blk.1.attn_v.weight.lora_a", "blk.1.attn_v.weight.lora_b",
    ]  # fmt: skip
    assert out["blk.1.attn_q.weight.lora_a"].shape == (2, 8)  # (rank, d_in)
    assert out["blk.1.attn_v.weight.lora_b"].shape == (4, 2)  # (d_out, rank)
    # qwen2 keeps q's rows in order; r·(d_in + d_out) per matrix: 2·(8+8) + 2·(8+4)
    np.testing.assert_allclose(out["blk.1.attn_q.weight.lora_b"], lora[next(
        k for k in lora if "q_proj.lora_B" in k)])  # fmt: skip
    assert adapted_params(out) == 2 * (8 + 8) + 2 * (8 + 4)


def test_llama_permutes_the_rows_of_q_and_k_only() -> None:
    lora = _lora()
    out = gguf_tensors(lora, AdapterShape("llama", n_head=2, n_head_kv=1))
    b = lora[next(k for k in lora if "q_proj.lora_B" in k)]
    # per head, the rotary halves are interleaved: rows 0..3 of a head become 0,2,1,3
    expected = b[[0, 2, 1, 3, 4, 6, 5, 7]]
    np.testing.assert_allclose(out["blk.1.attn_q.weight.lora_b"], expected)
    v = lora[next(k for k in lora if "v_proj.lora_B" in k)]
    np.testing.assert_allclose(out["blk.1.attn_v.weight.lora_b"], v)


def test_refuses_what_llama_cpp_cannot_serve() -> None:
    with pytest.raises(UsageError, match="architecture"):
        gguf_tensors(_lora(), AdapterShape("gpt2", 2, 2))
    bad = {"base_model.model.model.layers.0.self_attn.rotary.lora_A.weight": np.zeros((2, 2))}
    with pytest.raises(UsageError, match="cannot be served"):
        gguf_tensors(bad, AdapterShape("qwen2", 2, 2))
    with pytest.raises(UsageError, match="not a LoRA tensor"):
        gguf_tensors({"lm_head.weight": np.zeros((2, 2))}, AdapterShape("qwen2", 2, 2))


def test_written_file_is_an_adapter_llama_cpp_reads(tmp_path: Path) -> None:
    tensors = gguf_tensors(_lora(), AdapterShape("qwen2", 2, 1))
    path = tmp_path / "a.gguf"
    write_adapter(tensors, path, architecture="qwen2", alpha=16, name="t")
    reader = gguf.GGUFReader(str(path))
    fields = {name: reader.fields[name] for name in reader.fields}
    text = {k: bytes(f.parts[f.data[0]]).decode() for k, f in fields.items()
            if k in ("general.type", "adapter.type", "general.architecture")}  # fmt: skip
    assert text == {"general.type": "adapter", "adapter.type": "lora",
                    "general.architecture": "qwen2"}  # fmt: skip
    alpha = fields["adapter.lora.alpha"]
    assert alpha.types == [gguf.GGUFValueType.FLOAT32] and alpha.parts[alpha.data[0]][0] == 16.0
    assert {t.name for t in reader.tensors} == set(tensors)


def test_packed_adapters_give_back_the_same_file(tmp_path: Path) -> None:
    """A shipped expert's tensors are packed as .npz; unpacking writes the GGUF it came from,
    byte for byte (so its manifest's sha256 still holds)."""
    from apportion.experts.convert import pack_adapter, read_adapter, unpack_adapter

    tensors = gguf_tensors(_lora(), AdapterShape("llama", 2, 1))
    original = tmp_path / "a.gguf"
    write_adapter(tensors, original, architecture="llama", alpha=32, name="t")
    pack_adapter(original, tmp_path / "a.npz")
    unpack_adapter(tmp_path / "a.npz", tmp_path / "b.gguf")
    assert (tmp_path / "b.gguf").read_bytes() == original.read_bytes()
    read, architecture, alpha, name = read_adapter(tmp_path / "b.gguf")
    assert (architecture, alpha, name) == ("llama", 32.0, "t") and set(read) == set(tensors)
