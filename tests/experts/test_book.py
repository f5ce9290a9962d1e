"""The installed experts: install, find, list, verify, remove."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from apportion.errors import ModelIntegrityError, UnknownNameError, UsageError
from apportion.experts.book import Expert, ExpertBook, ExpertManifest, TrainingData, check_name


def _manifest(name: str, adapter: bytes) -> ExpertManifest:
    return ExpertManifest(
        name=name, base_model="smollm2-135m", base_sha256="0" * 64, architecture="llama",
        adapter_sha256=hashlib.sha256(adapter).hexdigest(), adapter_bytes=len(adapter), rank=8,
        alpha=16, targets=["q_proj", "v_proj"], adapter_params=1000, strategy="program",
        data=TrainingData(path="d.jsonl", sha256="1" * 64, examples=3),
    )  # fmt: skip


def test_install_find_verify_remove(tmp_path: Path) -> None:
    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"weights")
    shipped = tmp_path / "shipped"
    book = ExpertBook(tmp_path / "home", shipped=shipped)
    assert book.names() == [] and book.get("pal-math") is None
    expert = book.install(_manifest("pal-math", b"weights"), adapter)
    assert book.names() == ["pal-math"]
    found = book.find("pal-math")
    assert found.manifest == expert.manifest and not found.shipped
    assert found.verify() == found.adapter_path
    # a changed adapter file is refused, as changed weights are
    found.adapter_path.write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        found.verify()
    book.remove("pal-math")
    assert book.get("pal-math") is None
    with pytest.raises(UnknownNameError):
        book.remove("pal-math")


def test_shipped_experts_are_found_replaced_and_kept(tmp_path: Path) -> None:
    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"x")
    shipped = ExpertBook(tmp_path / "ship-home", shipped=None)
    shipped.install(_manifest("pal-math", b"x"), adapter)
    book = ExpertBook(tmp_path / "home", shipped=shipped.root)
    assert book.find("pal-math").shipped
    with pytest.raises(UsageError, match="ships with apportion"):
        book.remove("pal-math")
    book.install(_manifest("pal-math", b"x").model_copy(update={"rank": 4}), adapter)
    assert book.find("pal-math").manifest.rank == 4 and not book.find("pal-math").shipped


def test_names_and_broken_manifests(tmp_path: Path) -> None:
    for bad in ("", "Pal", "../x", "a b", "x" * 65):
        with pytest.raises(UsageError):
            check_name(bad)
    book = ExpertBook(tmp_path, shipped=None)
    (book.root / "broken").mkdir(parents=True)
    (book.root / "broken" / "manifest.json").write_text("{")
    with pytest.raises(UsageError, match="experts rm broken"):
        book.get("broken")


def test_the_server_lists_experts_on_its_models_and_skips_broken_ones(tmp_path: Path) -> None:
    from apportion.config import Settings
    from apportion.runtime import Runtime
    from apportion.server.models import ServedModels

    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"x")
    book = ExpertBook(tmp_path, shipped=None)
    book.install(_manifest("pal-math", b"x"), adapter)  # on smollm2-135m
    book.install(_manifest("other", b"x").model_copy(update={"base_model": "elsewhere"}), adapter)
    (book.root / "broken").mkdir()
    (book.root / "broken" / "manifest.json").write_text("{")
    settings = Settings(home=tmp_path, default_model="smollm2-135m")
    listing = ServedModels(settings, Runtime(settings=settings)).listing()
    experts = {c.id: c.parent for c in listing.data if c.kind == "expert"}
    assert experts.get("pal-math") == "smollm2-135m" and "other" not in experts
    assert "broken" not in {c.id for c in listing.data}


def test_the_shipped_adapter_is_written_once_whoever_asks_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several verify() at once on an empty cache (server or bench workers, threads) take
    turns: one writes the adapter, the others find it, and every caller gets the whole,
    checked file. (Unpacking in six threads at once failed on CPython 3.11 in CI.)"""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from apportion.experts import convert

    writes: list[Path] = []
    unpack = convert.unpack_adapter
    all_asked = threading.Barrier(6)

    def counted(npz: Path, gguf: Path) -> None:
        writes.append(gguf)
        unpack(npz, gguf)

    def verify(expert: Expert) -> Path:
        all_asked.wait()  # all six find the cache empty before any writes
        return expert.verify()

    monkeypatch.setattr(convert, "unpack_adapter", counted)
    experts = [ExpertBook(tmp_path).find("pal-math") for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(verify, experts))
    assert len(writes) == 1
    assert len(set(paths)) == 1 and paths[0].stat().st_size == experts[0].manifest.adapter_bytes
    assert not list(paths[0].parent.glob("*.partial"))  # nothing left behind
