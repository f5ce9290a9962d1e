"""The Runtime: one wiring point, a typed Request, and per-request Hooks (scripted engines; the
model-backed paths are covered by tests/cli, tests/server and tests/test_plugins.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from apportion.config import Settings
from apportion.engines.base import GenerationCancelled, TextEngine
from apportion.engines.layers import Layer
from apportion.errors import UsageError
from apportion.ledger import Ledger
from apportion.runtime import Engine, Hooks, Request, Runtime
from apportion.types import Budget, Charge, Message
from fakes import ScriptedEngine

REPLY = "Step by step: 48 + 24 = 72. The answer is 72."


def runtime(tmp_path: Path, *replies: str, **kw: object) -> tuple[Runtime, ScriptedEngine]:
    rt = Runtime(settings=Settings(home=tmp_path), **kw)  # type: ignore[arg-type]
    engine = ScriptedEngine(list(replies))
    rt.register(engine)
    return rt, engine


def test_engine_is_the_runtime_under_its_first_name() -> None:
    from apportion import Engine as TopLevel
    from apportion.engine import Engine as Old

    assert Engine is Runtime and Old is Runtime and TopLevel is Runtime


def test_a_request_is_answered_and_ask_is_its_short_form(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, REPLY, REPLY)
    request = Request("How many clips?", strategy="cot", model="scripted", kind="number")
    by_request = rt.answer(request)
    by_ask = rt.ask("How many clips?", strategy="cot", model="scripted", kind="number")
    assert by_request.answer == by_ask.answer == "72"
    assert by_request.ledger.flops == by_ask.ledger.flops > 0


def test_a_request_is_checked_before_any_work(tmp_path: Path) -> None:
    rt, engine = runtime(tmp_path, REPLY)
    with pytest.raises(UsageError, match="empty"):
        rt.prepare(Request("  ", model="scripted"))
    with pytest.raises(UsageError, match="max_tokens"):
        rt.prepare(Request("q?", model="scripted", max_tokens=0))
    with pytest.raises(UsageError, match="nope"):
        rt.prepare(Request("q?", model="scripted", strategy="nope"))
    assert engine.calls == []


def test_choices_are_shown_by_letter(tmp_path: Path) -> None:
    rt, engine = runtime(tmp_path, "B")
    answer = rt.answer(Request("Which is red?", strategy="direct", model="scripted",
                               choices=("grass", "blood")))  # fmt: skip
    assert answer.answer == "B"
    assert "B. blood" in engine.calls[0][-1].content


def test_on_charge_sees_every_charge_as_it_is_made(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, "no code here", REPLY)
    seen: list[Charge] = []

    def on_charge(ledger: Ledger, charge: Charge) -> None:
        assert ledger.charges[-1] is charge  # told once it is recorded
        seen.append(charge)

    request = Request("How many clips?", strategy="program", model="scripted", kind="number")
    prepared = rt.prepare(request, Hooks(on_charge=on_charge))
    rt.run(prepared)
    assert seen == prepared.ctx.ledger.charges and len(seen) == 1


def test_on_token_hears_the_answer_and_charges_what_the_plain_call_charges(
    tmp_path: Path,
) -> None:
    rt, _ = runtime(tmp_path, REPLY, REPLY)
    request = Request("How many clips?", strategy="cot", model="scripted", kind="number")
    plain = rt.answer(request)
    pieces: list[str] = []
    heard = rt.answer(request, Hooks(on_token=pieces.append))
    assert "".join(pieces) == REPLY and heard.answer == plain.answer
    assert heard.ledger.completion_tokens == plain.ledger.completion_tokens
    assert heard.ledger.flops == plain.ledger.flops


def test_a_set_cancel_flag_starts_no_call(tmp_path: Path) -> None:
    rt, engine = runtime(tmp_path, REPLY)
    cancel = threading.Event()
    cancel.set()
    request = Request("q?", strategy="cot", model="scripted")
    prepared = rt.prepare(request, Hooks(cancel=cancel))
    with pytest.raises(GenerationCancelled):
        rt.run(prepared)
    assert engine.calls == [] and prepared.ctx.ledger.charges == []


def test_cancelling_mid_stream_charges_the_tokens_generated(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, REPLY)
    cancel = threading.Event()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()  # the client went away

    prepared = rt.prepare(Request("q?", strategy="cot", model="scripted"),
                          Hooks(cancel=cancel, on_token=on_token))  # fmt: skip
    with pytest.raises(GenerationCancelled):
        rt.run(prepared)
    (charge,) = prepared.ctx.ledger.charges
    # the engine stops at its next token: generated (so charged), never shown
    assert len(pieces) == 3 and charge.completion_tokens == 4 and charge.detail == "cot"


def test_a_callers_engine_wrapper_sees_every_call(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, REPLY)
    seen: list[str] = []

    class Watching(Layer):
        def generate(self, messages: object, **kw: object) -> object:  # type: ignore[override]
            seen.append(self.model_id)
            return super().generate(messages, **kw)  # type: ignore[arg-type]

    def engine_for(model_id: str) -> TextEngine:
        return Watching(rt.engine_for(model_id))

    answer = rt.answer(Request("q?", strategy="direct", model="scripted"),
                       Hooks(engine_for=engine_for))  # fmt: skip
    assert seen == ["scripted"] and answer.ledger.calls[0].name == "scripted"


def test_budgets_come_with_the_request(tmp_path: Path) -> None:
    rt, engine = runtime(tmp_path, REPLY)
    answer = rt.answer(Request("q?", strategy="cot", model="scripted", budget=Budget(max_flops=1)))
    assert answer.stopped_for_budget and engine.calls == []


def test_the_configured_store_opens_only_when_a_plan_retrieves(tmp_path: Path) -> None:
    store = tmp_path / "docs.sqlite"
    settings = Settings(home=tmp_path, store=str(store))
    rt = Runtime(settings=settings)
    rt.register(ScriptedEngine(["72"]))
    assert rt.can_retrieve() and rt.store is None
    rt.answer(Request("What is 48 + 24?", strategy="direct", model="scripted"))
    assert rt.store is None and not store.exists()
    rt.prepare(Request("Where is the Eiffel Tower?", strategy="rag", model="scripted"))
    assert rt.store is not None and store.exists()
    rt.store.close()


def test_a_runtime_given_its_store_never_opens_the_configured_one(tmp_path: Path) -> None:
    (tmp_path / "store.sqlite").write_bytes(b"")  # the default store exists
    rt = Runtime(settings=Settings(home=tmp_path), documents="given")
    assert rt.store_uri() is None and not rt.can_retrieve()
    configured = Runtime(settings=Settings(home=tmp_path))
    assert configured.store_uri() == str(tmp_path / "store.sqlite")


def test_an_auto_plan_skips_retrieval_when_there_is_no_store(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path)
    plan = rt.prepare(Request("Who painted the Mona Lisa?", model="scripted")).plan
    assert "rag" not in [s.strategy for s in plan.steps]


def test_cascade_runs_on_the_models_the_settings_name(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, default_model="small", large_model="large")
    rt = Runtime(settings=settings)
    small = ScriptedEngine(["def solve():\n    return 1\n"], model_id="small")
    large = ScriptedEngine(["```python\ndef solve():\n    return 72\n```"], model_id="large")
    small.token_logprob = -5.0  # unsure: escalates
    rt.register(small)
    rt.register(large)
    answer = rt.answer(Request("How many clips?", strategy="cascade", model="small"))
    assert [c.name for c in answer.ledger.calls if c.kind == "model"] == ["small", "large"]


def test_messages_in_history_reach_the_model(tmp_path: Path) -> None:
    rt, engine = runtime(tmp_path, "72")
    history = (Message("user", "Natalia sold 48 clips."), Message("assistant", "OK."))
    rt.answer(Request("How many?", history=history, strategy="direct", model="scripted"))
    assert [m.content for m in engine.calls[0] if m.role != "system"][:2] == [
        "Natalia sold 48 clips.", "OK.",
    ]  # fmt: skip


def test_auto_skips_plans_on_models_not_here_and_says_so(tmp_path: Path) -> None:
    """A calibrated plan on a model that is not pulled (nor configured, nor the request's) is
    left out, with the reason, so a first `ask` needs only the default model; once the model
    is there, the plan is chosen."""
    from apportion.engines import catalogue
    from apportion.router.policy import CalibratedPolicy

    large = "qwen2.5-coder-1.5b"
    cell = {"n": 40, "candidates": [
        {"plan": "program", "accuracy": 0.3, "flops": 2.8e11, "wall_s": 4.0, "cost_usd": 0.0},
        {"plan": f"program:model={large}", "accuracy": 0.64, "flops": 7.3e11, "wall_s": 12.0,
         "cost_usd": 0.0},
    ]}  # fmt: skip
    policy = CalibratedPolicy.from_dict({
        "version": 1, "lambda": 0.1, "max_flops": 1e12, "thresholds": {},
        "cells": {"math_word/*": cell},
    })  # fmt: skip
    runtime = Runtime(settings=Settings(home=tmp_path, default_model="scripted"), policy=policy)
    runtime.register(ScriptedEngine(["```python\ndef solve():\n    return 5\n```"]))
    question = "Tom has 2 apples and buys 3 more bags of 4 apples. How many apples now?"
    plan = runtime.prepare(Request(question)).plan
    assert plan.steps[0].strategy == "program"
    assert f"skipped program:model={large}" in plan.reason
    # pulled (the file in its place is all the check looks at): the 1.5B plan is chosen
    path = catalogue.model_path(runtime.settings.models_dir, catalogue.CATALOGUE[large])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert runtime.prepare(Request(question)).plan.steps[0].strategy == f"program:model={large}"
