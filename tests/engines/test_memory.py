"""Local models within a memory limit: sizes, least-recently-used eviction, loads charged to
the request that caused them, and plans that cannot fit swapped or skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from apportion.config import Settings
from apportion.engines.memory import ResidentSet, parse_bytes, resident_bytes
from apportion.errors import UsageError
from apportion.runtime import Request, Runtime
from apportion.types import Budget

SMALL, LARGE = "smollm2-135m", "qwen2.5-coder-0.5b"
# holds the 0.5B model (637 MB resident at a 4096-token context) but not both (865 MB)
LIMIT = "700MB"
CASCADE = f"cascade:small={SMALL},large={LARGE},threshold=1.0"  # always escalates


def test_sizes_are_read_in_the_units_people_write() -> None:
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("800 MiB") == 800 * 2**20
    assert parse_bytes("2e9") == 2_000_000_000 and parse_bytes(1024) == 1024
    for bad in ("lots", "0GB", "-1MB", "1.5 parsecs"):
        with pytest.raises(UsageError):
            parse_bytes(bad)


def test_a_catalogue_models_size_grows_with_its_context() -> None:
    at_4k = resident_bytes(LARGE, 4096)
    assert at_4k == 637_000_000
    assert resident_bytes(LARGE, 8192) == at_4k + 12_288 * 4096


def test_the_least_recently_used_models_make_room() -> None:
    loaded = ResidentSet(limit=1000)
    loaded.add("a", 400)
    loaded.add("b", 400)
    loaded.used("a")  # b is now the least recently used
    assert loaded.to_evict("c", 300) == ["b"]
    assert loaded.to_evict("c", 100) == []
    with pytest.raises(UsageError, match="memory limit"):
        loaded.to_evict("d", 1001)


def test_settings_refuse_a_size_they_cannot_read() -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        Settings(memory_limit="plenty")


@pytest.mark.model
def test_a_cascade_over_the_limit_loads_its_models_in_turn_and_charges_the_loads(
    settings: Settings,
) -> None:
    rt = Runtime(settings=settings.model_copy(update={"memory_limit": LIMIT}))
    try:
        prepared = rt.prepare(Request("What is 2+3?", strategy=CASCADE, max_tokens=16))
        assert "loaded in turn" in prepared.plan.reason
        answer = rt.run(prepared)
        loads = [c for c in answer.ledger.calls if c.name == "model load"]
        assert [c.detail for c in loads] == [f"load {SMALL}", f"load {LARGE}"]
        assert all(c.wall_s > 0 for c in loads)
        # the small model was unloaded to load the large one: never both at once
        assert rt.loaded_models() == [LARGE]
        assert 0 < answer.ledger.peak_resident_bytes <= parse_bytes(LIMIT)
        assert answer.ledger.to_dict()["peak_resident_bytes"] == answer.ledger.peak_resident_bytes
    finally:
        rt.close()


@pytest.mark.model
def test_memory_policy_skip_leaves_out_what_cannot_fit(settings: Settings) -> None:
    skip = settings.model_copy(update={"memory_limit": LIMIT, "memory_policy": "skip"})
    rt = Runtime(settings=skip)
    with pytest.raises(UsageError, match="memory limit"):
        rt.prepare(Request("What is 2+3?", strategy=CASCADE))
    # what fits is planned as ever
    assert rt.prepare(Request("What is 2+3?", strategy="cot", model=LARGE)).plan.steps


def test_a_model_larger_than_the_limit_is_refused_before_loading(tmp_path: Path) -> None:
    rt = Runtime(settings=Settings(home=tmp_path, memory_limit="100MB"))
    with pytest.raises(UsageError, match="keeps about 228 MB resident"):
        rt.engine_for(SMALL)
    assert rt.loaded_models() == []


def test_without_a_limit_nothing_is_counted_or_charged(tmp_path: Path) -> None:
    rt = Runtime(settings=Settings(home=tmp_path))
    plan = rt.prepare(Request("What is 2+3?", strategy=CASCADE)).plan
    assert "loaded in turn" not in plan.reason


@pytest.mark.model
def test_a_request_may_carry_a_tighter_memory_budget(settings: Settings) -> None:
    """No process limit, but this request's models may keep at most 700 MB resident: its
    cascade loads them in turn, and a model larger than the budget is refused."""
    rt = Runtime(settings=settings)
    try:
        budget = Budget(max_memory=parse_bytes(LIMIT))
        prepared = rt.prepare(Request("What is 2+3?", strategy=CASCADE, max_tokens=16,
                                      budget=budget))  # fmt: skip
        assert "loaded in turn" in prepared.plan.reason
        answer = rt.run(prepared)
        assert [c.detail for c in answer.ledger.calls if c.name == "model load"] == [
            f"load {SMALL}", f"load {LARGE}",
        ]  # fmt: skip
        assert rt.loaded_models() == [LARGE]
        tight = rt.answer(Request("What is 2+3?", strategy="cot", model=LARGE,
                                  budget=Budget(max_memory=parse_bytes("300MB"))))  # fmt: skip
        assert tight.stopped_for_budget or tight.error
    finally:
        rt.close()
