import pytest

from apportion.config import HardwareProfile
from apportion.errors import BudgetExceededError
from apportion.ledger import Ledger, ModelCost, RaplMeter, model_flops
from apportion.types import COST_FIELDS, Budget, Charge, Cost


def test_flops_dense_term_is_two_per_parameter_per_token() -> None:
    assert model_flops(1e9, 10, 5) == 2 * 1e9 * 15


def test_flops_attention_term_sums_context_positions() -> None:
    # T=3 tokens: positions 1+2+3 = 6; per position 2·L·d → 2·2·4·6 = 96
    assert model_flops(0, 2, 1, n_layers=2, d_model=4) == 96


def test_flops_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        model_flops(1e6, -1, 0)


def test_local_model_charge_uses_hardware_profile() -> None:
    hw = HardwareProfile(active_watts=20.0, usd_per_hour=3.6)
    ledger = Ledger(hardware=hw)
    charge = ledger.charge_model(
        ModelCost("m", params=1e6), prompt_tokens=10, completion_tokens=10, wall_s=2.0
    )
    assert charge.energy_j == pytest.approx(40.0)
    assert charge.energy_source == "estimated"
    assert charge.cost_usd == pytest.approx(0.002)
    assert charge.flops == pytest.approx(2 * 1e6 * 20)


def test_measured_energy_is_labelled() -> None:
    ledger = Ledger()
    charge = ledger.charge_model(
        ModelCost("m", params=1e6),
        prompt_tokens=1,
        completion_tokens=1,
        wall_s=1.0,
        measured_energy_j=7.5,
    )
    assert (charge.energy_j, charge.energy_source) == (7.5, "measured")


def test_remote_model_charged_per_token() -> None:
    ledger = Ledger()
    cost = ModelCost("r", params=7e9, local=False, usd_per_m_prompt=1.0, usd_per_m_completion=2.0)
    charge = ledger.charge_model(cost, prompt_tokens=1_000_000, completion_tokens=500_000, wall_s=9)
    assert charge.cost_usd == pytest.approx(2.0)
    assert charge.energy_j == pytest.approx(cost.joules_per_flop * charge.flops)


def test_tool_charge_counts_cpu_energy_and_totals_add_up() -> None:
    ledger = Ledger(hardware=HardwareProfile(watts_per_core=10.0, usd_per_hour=7.2), cores=2)
    ledger.charge_tool("sympy", wall_s=0.5, cpu_s=0.25)
    ledger.charge_model(ModelCost("m", params=1e6), prompt_tokens=3, completion_tokens=4, wall_s=1)
    totals = ledger.totals()
    assert totals.calls[0].energy_j == pytest.approx(2.5)
    assert totals.calls[0].cost_usd == pytest.approx(7.2 / 2 * 0.25 / 3600)
    assert (totals.prompt_tokens, totals.completion_tokens) == (3, 4)
    assert totals.wall_s == pytest.approx(1.5)
    assert len(totals.calls) == 2


def test_budget_refuses_call_whose_worst_case_exceeds_flops() -> None:
    cost = ModelCost("m", params=1e6)
    ledger = Ledger(budget=Budget(max_flops=model_flops(1e6, 10, 20)))
    ledger.check_model_call(cost, prompt_tokens=10, max_tokens=20)  # exactly fits
    with pytest.raises(BudgetExceededError):
        ledger.check_model_call(cost, prompt_tokens=10, max_tokens=21)


def test_rapl_meter_reads_counters(tmp_path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("2500000\n")
    meter = RaplMeter(tmp_path)
    assert meter.available
    assert meter.read_j() == pytest.approx(2.5)
    assert RaplMeter(tmp_path / "absent").read_j() is None


def test_costs_add_field_by_field() -> None:
    a = Cost(prompt_tokens=1, completion_tokens=2, flops=3.0, wall_s=4.0, cpu_s=5.0,
             energy_j=6.0, cost_usd=7.0)  # fmt: skip
    b = Cost(prompt_tokens=10, completion_tokens=20, flops=30.0, wall_s=40.0, cpu_s=50.0,
             energy_j=60.0, cost_usd=70.0)  # fmt: skip
    assert a + b == Cost(prompt_tokens=11, completion_tokens=22, flops=33.0, wall_s=44.0,
                         cpu_s=55.0, energy_j=66.0, cost_usd=77.0)  # fmt: skip
    assert Cost.total([]) == Cost() and Cost.total([a, b, a]) == a + b + a
    # A charge is a cost with a name: adding two gives just the cost.
    charge = Charge(kind="tool", name="sympy", wall_s=0.5, cpu_s=0.25)
    assert type(charge + charge) is Cost and (charge + charge).cpu_s == 0.5
    assert COST_FIELDS == ("prompt_tokens", "completion_tokens", "flops", "wall_s", "cpu_s",
                           "energy_j", "cost_usd", "cached_tokens", "flops_cached")  # fmt: skip


def test_totals_add_in_charge_order() -> None:
    """The totals are the running sum of the charges, so floats round as they always did."""
    ledger = Ledger(hardware=HardwareProfile(active_watts=20.0, usd_per_hour=3.6), cores=4)
    walls = [0.1, 0.2, 0.7, 1e-9]
    for wall in walls:
        ledger.charge_tool("z3", wall_s=wall, cpu_s=wall / 3)
    totals = ledger.totals()
    running = 0.0
    for wall in walls:
        running += wall
    assert totals.wall_s == running and totals.calls == tuple(ledger.charges)
    assert totals.cpu_s == sum(c.cpu_s for c in ledger.charges)


def test_ledger_json_keeps_its_shape() -> None:
    ledger = Ledger()
    ledger.charge_model(ModelCost("m", params=1e6), prompt_tokens=3, completion_tokens=4,
                        wall_s=1.23456789, detail="direct")  # fmt: skip
    ledger.charge_tool("sympy", wall_s=0.5, cpu_s=0.1234567891)
    data = ledger.totals().to_dict()
    assert list(data) == [*COST_FIELDS, "calls"]
    assert data["wall_s"] == round(1.23456789 + 0.5, 6)
    calls = data["calls"]
    assert isinstance(calls, list)
    assert list(calls[0]) == ["kind", "name", "prompt_tokens", "completion_tokens", "flops",
                              "wall_s", "cpu_s", "energy_j", "cached_tokens", "flops_cached",
                              "energy_source", "cost_usd", "detail"]  # fmt: skip
    assert (calls[0]["wall_s"], calls[1]["cpu_s"]) == (1.234568, 0.123457)
    assert calls[1]["kind"] == "tool" and calls[1]["prompt_tokens"] == 0


def test_the_api_ledger_is_the_cost_field_for_field() -> None:
    pytest.importorskip("pydantic")
    from apportion.server.schemas import LedgerOut

    assert list(LedgerOut.model_fields) == [*COST_FIELDS, "calls"]
    ledger = Ledger()
    ledger.charge_tool("sympy", wall_s=0.1234567891, cpu_s=0.1)
    totals = ledger.totals()
    out = LedgerOut.of(totals, with_calls=False)
    assert out.model_dump(exclude={"calls"}) == totals.cost_json() and out.calls is None
    assert LedgerOut.of(totals, with_calls=True).calls == [totals.calls[0].to_dict()]


def test_a_cached_prompt_prefix_is_counted_beside_the_uncached_flops() -> None:
    """`flops` charges every prompt token, as if uncached; the cached prefix's share (its
    weights and its own attention, as a call of that many tokens) is kept beside it."""
    cost = ModelCost("m", params=1e6, n_layers=2, d_model=8)
    ledger = Ledger()
    whole = ledger.charge_model(cost, prompt_tokens=10, completion_tokens=5, wall_s=0.1)
    part = ledger.charge_model(cost, prompt_tokens=10, completion_tokens=5, wall_s=0.1,
                               cached_tokens=6)  # fmt: skip
    assert part.flops == whole.flops == model_flops(1e6, 10, 5, 2, 8)
    assert whole.cached_tokens == 0 and whole.flops_computed == whole.flops
    assert part.cached_tokens == 6 and part.flops_cached == 2 * 1e6 * 6 + 2 * 8 * 6 * 7
    assert part.flops_computed == part.flops - part.flops_cached
    totals = ledger.totals()
    assert totals.cached_tokens == 6 and totals.flops_cached == part.flops_cached
    # a count beyond the prompt is clipped to it
    over = ledger.charge_model(cost, prompt_tokens=3, completion_tokens=1, wall_s=0.1,
                               cached_tokens=9)  # fmt: skip
    assert over.cached_tokens == 3
