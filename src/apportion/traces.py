"""Bench traces: one row per item × strategy, with its outcome and its cost.

`apportion bench` writes them (a run's results.jsonl, fsync'd row by row; archived runs as
.jsonl.gz), and reads them back to summarise a run and draw its frontier; `apportion calibrate`
learns a policy from them. Both read this module, which depends on neither of them.

The oracle is here too, since both ask it: item by item, the cheapest fixed strategy that was
right, the limit any router over these strategies can reach. "Cheapest" orders by FLOPs, then
energy, then wall time, so that tool-only routes (zero model FLOPs) are still ranked by the CPU
they burn. Where no strategy was right, the oracle is wrong and pays the cheapest strategy's
cost (a router must spend something).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from apportion.strategies.registry import spec_name
from apportion.types import COST_FIELDS, Cost

__all__ = [
    "ADAPTIVE",
    "ORACLE",
    "RESULTS",
    "ItemResult",
    "ResultWriter",
    "is_adaptive",
    "oracle",
    "question_key",
    "read_results",
]

RESULTS = "results.jsonl"
ORACLE = "oracle"
# Strategies that choose other strategies: the oracle bounds them and calibration builds them,
# so neither learns from their rows.
ADAPTIVE = ("auto", ORACLE)
# rag's reply when the store held nothing relevant. Rows written before they carried
# `abstained` are recognised by it; rag may word it otherwise one day, these rows will not.
LEGACY_ABSTAIN_ANSWER = "not found in the documents"


@dataclass(frozen=True, kw_only=True)
class ItemResult(Cost):
    """One item × strategy: the answer, whether it was right, and what it cost."""

    dataset: str
    item_id: str
    strategy: str
    gold: str
    answer: str | None
    correct: bool
    f1: float
    confidence: float
    route: str  # the strategy that produced the answer (differs from `strategy` for ladders)
    intent: str | None
    error: str | None  # why there is no answer: the strategy's reason, or "Type: message"
    calls: int
    stopped_for_budget: bool = False
    # The item itself, so traces are self-contained for `apportion calibrate`.
    question: str = ""
    kind: str | None = None
    # The exception's type when the item raised (a strategy, parser or scorer failed); the run
    # records the row and goes on.
    error_type: str | None = None
    # The answer is a strategy's abstention (rag found nothing relevant), not a reply to the
    # question.
    abstained: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.item_id, self.strategy)

    @property
    def ok(self) -> bool:
        """Whether the strategy gave an answer (an abstention included), as Attempt.ok."""
        return self.answer is not None and self.error is None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("gold", "")  # archived traces keep no gold (bench.datasets.ARCHIVE_DROPS)
        if "abstained" not in data:
            known["abstained"] = data.get("answer") == LEGACY_ABSTAIN_ANSWER
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        """The results.jsonl row: the cost fields after `error`, where rows have always had
        them."""
        row: dict[str, Any] = {}
        for f in fields(self):
            if f.name in COST_FIELDS:
                continue
            row[f.name] = getattr(self, f.name)
            if f.name == "error":
                row.update(self.cost_fields())
        return row


def question_key(question: str) -> str:
    """A question as datasets are compared for repeats (mawps holds all of multiarith's
    questions under ids of its own): lower case, words only."""
    return re.sub(r"\W+", " ", question.lower()).strip()


def is_adaptive(spec: str) -> bool:
    """Whether a traced strategy spec chooses among others (`auto`, the oracle)."""
    return spec_name(spec) in ADAPTIVE


def read_results(path: Path, *, repair: bool = False) -> list[ItemResult]:
    """Results in `path`; a torn final line (a kill mid-write) is dropped, and with `repair`
    cut from the file so later appends start on a clean line."""
    if not path.exists():
        return []
    results: list[ItemResult] = []
    good_bytes = 0
    if path.suffix == ".gz":  # archived traces (benchmarks/traces): read only
        with gzip.open(path, "rt", encoding="utf-8") as z:
            return [ItemResult.from_json(json.loads(line)) for line in z if line.strip()]
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                results.append(ItemResult.from_json(json.loads(raw)))
            except (ValueError, TypeError, KeyError):
                break
            good_bytes += len(raw)
    if repair and good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return results


class ResultWriter:
    """Appends rows to a results.jsonl, each on disk (fsync'd) before `write` returns."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self._f = path.open("a" if append else "w", encoding="utf-8")

    def write(self, result: ItemResult) -> None:
        self._f.write(json.dumps(result.to_json()) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _cost_key(r: ItemResult) -> tuple[float, float, float]:
    return (r.flops, r.energy_j, r.wall_s)


def oracle(results: Iterable[ItemResult]) -> list[ItemResult]:
    """One result per item: the cheapest correct one, else the cheapest one, relabelled oracle."""
    by_item: dict[tuple[str, str], list[ItemResult]] = defaultdict(list)
    for r in results:
        # The oracle chooses among fixed strategies; an adaptive policy is what it bounds.
        if not is_adaptive(r.strategy):
            by_item[(r.dataset, r.item_id)].append(r)
    picks = []
    for rs in by_item.values():
        correct = [r for r in rs if r.correct]
        best = min(correct or rs, key=_cost_key)
        picks.append(replace(best, strategy=ORACLE, route=best.strategy))
    return picks
