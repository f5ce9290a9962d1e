"""The installed experts: LoRA adapters for one base model each, kept in
`$APPORTION_HOME/experts/NAME/` (an `adapter.gguf` and its `manifest.json`), beside the ones
shipped with the package (`apportion/experts/shipped/NAME/`). An installed expert of a shipped
expert's name replaces it. A shipped expert holds its tensors as `adapter.npz` (no model file
in the repository); its GGUF file is written from them into the model cache,
`$APPORTION_HOME/experts/.shipped/NAME/`, the first time it is used.

A manifest records what the adapter is for and how it was made: the base model and its
weights' sha256, the adapter's sha256, rank, alpha and adapted matrices, the training data's
hash and the hyper-parameters, the metrics, and the commands that built it. The adapter's
sha256 is checked whenever an engine loads it, as model weights are.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from apportion.errors import ModelIntegrityError, UnknownNameError, UsageError

MANIFEST = "manifest.json"
ADAPTER = "adapter.gguf"
PACKED = "adapter.npz"  # a shipped expert's tensors (experts/convert.py's pack_adapter)
SHIPPED = Path(__file__).parent / "shipped"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class TrainingData(BaseModel):
    """The examples an expert was trained on: where they were, their sha256, how many, and
    the benchmark items they came from ("dataset/item_id", from distillation's `source`), so
    that an evaluation can leave out what the expert has seen."""

    path: str
    sha256: str
    examples: int = Field(ge=0)
    sources: list[str] = Field(default_factory=list)


class ExpertManifest(BaseModel):
    """`manifest.json` of one expert (format 1)."""

    format: int = 1
    name: str
    base_model: str
    base_sha256: str
    architecture: str
    adapter_sha256: str
    adapter_bytes: int = Field(ge=0)
    rank: int = Field(ge=1)
    alpha: float
    targets: list[str]
    # r·(d_in + d_out) summed over the adapted matrices (the ledger charges 2 FLOPs per token
    # for each, as for base parameters).
    adapter_params: int = Field(ge=0)
    # The strategy whose prompts the training examples used (e.g. "program"), if one did.
    strategy: str | None = None
    data: TrainingData
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    commands: list[str] = Field(default_factory=list)
    created: str = ""


@dataclass(frozen=True)
class Expert:
    """One expert as found on disk."""

    manifest: ExpertManifest
    directory: Path
    shipped: bool
    # Where a shipped expert's GGUF file is written (in the model cache); None for others.
    cache: Path | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def base_model(self) -> str:
        return self.manifest.base_model

    @property
    def adapter_path(self) -> Path:
        return (self.cache if self.cache is not None else self.directory) / ADAPTER

    def _unpack(self, path: Path) -> None:
        """Write a shipped expert's adapter into the cache, once: callers that find it missing
        at once (server workers, bench workers, threads) take turns on an exclusive lock, and
        the ones after the first find the file written."""
        import fcntl

        from apportion.experts.convert import unpack_adapter

        path.parent.mkdir(parents=True, exist_ok=True)
        # each caller opens the lock file itself: flock locks belong to an open file, so
        # they exclude threads of one process as well as other processes
        with open(path.with_name(f"{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                return
            # written aside and renamed: a reader that checks for the file without the lock
            # never sees half of it, and a crash leaves only the partial, which the next
            # writer (one at a time, under the lock) writes over
            partial = path.with_name(f"{path.name}.partial")
            try:
                unpack_adapter(self.directory / PACKED, partial)
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)

    def verify(self) -> Path:
        """The adapter file, once its sha256 is the manifest's (a shipped expert's is written
        from its packed tensors first, if it is not in the cache yet)."""
        from apportion.engines.catalogue import sha256_file

        path = self.adapter_path
        if self.cache is not None and not path.is_file():
            self._unpack(path)
        if not path.is_file():
            raise ModelIntegrityError(
                f"expert {self.name!r} has no adapter file at {path}",
                f"reinstall it, or remove it: apportion experts rm {self.name}",
            )
        actual = sha256_file(path)
        if actual != self.manifest.adapter_sha256:
            raise ModelIntegrityError(
                f"the adapter of expert {self.name!r} ({path}) has sha256 {actual[:12]}…, "
                f"its manifest says {self.manifest.adapter_sha256[:12]}…",
                f"retrain it, or remove it: apportion experts rm {self.name}",
            )
        return path


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"bad expert name {name!r}",
            "use lower-case letters, digits, '.', '_' and '-' (at most 64), e.g. pal-math",
        )
    return name


def _read(directory: Path, *, shipped: bool, cache: Path | None = None) -> Expert | None:
    path = directory / MANIFEST
    try:
        manifest = ExpertManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as e:
        raise UsageError(
            f"the manifest of expert {directory.name!r} cannot be read ({path}): {e}",
            f"remove the expert: apportion experts rm {directory.name}",
        ) from e
    return Expert(manifest, directory, shipped, cache)


class ExpertBook:
    """The experts under `home/experts`, and the shipped ones (`shipped`; None: none)."""

    def __init__(self, home: Path, shipped: Path | None = SHIPPED) -> None:
        self.root = home / "experts"
        self.shipped = shipped

    def _dirs(self, name: str) -> list[tuple[Path, bool]]:
        found = [(self.root / name, False)]
        if self.shipped is not None:
            found.append((self.shipped / name, True))
        return found

    def get(self, name: str) -> Expert | None:
        """The expert called `name`; None when there is none (or the name is not one)."""
        if not _NAME.match(name):
            return None
        for directory, shipped in self._dirs(name):
            cache = self.root / ".shipped" / name if shipped else None
            expert = _read(directory, shipped=shipped, cache=cache)
            if expert is not None:
                return expert
        return None

    def find(self, name: str) -> Expert:
        expert = self.get(name)
        if expert is None:
            raise UnknownNameError("expert", name, self.names() or ["(none installed)"])
        return expert

    def names(self) -> list[str]:
        roots = [self.root, *([self.shipped] if self.shipped is not None else [])]
        names = {
            d.name for root in roots if root.is_dir() for d in root.iterdir()
            if (d / MANIFEST).is_file()
        }  # fmt: skip
        return sorted(names)

    def all(self) -> list[Expert]:
        return [e for e in (self.get(n) for n in self.names()) if e is not None]

    def install(self, manifest: ExpertManifest, adapter: Path) -> Expert:
        """Copy `adapter` in as expert `manifest.name` (replacing an installed one of that
        name), with its manifest; the directory appears whole or not at all."""
        check_name(manifest.name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}-", dir=self.root))
        try:
            shutil.copyfile(adapter, staging / ADAPTER)
            (staging / MANIFEST).write_text(
                json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
            )
            target = self.root / manifest.name
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Expert(manifest, target, shipped=False)

    def remove(self, name: str) -> Expert:
        """Delete installed expert `name`; a shipped one cannot be removed."""
        target = self.root / name
        expert = _read(target, shipped=False) if _NAME.match(name) else None
        if expert is None:
            shipped = self.get(name)
            if shipped is not None and shipped.shipped:
                raise UsageError(
                    f"expert {name!r} ships with apportion and cannot be removed",
                    "an expert you train under the same name replaces it",
                )
            raise UnknownNameError("expert", name, self.names() or ["(none installed)"])
        shutil.rmtree(target)
        return expert
