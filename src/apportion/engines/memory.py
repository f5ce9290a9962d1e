"""Models in this process within a memory limit: what each keeps resident, and which to evict.

`memory_limit = "1.5GB"` (or `--memory-limit`) caps the memory the local models of one process
keep resident together. A model's resident bytes are its weights, its KV cache at the context
size, and llama.cpp's buffers: for a catalogue model, what loading it measured here
(`CatalogueModel.resident_bytes_4k`, at a 4096-token context, plus the KV cache's bytes per
token beyond or short of that); for another .gguf file, twice the file's size, which covers
the catalogue's models (1.7 to 2.3 times theirs). Remote models take none.

`ResidentSet` is the bookkeeping: which local models are loaded, in least-recently-used order,
and which to evict so that another fits. The Runtime loads and evicts; the planner asks
whether a plan's models fit together (`MemoryPolicy`: swap them in turn, or skip the plan).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from apportion.engines import catalogue
from apportion.errors import UsageError

# What a plan whose models cannot be resident together does: runs, loading each in turn (the
# load charged to the request that caused it), or is skipped with the reason.
MemoryPolicy = Literal["swap", "skip"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
# Bytes resident per byte of a .gguf file the catalogue has not measured.
UNMEASURED_FACTOR = 2.0


def parse_bytes(text: str | int) -> int:
    """`"1.5GB"`, `"800MiB"`, `"2e9"` or a number of bytes, as bytes; a UsageError naming the
    units otherwise."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(text)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            try:
                value = int(float(text))
            except ValueError:
                raise UsageError(
                    f"not a memory size: {text!r}", "e.g. 1.5GB, 800MB or 2GiB"
                ) from None
        else:
            value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"a memory size must be positive, got {text!r}")
    return value


def resident_bytes(model_id: str, n_ctx: int) -> int:
    """What the local model `model_id` keeps resident with an `n_ctx`-token context."""
    if model_id in catalogue.CATALOGUE:
        entry = catalogue.CATALOGUE[model_id]
        return max(entry.resident_bytes_4k + entry.kv_bytes_per_token * (n_ctx - 4096),
                   entry.size)  # fmt: skip
    path = Path(model_id).expanduser()
    # a name that is no file is refused where it is loaded, with the valid names
    return int(path.stat().st_size * UNMEASURED_FACTOR) if path.is_file() else 0


def format_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


@dataclass
class ResidentSet:
    """The local models loaded, least recently used first, with their resident bytes."""

    limit: int | None
    _loaded: OrderedDict[str, int] = field(default_factory=OrderedDict)

    @property
    def total(self) -> int:
        return sum(self._loaded.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._loaded

    def used(self, model_id: str) -> None:
        """`model_id` was just used: the last to evict."""
        if model_id in self._loaded:
            self._loaded.move_to_end(model_id)

    def to_evict(self, model_id: str, size: int, *, limit: int | None = None) -> list[str]:
        """The models to unload, least recently used first, so that `model_id` (`size`
        bytes) fits within the limit (and within `limit`, a request's, if tighter); a
        UsageError when it cannot fit even alone."""
        if self.limit is not None and size > self.limit:
            raise UsageError(
                f"{model_id} keeps about {format_bytes(size)} resident; the memory limit is "
                f"{format_bytes(self.limit)}",
                "raise memory_limit (--memory-limit), or use a smaller model or context",
            )
        bounds = [x for x in (self.limit, limit) if x is not None]
        if not bounds:
            return []
        bound = min(bounds)
        evict: list[str] = []
        total = self.total
        for loaded, bytes_ in self._loaded.items():
            if total + size <= bound:
                break
            evict.append(loaded)
            total -= bytes_
        return evict

    def add(self, model_id: str, size: int) -> None:
        self._loaded[model_id] = size
        self._loaded.move_to_end(model_id)

    def remove(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)
