"""Calibration on constructed traces, and the calibrated policy that reads its output."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from apportion.errors import UsageError
from apportion.ledger import Ledger
from apportion.router.calibrate import (
    calibrate,
    evaluate,
    on_own_model,
    replay,
    seen_by_experts,
)
from apportion.router.features import extract_features
from apportion.router.policy import (
    CalibratedPolicy,
    Plan,
    RulePolicy,
    Step,
    parse_plan_spec,
    plan_spec,
)
from apportion.router.policy_file import load_policy
from apportion.runtime import execute
from apportion.strategies.base import RunContext
from apportion.strategies.registry import default_registry
from apportion.traces import ItemResult
from apportion.types import Budget, Query
from fakes import ScriptedEngine


def result(
    item: str, strategy: str, *, correct: bool, confidence: float, flops: float, question: str,
    answer: str | None = "x", abstained: bool = False,
) -> ItemResult:  # fmt: skip
    return ItemResult(
        dataset="d", item_id=item, strategy=strategy, gold="g", answer=answer, correct=correct,
        f1=float(correct), confidence=confidence, route=strategy, intent=None, error=None,
        prompt_tokens=10, completion_tokens=10, flops=flops, wall_s=flops / 1e10, cpu_s=0.0,
        energy_j=0.0, cost_usd=flops / 1e14, calls=1, question=question, abstained=abstained,
    )  # fmt: skip


def traces() -> list[ItemResult]:
    """Arithmetic: symbolic is right and free. Word problems: program is right 60% of the
    time and confident exactly then; cot is right where program fails, and dearer."""
    out: list[ItemResult] = []
    for i in range(30):
        q = f"What is {i + 3}*{i + 7}+{i}?"
        out += [
            result(f"a{i}", "symbolic", correct=True, confidence=1.0, flops=0.0, question=q),
            result(f"a{i}", "program", correct=True, confidence=0.9, flops=1e9, question=q),
            result(f"a{i}", "cot", correct=i % 2 == 0, confidence=0.5, flops=5e9, question=q),
        ]
    for i in range(40):
        q = (
            f"Tom has {i + 2} apples and buys {i + 5} more at the market"
            + " with his sister and her friends from school" * (i % 4)
            + ". How many apples does Tom have now?"
        )
        ok = i % 5 < 3
        out += [
            result(
                f"w{i}",
                "symbolic",
                correct=False,
                confidence=0.0,
                flops=0.0,
                question=q,
                answer=None,
            ),
            result(
                f"w{i}", "program", correct=ok, confidence=0.9 if ok else 0.2, flops=1e9, question=q
            ),
            result(f"w{i}", "cot", correct=not ok, confidence=0.5, flops=4e9, question=q),
        ]
    return out


def test_replay_matches_the_executor() -> None:
    """The same attempts through `replay` and through `execute` choose the same answer."""
    for program_reply, program_ok in [("no code", False), (
        "```python\ndef solve():\n    return 72\n```", True)]:  # fmt: skip
        engine = ScriptedEngine([program_reply, "The answer is 70."])
        ctx = RunContext.over(engine_for=lambda _id, e=engine: e, default_model="scripted",
                         ledger=Ledger(budget=Budget()), max_tokens=32)  # fmt: skip
        plan = (Step("program", 0.5), Step("cot", 0.0))
        answer = execute(Plan(plan, "t"), Query("q?", kind="number"), ctx, default_registry(),
                         intent=None)  # fmt: skip
        outcomes = {
            a.strategy: result(
                "i",
                a.strategy,
                correct=a.answer == "72",
                confidence=a.confidence,
                flops=1.0,
                question="q",
                answer=a.answer,
            )
            for a in answer.attempts
        }
        if "cot" not in outcomes:  # the ladder stopped at program; cot would not have run
            outcomes["cot"] = result("i", "cot", correct=False, confidence=0.5, flops=1.0,
                                     question="q")  # fmt: skip
        won, ran = replay(plan, outcomes)
        assert won == (answer.answer == "72") == program_ok
        assert [r.strategy for r in ran] == [a.strategy for a in answer.attempts]


def test_replay_falls_back_to_the_most_confident_answer() -> None:
    outcomes = {
        "a": result("i", "a", correct=True, confidence=0.4, flops=1, question="q"),
        "b": result("i", "b", correct=False, confidence=0.3, flops=1, question="q", answer=None),
    }
    won, ran = replay((Step("a", 0.9), Step("b", 0.0)), outcomes)
    assert won and len(ran) == 2  # b had no answer, so a's unsure answer stands


def test_cells_pick_the_cheap_sure_plans() -> None:
    policy = calibrate(traces(), lam=0.1, min_cell=10)
    cells = policy["cells"]
    assert set(policy["strategies"]) == {"symbolic", "program", "cot"}
    arithmetic = [k for k in cells if k.startswith("arithmetic/")]
    # the solver, with chain-of-thought after it for what it cannot parse: every plan ends
    # with a step that always answers, whatever the traces say the solver declined
    assert arithmetic and all(cells[k]["chosen"] == "symbolic@0.3>cot" for k in arithmetic)
    for cell in cells.values():
        assert all(c["plan"].split(">")[-1] in ("cot", "direct") for c in cell["candidates"])
    word = [k for k in cells if k.startswith("math_word/")]
    # program first, escalating to cot when unsure (bars 0.3-0.7 tie here; the lowest wins);
    # the solver, free and never wrong in these traces, goes before it (exact_free_steps)
    assert word and all(cells[k]["chosen"] == "symbolic@0.3>program@0.3>cot" for k in word)
    assert policy["thresholds"]["math_word"] > 0  # 40 word problems: split by difficulty
    for cell in cells.values():  # each cell's candidates form a Pareto front
        flops = [c["flops"] for c in cell["candidates"]]
        accuracy = [c["accuracy"] for c in cell["candidates"]]
        assert flops == sorted(flops) and accuracy == sorted(set(accuracy))


def test_lambda_trades_accuracy_for_cost() -> None:
    rich = calibrate(traces(), lam=0.0, min_cell=100)["cells"]["math_word/*"]
    poor = calibrate(traces(), lam=10.0, min_cell=100)["cells"]["math_word/*"]
    best = max(c["accuracy"] for c in rich["candidates"])
    assert next(c for c in rich["candidates"] if c["plan"] == rich["chosen"])["accuracy"] == best
    # λ = 10 values cost above all, yet symbolic, free but declining every word problem, is
    # not a plan, nor is program alone, which can fail: the cheapest plan sure to answer is
    assert poor["chosen"] == "symbolic@0.3>program@0.3>cot"
    assert all("symbolic" not in c["plan"].split(">")[-1] for c in poor["candidates"])


def abstaining_rag() -> list[ItemResult]:
    """rag abstains on every question here at no cost; direct answers, rightly a third of the
    time."""
    runs = []
    for i in range(30):
        q = f"Who painted picture number {i} in the gallery?"
        runs += [
            result(f"f{i}", "rag", correct=False, confidence=0.05, flops=0.0, question=q,
                   answer="not found in the documents", abstained=True),
            result(f"f{i}", "direct", correct=i % 3 == 0, confidence=0.5, flops=1e9, question=q),
        ]  # fmt: skip
    return runs


def test_a_plan_that_declines_for_free_is_never_chosen() -> None:
    cell = calibrate(abstaining_rag(), lam=10.0, min_cell=100)["cells"]["factual/*"]
    assert cell["chosen"] == "direct"
    assert {c["plan"] for c in cell["candidates"]} <= {"direct", "rag@0.3>direct"} | {
        f"rag@{b}>direct" for b in (0.5, 0.7, 0.9)
    }


def test_abstentions_are_read_from_the_flag_and_from_old_rows() -> None:
    flagged = abstaining_rag()
    # Rows written before `abstained` existed: rag's message is what marks them.
    old = []
    for r in flagged:
        row = r.to_json()
        del row["abstained"]
        old.append(ItemResult.from_json(json.loads(json.dumps(row))))
    assert [r.abstained for r in old] == [r.abstained for r in flagged]
    assert calibrate(old, lam=10.0, min_cell=100) == calibrate(flagged, lam=10.0, min_cell=100)
    # The cheapest answer with hindsight is direct's: an abstention answers nothing.
    for rows in (flagged, old):
        assert evaluate({}, rows).cheapest_answer == (1 / 3, 1e9)
    # The flag, not the text, decides: the same rows unflagged are answers, and free ones.
    unflagged = [replace(r, abstained=False) for r in flagged]
    assert evaluate({}, unflagged).cheapest_answer == (0.0, 0.0)


def test_same_traces_same_policy_whatever_their_order() -> None:
    runs = traces()
    shuffled = runs[:]
    random.Random(3).shuffle(shuffled)
    a = json.dumps(calibrate(runs), sort_keys=True)
    b = json.dumps(calibrate(shuffled), sort_keys=True)
    assert a == b


def test_auto_results_are_ignored_and_questions_required() -> None:
    runs = traces()
    with_auto = [*runs, replace(runs[0], strategy="auto", correct=False)]
    assert calibrate(with_auto) == calibrate(runs)
    with pytest.raises(UsageError, match="carry no question"):
        calibrate([replace(r, question="") for r in runs])
    with pytest.raises(UsageError, match="no results"):
        calibrate([])


def test_the_calibrated_policy_plans_by_cell_budget_and_availability() -> None:
    data = calibrate(traces(), lam=0.1, min_cell=10)
    policy = CalibratedPolicy.from_dict(data)
    word = extract_features("Tom has 3 apples and buys 6 more. How many apples does Tom have?")
    plan = policy.plan(word, Budget())
    assert plan_spec(plan.steps) == "symbolic@0.3>program@0.3>cot"
    assert plan.expected["accuracy"] == 1.0 and plan.difficulty in ("easy", "hard")
    assert "math_word/" in plan.reason and plan.alternatives
    # A FLOPs budget below the ladder's expected cost makes the policy pick a cheaper plan.
    cell = json.loads(json.dumps(data["cells"][f"math_word/{plan.difficulty}"]))
    cell["candidates"].insert(
        0, {"plan": "direct", "accuracy": 0.5, "flops": 1e9, "wall_s": 0.1, "cost_usd": 0.0}
    )
    with_cheap = CalibratedPolicy.from_dict(
        {**data, "cells": {**data["cells"], f"math_word/{plan.difficulty}": cell}}
    )
    cheap = with_cheap.plan(word, Budget(max_flops=1.5e9))
    assert cheap.expected["flops"] <= 1.5e9 and "fits the budget" in cheap.reason
    none_fits = policy.plan(word, Budget(max_flops=1.0))
    assert "no plan's expected cost fits the budget" in none_fits.reason
    # Strategies that cannot run here are never planned.
    no_program = policy.plan(word, Budget(), unavailable=frozenset({"program"}))
    assert all(s.strategy != "program" for s in no_program.steps)
    # a calibrated plan skipped for that reason is named in the explanation
    data["cells"]["math_word/easy"]["candidates"].append(
        {"plan": "rag@0.3>cot", "accuracy": 1.0, "flops": 9e9, "wall_s": 1.0, "cost_usd": 0.0}
    )
    with_rag = CalibratedPolicy.from_dict(data)
    easy = extract_features("Tom has 3 apples and buys 6 more. How many apples does he have?")
    assert with_rag.difficulty(easy) == "easy"
    skipped = with_rag.plan(easy, Budget(), unavailable=frozenset({"rag"}))
    assert "skipped rag@0.3>cot: rag cannot run here" in skipped.reason
    assert "rag" not in plan_spec(skipped.steps)
    # An intent the traces never saw is planned from the cell that pools every item: here
    # the solver first (never wrong), then program, whose confidence is trusted; not from
    # the uncalibrated rule ladders, which would answer a chat query directly.
    chat = extract_features("Tell me a joke about penguins")
    pooled = policy.plan(chat, Budget())
    assert pooled.reason.startswith("cell */* (70 calibration items)")
    assert plan_spec(pooled.steps) == data["cells"]["*/*"]["chosen"]
    assert pooled.steps != RulePolicy().plan(chat, Budget()).steps
    # A policy file without that cell (written before it existed) falls back to the rules.
    older = CalibratedPolicy.from_dict(
        {**data, "cells": {k: v for k, v in data["cells"].items() if k != "*/*"}}
    )
    assert older.plan(chat, Budget()).steps == RulePolicy().plan(chat, Budget()).steps
    assert older.plan(chat, Budget()).reason.startswith("no calibrated cell for chat/")


def test_plans_on_an_expert_keep_the_best_plan_without_it_beside_them() -> None:
    """An expert's plan may dominate every plan on the base model; where the expert is not
    installed, the cell must still hold the best plan that can run without it."""
    expert = "program:expert=pal-math"
    rows = traces()
    for r in [r for r in rows if r.strategy == "program"]:
        rows.append(replace(r, strategy=expert, correct=True, confidence=0.9))
    data = calibrate(rows, lam=0.1, min_cell=10)
    policy = CalibratedPolicy.from_dict(data)
    word = extract_features("Tom has 3 apples and buys 6 more. How many apples does Tom have?")
    cell = data["cells"][f"math_word/{policy.difficulty(word)}"]
    plans = [c["plan"] for c in cell["candidates"]]
    with_expert, own = f"symbolic@0.3>{expert}@0.3>cot", "symbolic@0.3>program@0.3>cot"
    assert cell["chosen"] == with_expert and own in plans
    assert plan_spec(policy.plan(word, Budget()).steps) == with_expert
    without = policy.plan(word, Budget(), unavailable=frozenset({expert}))
    assert plan_spec(without.steps) == own
    # the own-model plan is kept although the expert's dominates it; without an expert in
    # the traces nothing is kept beside the Pareto set (accuracy rises with every plan)
    expert_plan = next(c for c in cell["candidates"] if c["plan"] == with_expert)
    kept = next(c for c in cell["candidates"] if c["plan"] == own)
    assert kept["accuracy"] <= expert_plan["accuracy"] and kept["flops"] > expert_plan["flops"]
    for plain in calibrate(traces(), lam=0.1, min_cell=10)["cells"].values():
        accuracy = [c["accuracy"] for c in plain["candidates"]]
        assert accuracy == sorted(set(accuracy))


def test_with_several_experts_each_cell_plans_the_one_its_traces_favour() -> None:
    """Two experts on one base: `arith` is right on the arithmetic, `words` on the word
    problems. The policy gates between them by cell: top-1 by calibrated accuracy."""
    rows = [r for r in traces() if r.strategy == "cot"]
    for r in list(rows):
        arithmetic = r.item_id.startswith("a")
        rows.append(replace(r, strategy="cot:expert=arith", correct=arithmetic, flops=2e9))
        rows.append(replace(r, strategy="cot:expert=words", correct=not arithmetic, flops=2e9))
    policy = CalibratedPolicy.from_dict(calibrate(rows, lam=0.1, min_cell=100))
    word = extract_features("Tom has 3 apples and buys 6 more. How many apples does Tom have?")
    sums = extract_features("What is 12*13+4?")
    assert plan_spec(policy.plan(word, Budget()).steps) == "cot:expert=words"
    assert plan_spec(policy.plan(sums, Budget()).steps) == "cot:expert=arith"
    # where neither is installed, the base model's own plan
    gone = frozenset({"cot:expert=arith", "cot:expert=words"})
    assert plan_spec(policy.plan(word, Budget(), unavailable=gone).steps) == "cot"


def test_a_free_step_never_wrong_goes_first_in_every_plan() -> None:
    """The solver answers only the arithmetic, always rightly, at no FLOPs: it is put first in
    the word problems' plans too, where it declines for free, so a word problem it can solve
    (a shape its cell never showed) is solved. One wrong answer, or any FLOPs, and it is not."""
    rows = traces()
    word = calibrate(rows, lam=0.1, min_cell=100)["cells"]["math_word/*"]
    assert all(c["plan"].startswith("symbolic@0.3>") for c in word["candidates"])
    wrong = [replace(r, correct=False) if (r.item_id, r.strategy) == ("a0", "symbolic") else r
             for r in rows]  # fmt: skip
    word = calibrate(wrong, lam=0.1, min_cell=100)["cells"]["math_word/*"]
    assert not any("symbolic" in c["plan"] for c in word["candidates"])
    costly = [replace(r, flops=1.0) if (r.item_id, r.strategy) == ("w0", "symbolic") else r
              for r in rows]  # fmt: skip
    word = calibrate(costly, lam=0.1, min_cell=100)["cells"]["math_word/*"]
    assert not any("symbolic" in c["plan"] for c in word["candidates"])


def test_the_items_an_expert_learned_from_are_found_from_its_manifest(tmp_path: Path) -> None:
    from apportion.experts.book import ExpertBook

    book = ExpertBook(tmp_path)  # an empty home: the shipped pal-math
    rows = traces()
    assert seen_by_experts(rows, book) == set()  # no expert in the traces
    with_expert = [*rows, replace(rows[0], strategy="program:expert=pal-math")]
    seen = seen_by_experts(with_expert, book)
    sources = book.find("pal-math").manifest.data.sources
    assert len(seen) == len(sources) and ("svamp", "chal-2") in seen
    # the same question under another dataset's id (mawps repeats multiarith's) is seen too
    learned = next(s for s in sources if s.startswith("multiarith/")).partition("/")[2]
    text = "Tom had 3 apples, and bought 4 more. How many does he have now?"
    repeat = replace(rows[0], dataset="mawps", item_id="mawps-multiarith-9",
                     question="tom had 3 apples and bought 4 more how many does he have now")
    other = replace(rows[0], dataset="mawps", item_id="mawps-addsub-1", question="What is 2+2?")
    seen = seen_by_experts([*with_expert, repeat, other], book,
                           questions_of=lambda d: {learned: text} if d == "multiarith" else {})
    assert ("mawps", "mawps-multiarith-9") in seen and ("mawps", "mawps-addsub-1") not in seen


def test_which_steps_run_on_the_request_s_own_model() -> None:
    assert on_own_model("cot") and on_own_model("cot:logprobs=true") and on_own_model("symbolic")
    assert not on_own_model("program:expert=pal-math")
    assert not on_own_model("cot:model=qwen2.5-coder-1.5b") and not on_own_model("cascade")


def test_plan_specs_round_trip() -> None:
    steps = (Step("consistency:n=8,rule=esc", 0.7), Step("cot", 0.0))
    assert parse_plan_spec(plan_spec(steps)) == steps


def test_policy_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_policy(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 99}))
    with pytest.raises(UsageError, match="version"):
        load_policy(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(calibrate(traces())))
    assert isinstance(load_policy(good), CalibratedPolicy)


def test_the_rule_ladders_by_name_and_the_shipped_default() -> None:
    assert isinstance(load_policy(Path("rules")), RulePolicy)
    assert isinstance(load_policy(), CalibratedPolicy)  # the package ships one


def test_rule_ladders_skip_what_cannot_run_and_always_end_answering() -> None:
    rules = RulePolicy()
    word = extract_features("Tom has 3 apples and buys 6 more. How many apples does Tom have?")
    assert plan_spec(rules.plan(word, Budget()).steps) == "program@0.5>cot"
    no_cot = rules.plan(word, Budget(), unavailable=frozenset({"cot"})).steps
    assert no_cot == (Step("program", 0.0),)  # the last step left must answer, bar or not
    logic = extract_features("not ( True ) and ( False or True ) is")
    assert plan_spec(rules.plan(logic, Budget()).steps) == "symbolic@0.9>cot"
    nothing = rules.plan(word, Budget(), unavailable=frozenset({"program", "cot"}))
    assert nothing.steps == (Step("direct", 0.0),)
    assert "skipped program, cot: cannot run here" in nothing.reason


def test_an_answer_carries_its_confidence_as_calibration_measured_it() -> None:
    data = calibrate(traces(), lam=0.1, min_cell=10)
    # program was sure (0.9) exactly when right in these traces, unsure (0.2) when wrong
    assert data["confidence_maps"]["program"] == {"thresholds": [0.2, 0.9], "values": [0.0, 1.0]}
    policy = CalibratedPolicy.from_dict(data)
    word = extract_features("Tom has 3 apples and buys 6 more. How many apples does Tom have?")
    plan = policy.plan(word, Budget())
    assert set(plan.calibration) == {s.strategy for s in plan.steps}  # each step traced here
    engine = ScriptedEngine(["```python\ndef solve():\n    return 9\n```"])
    ctx = RunContext.over(engine_for=lambda _id: engine, default_model="scripted",
                          ledger=Ledger(budget=Budget()), max_tokens=32)  # fmt: skip
    answer = execute(plan, Query("q?", kind="number"), ctx, default_registry(), intent=None)
    assert answer.strategy == "program" and answer.answer == "9"
    # the program's own 0.8 is under the 0.9 that alone was ever right in the traces
    assert answer.confidence == 0.8 and answer.calibrated_confidence == 0.0
    assert answer.to_dict()["calibrated_confidence"] == 0.0
    # A policy file without maps (written before them) plans as before, with none.
    older = CalibratedPolicy.from_dict({k: v for k, v in data.items() if k != "confidence_maps"})
    assert older.plan(word, Budget()).steps == plan.steps
    assert older.plan(word, Budget()).calibration == {}
    engine.replies.append("```python\ndef solve():\n    return 9\n```")
    no_map = execute(older.plan(word, Budget()), Query("q?", kind="number"), ctx,
                     default_registry(), intent=None)  # fmt: skip
    assert no_map.calibrated_confidence is None
