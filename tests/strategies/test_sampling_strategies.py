"""consistency, best_of_n and cascade: voting, early stopping and escalation logic on scripted
completions (the stopping maths is in test_stopping.py; real-model runs are in the bench)."""

from __future__ import annotations

import math

import pytest

from apportion.errors import UsageError
from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.best_of_n import BestOfN
from apportion.strategies.cascade import Cascade
from apportion.strategies.consistency import SelfConsistency
from apportion.strategies.program import Program
from apportion.strategies.registry import default_registry
from apportion.types import Budget, Query
from fakes import ScriptedEngine

Q = Query("How many?", kind="number")


def ans(x: object) -> str:
    return f"Some steps. The answer is {x}."


def ctx_for(*engines: ScriptedEngine, budget: Budget | None = None) -> RunContext:
    by_id = {e.model_id: e for e in engines}
    return RunContext.over(
        engine_for=lambda model_id: by_id[model_id],
        default_model=engines[0].model_id,
        ledger=Ledger(budget=budget or Budget()),
        max_tokens=64,
    )


def test_esc_stops_after_an_agreeing_window() -> None:
    engine = ScriptedEngine([ans(72), ans("72.0"), ans(5), ans(5)])
    attempt = SelfConsistency(n=8, rule="esc", window=2).run(Q, ctx_for(engine))
    assert attempt.answer == "72" and attempt.confidence == 1.0
    assert len(engine.calls) == 2  # "72" and "72.0" normalise to one vote


def test_fixed_rule_draws_all_n_and_reports_the_share() -> None:
    engine = ScriptedEngine([ans(72), ans(5), ans(72), "no idea"])
    attempt = SelfConsistency(n=4, rule="fixed").run(Q, ctx_for(engine))
    assert (attempt.answer, attempt.confidence) == ("72", 0.5)
    assert len(engine.calls) == 4


def test_samples_use_distinct_seeds_shared_across_rules() -> None:
    seen: list[int | None] = []

    class SeedEngine(ScriptedEngine):
        def generate(self, messages, **kw):  # type: ignore[no-untyped-def]
            seen.append(kw.get("seed"))
            return super().generate(messages, **kw)

    SelfConsistency(n=3, rule="fixed").run(Q, ctx_for(SeedEngine([ans(1)] * 3)))
    assert seen == [1, 2, 3]


def test_budget_mid_vote_returns_the_votes_so_far() -> None:
    engine = ScriptedEngine([ans(7)] * 8)
    one_call = 2 * 1e6 * (engine.count_tokens([]) + 80) * 1.5
    attempt = SelfConsistency(n=8, rule="fixed").run(
        Q, ctx_for(engine, budget=Budget(max_flops=one_call))
    )
    assert attempt.answer == "7" and len(engine.calls) == 1
    assert "stopped for budget" in attempt.rationale


def test_best_of_n_agreement_prefers_what_programs_confirm() -> None:
    engine = ScriptedEngine(
        [ans(10), ans(12), ans(12)]  # chains: one says 10, two say 12
        + ["```python\ndef solve():\n    return 10\n```"] * 2  # both programs say 10
    )
    attempt = BestOfN(n=3, verifier="agreement").run(Q, ctx_for(engine))
    # 10: 2 programs x2 = 4 ; 12: 1 other chain = 1  → 10 wins
    assert attempt.answer == "10"
    assert attempt.confidence == pytest.approx(4 / (2 * 2 + 2))


def test_best_of_n_logprob_falls_back_to_agreement_without_logprobs() -> None:
    # under a time cap samples are streamed, without log-probabilities
    engine = ScriptedEngine([ans(3), ans(5), ans(5)], token_logprob=math.log(0.9))
    ctx = ctx_for(engine, budget=Budget(max_seconds=60))
    attempt = BestOfN(n=3, verifier="logprob").run(Q, ctx)
    assert attempt.answer == "5" and attempt.confidence == pytest.approx(2 / 3)
    # with them, the geometric-mean token probability scores each chain
    engine = ScriptedEngine([ans(3), ans(5), ans(5)], token_logprob=math.log(0.9))
    attempt = BestOfN(n=3, verifier="logprob").run(Q, ctx_for(engine))
    assert attempt.confidence == pytest.approx(0.9)


def test_cascade_keeps_a_confident_small_answer() -> None:
    small = ScriptedEngine([ans(3)] * 3, model_id="small")
    large = ScriptedEngine([ans(4)], model_id="large")
    cascade = Cascade(
        small="small", large="large", threshold=0.6, probe="cot", probe_n=3, final="cot"
    )
    attempt = cascade.run(Q, ctx_for(small, large))
    assert attempt.answer == "3" and large.calls == []


def test_cascade_escalates_when_the_small_model_disagrees_with_itself() -> None:
    small = ScriptedEngine([ans(1), ans(2), ans(3)], model_id="small")
    large = ScriptedEngine([ans(4)], model_id="large")
    ctx = ctx_for(small, large)
    cascade = Cascade(
        small="small", large="large", threshold=0.6, probe="cot", probe_n=3, final="cot"
    )
    attempt = cascade.run(Q, ctx)
    assert attempt.answer == "4"
    assert [c.name for c in ctx.ledger.totals().calls] == ["small"] * 3 + ["large"]


def program(x: object) -> str:
    return f"```python\ndef solve():\n    return {x}\n```"


def test_program_with_logprobs_is_as_sure_as_its_tokens() -> None:
    engine = ScriptedEngine([program(7)], token_logprob=math.log(0.9))
    attempt = Program(logprobs=True).run(Q, ctx_for(engine))
    assert attempt.answer == "7" and attempt.confidence == pytest.approx(0.9)
    plain = Program().run(Q, ctx_for(ScriptedEngine([program(7)], token_logprob=-3.0)))
    assert plain.confidence == 0.8  # no log-probabilities asked for: the fixed value


def test_a_time_cap_drops_logprobs_to_keep_the_cap() -> None:
    # the cap is kept by streaming, which carries no log-probabilities
    engine = ScriptedEngine([program(7)], token_logprob=math.log(0.9))
    ctx = ctx_for(engine, budget=Budget(max_seconds=60))
    attempt = Program(logprobs=True).run(Q, ctx)
    assert attempt.answer == "7" and attempt.confidence == 0.8


def test_default_cascade_keeps_a_probable_small_program() -> None:
    small = ScriptedEngine([program(3)], model_id="small", token_logprob=math.log(0.95))
    large = ScriptedEngine([program(4)], model_id="large")
    ctx = ctx_for(small, large)
    attempt = Cascade(small="small", large="large", threshold=0.9).run(Q, ctx)
    assert attempt.answer == "3" and attempt.confidence == pytest.approx(0.95)
    assert large.calls == [] and len(small.calls) == 1
    assert [c.name for c in ctx.ledger.totals().calls] == ["small", "sandbox"]


def test_default_cascade_escalates_an_improbable_small_program_to_a_large_one() -> None:
    small = ScriptedEngine([program(3)], model_id="small", token_logprob=math.log(0.5))
    large = ScriptedEngine([program(4)], model_id="large")
    ctx = ctx_for(small, large)
    attempt = Cascade(small="small", large="large", threshold=0.9).run(Q, ctx)
    assert attempt.answer == "4" and "escalated to large" in attempt.rationale
    assert [c.name for c in ctx.ledger.totals().calls] == ["small", "sandbox", "large", "sandbox"]
    # the large model's program is written greedily and without log-probabilities
    assert "def solve" in large.calls[0][0].content or "solve()" in large.calls[0][0].content


def test_parameters_in_names_and_their_errors() -> None:
    registry = default_registry()
    s = registry.build("consistency:n=8,rule=beta,base=program")
    assert (s.n, s.rule, s.base) == (8, "beta", "program")  # type: ignore[attr-defined]
    c = registry.build("cascade:small=qwen2.5-coder-0.5b,large=qwen2.5-coder-1.5b,threshold=0.6")
    assert c.threshold == 0.6  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="rule must be one of fixed, esc, beta"):
        registry.build("consistency:rule=vibes")
    with pytest.raises(UsageError, match="valid parameters: .*n, rule"):
        registry.build("consistency:samples=3")
    with pytest.raises(UsageError, match="verifier must be one of"):
        registry.build("best_of_n:verifier=oracle")
