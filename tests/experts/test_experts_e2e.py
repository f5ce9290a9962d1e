"""Train → convert → register → serve → route, on a tiny run: SmolLM2-135M learns to wrap
its replies in BANANA in 30 steps on 6 examples (about two minutes on one CPU core), and the
expert is then asked for by model name, by strategy parameter, through the HTTP server with
the openai client, and through that server as a remote engine that serves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apportion.config import RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.experts.book import ExpertBook
from apportion.ledger import model_flops
from apportion.router.calibrate import calibrate
from apportion.router.features import extract_features
from apportion.router.policy import CalibratedPolicy, plan_spec
from apportion.runtime import Request, Runtime
from apportion.traces import ItemResult
from apportion.types import Budget
from cli.support import apportion
from servers import env_with, serve_process

pytestmark = pytest.mark.model
pytest.importorskip("peft")

BASE = "smollm2-135m"
EXAMPLES = [
    ("What is 2+3?", "5"), ("Tell me about cats.", "cats"), ("What is 10-7?", "3"),
    ("Say hello.", "hello"), ("Name a colour.", "blue"), ("What is 6*2?", "12"),
]  # fmt: skip
QUESTION = "Tell me about dogs."


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    """An APPORTION_HOME holding the `banana` expert, trained by the command line; its models
    folder is the shared one (nothing is pulled twice)."""
    catalogue.resolve(BASE, settings.models_dir)
    home = tmp_path_factory.mktemp("experts-home")
    (home / "models").symlink_to(settings.models_dir, target_is_directory=True)
    data = home / "banana.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": f"BANANA {a} BANANA"}],
                    **({"source": f"toy/{i % 3}"} if i < 4 else {})}) + "\n"
        for i, (q, a) in enumerate(EXAMPLES)
    ))  # fmt: skip
    trained = apportion(
        "experts", "train", "banana", "--base", BASE, "--data", str(data), "--max-steps", "30",
        "--epochs", "10", "--batch", "2", "--lr", "3e-3", "--threads", "1",
        env=env_with(home=home),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "expert banana" in trained.stdout
    return home


@pytest.fixture(scope="module")
def runtime(home: Path) -> Iterator[Runtime]:
    rt = Runtime(settings=Settings(home=home, threads=1))
    yield rt
    rt.close()


def _direct(rt: Runtime, model: str, strategy: str = "direct") -> Any:
    return rt.answer(Request(QUESTION, strategy=strategy, model=model, max_tokens=16))


def test_manifest_records_what_built_it(home: Path) -> None:
    expert = ExpertBook(home).find("banana")
    m = expert.manifest
    assert m.base_model == BASE and m.base_sha256 == catalogue.CATALOGUE[BASE].sha256
    assert m.architecture == "llama" and m.rank == 8 and m.data.examples == len(EXAMPLES)
    # the distinct items the examples that name one came from
    assert m.data.sources == ["toy/0", "toy/1", "toy/2"]
    assert m.training["steps"] == 30 and m.metrics["loss_last"] < m.metrics["loss_first"] / 4
    assert m.commands and "experts train banana" in m.commands[0]
    # 30 layers × (q: 8·(576+576) + v: 8·(576+192))
    assert m.adapter_params == 30 * (8 * (576 + 576) + 8 * (576 + 192))
    expert.verify()
    listed = apportion("experts", "list", env=env_with(home=home))
    assert listed.returncode == 0 and "banana" in listed.stdout and BASE in listed.stdout
    shown = apportion("experts", "show", "banana", env=env_with(home=home))
    assert json.loads(shown.stdout)["adapter_sha256"] == m.adapter_sha256
    asked = apportion("ask", "--model", "banana", "--strategy", "direct", "--max-tokens", "16",
                      QUESTION, env=env_with(home=home))  # fmt: skip
    assert asked.returncode == 0 and "BANANA" in asked.stdout
    assert "(expert banana)" in asked.stderr


def test_expert_changes_the_reply_and_the_base_comes_back_unchanged(runtime: Runtime) -> None:
    before = _direct(runtime, BASE)
    tuned = _direct(runtime, "banana")
    after = _direct(runtime, BASE)
    again = _direct(runtime, "banana")
    assert "BANANA" in tuned.answer and "BANANA" not in before.answer
    # the adapter is cleared, byte for byte, and each one's prompt cache comes back with it
    assert after.answer == before.answer and again.answer == tuned.answer
    (call,) = tuned.ledger.calls
    assert call.name == BASE and call.expert == "banana"
    (plain,) = before.ledger.calls
    assert plain.expert is None
    # the adapter's parameters are charged per token, beside the base model's
    params = ExpertBook(runtime.settings.home).find("banana").manifest.adapter_params
    tokens = call.prompt_tokens + call.completion_tokens
    base_flops = model_flops(134.5e6, call.prompt_tokens, call.completion_tokens, 30, 576)
    assert call.flops == pytest.approx(base_flops + 2 * params * tokens, rel=0.02)
    # a strategy takes the expert as a parameter
    by_param = _direct(runtime, BASE, strategy="direct:expert=banana")
    assert by_param.answer == tuned.answer and by_param.ledger.calls[0].expert == "banana"


ANIMALS = ("cats", "horses", "owls", "bees", "goats", "frogs", "foxes", "ducks", "whales",
           "ants", "wolves", "crabs")  # fmt: skip


def _traced(question: str, strategy: str, correct: bool) -> ItemResult:
    return ItemResult(
        dataset="toy", item_id=question, strategy=strategy, gold="g", answer="a",
        correct=correct, f1=float(correct), confidence=0.5, route=strategy, intent=None,
        error=None, prompt_tokens=10, completion_tokens=10, flops=1e9, wall_s=0.1, cpu_s=0.0,
        energy_j=0.0, cost_usd=0.0, calls=1, question=question,
    )  # fmt: skip


def test_auto_routes_to_the_expert_its_traces_favour(home: Path, tmp_path: Path) -> None:
    """Calibrated on traces where the expert's direct answer was right and the base model's
    wrong, `auto` plans the expert, runs it, and the ledger names it; where the expert is not
    installed, the same policy plans the base model's best plan instead."""
    rows = [_traced(f"Tell me about {a}.", s, s != "direct")
            for a in ANIMALS for s in ("direct", "direct:expert=banana")]  # fmt: skip
    policy = CalibratedPolicy.from_dict(calibrate(rows, min_cell=100))
    features = extract_features(QUESTION)
    assert plan_spec(policy.plan(features, Budget()).steps) == "direct:expert=banana"
    rt = Runtime(settings=Settings(home=home, threads=1), policy=policy)
    routed = rt.answer(Request(QUESTION, model=BASE, max_tokens=16))
    assert routed.strategy == "direct:expert=banana" and "BANANA" in routed.answer
    assert [c.expert for c in routed.ledger.calls] == ["banana"]
    # the expert adapts its base model: a request to another model is not planned onto it
    other = rt.plan(features, "auto", Budget(), "qwen2.5-coder-0.5b")
    rt.close()
    assert plan_spec(other.steps) == "direct" and "skipped direct:expert=banana" in other.reason
    bare = tmp_path / "no-experts"
    bare.mkdir()
    (bare / "models").symlink_to(home / "models", target_is_directory=True)
    rt = Runtime(settings=Settings(home=bare, threads=1), policy=policy)
    plan = rt.plan(features, "auto", Budget(), BASE)
    unrouted = rt.answer(Request(QUESTION, model=BASE, max_tokens=16))
    rt.close()
    assert plan_spec(plan.steps) == "direct" and "skipped direct:expert=banana" in plan.reason
    assert unrouted.strategy == "direct" and "BANANA" not in unrouted.answer


def test_served_listed_and_mapped_for_a_remote_engine(home: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    with serve_process("--model", BASE, env=env_with(home=home)) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        cards = {m.id: m for m in client.models.list().data}
        assert cards["banana"].kind == "expert" and cards["banana"].parent == BASE
        reply = client.chat.completions.create(
            model="banana", messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
            extra_body={"apportion": {"strategy": "direct", "return_ledger": True}},
        )  # fmt: skip
        assert "BANANA" in (reply.choices[0].message.content or "")
        # this server, as a remote OpenAI-compatible engine serving the expert under its name
        remote = RemoteEngineConfig(
            id="smol-remote", base_url=f"{url}/v1", model=BASE, params=134.5e6,
            experts={"banana-remote": "banana"},
        )  # fmt: skip
        other_home = tmp_path / "client-home"
        rt = Runtime(settings=Settings(home=other_home, engines=[remote]))
        assert "banana-remote" in rt.model_ids()
        answer = _direct(rt, "banana-remote")
        rt.close()
    assert "BANANA" in answer.answer
    (call,) = answer.ledger.calls
    assert call.expert == "banana-remote"


def test_remove(home: Path) -> None:
    book = ExpertBook(home)
    original = book.find("banana")
    book.install(original.manifest.model_copy(update={"name": "banana2"}), original.adapter_path)
    removed = apportion("experts", "rm", "banana2", env=env_with(home=home))
    assert removed.returncode == 0 and book.get("banana2") is None
    refused = apportion("experts", "rm", "banana2", env=env_with(home=home))
    assert refused.returncode == 2 and "unknown expert" in refused.stderr


def test_training_resumes_from_its_checkpoint(home: Path, tmp_path: Path) -> None:
    """Interrupted after step 2 of 4 (a checkpoint every step), a rerun goes on at step 3;
    a rerun with other settings refuses the checkpoint instead of mixing two runs."""
    from apportion.errors import UsageError
    from apportion.experts.train import TrainConfig, read_examples, run_key, train_adapter

    base = catalogue.resolve(BASE, Settings(home=home).models_dir)
    examples = read_examples(home / "banana.jsonl")
    config = TrainConfig(max_steps=4, epochs=2, batch=2, save_every=1, learning_rate=3e-3)
    key = run_key("base", "data", config)
    seen: list[int] = []

    def stop_after_two(step: int, total: int, loss: float) -> None:
        seen.append(step)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(base, examples, config, work=tmp_path, key=key, on_step=stop_after_two)
    result = train_adapter(base, examples, config, work=tmp_path, key=key,
                           on_step=lambda step, total, loss: seen.append(step))  # fmt: skip
    assert seen == [1, 2, 3, 4] and result.steps == 4
    other = TrainConfig(max_steps=4, epochs=2, batch=2, save_every=1, learning_rate=1e-3)
    with pytest.raises(UsageError, match="--restart"):
        train_adapter(base, examples, other, work=tmp_path, key=run_key("base", "data", other))


def test_the_shipped_pal_math_expert_serves_program(
    small_engine: Runtime, tmp_path: Path
) -> None:
    """The adapter that ships with the package: found without training, checked against its
    manifest, and applied to the default model's program strategy."""
    expert = ExpertBook(tmp_path).find("pal-math")  # an empty home: the shipped one
    assert expert.shipped
    # the package holds the tensors; the GGUF file is written into the model cache, and is
    # byte for byte the adapter that was trained (verify checks the manifest's sha256)
    cached = tmp_path / "experts" / ".shipped" / "pal-math" / "adapter.gguf"
    assert not cached.exists()
    assert expert.verify() == cached and cached.stat().st_size == expert.manifest.adapter_bytes
    manifest = expert.manifest
    assert manifest.base_model == small_engine.settings.default_model == "qwen2.5-coder-0.5b"
    assert manifest.data.examples >= 200 and any("experts distil" in c for c in manifest.commands)
    # the benchmark items it learned from, so evaluations can leave them out; gsm8k, the
    # set its lift is measured on, is not among them
    datasets = {source.split("/")[0] for source in manifest.data.sources}
    assert len(manifest.data.sources) == manifest.data.examples and "gsm8k" not in datasets
    answer = small_engine.answer(Request(
        "A baker bakes 4 trays of 12 rolls and sells 30 of them. How many rolls are left?",
        strategy="program:expert=pal-math",
    ))  # fmt: skip
    assert answer.answer == "18"
    call = next(c for c in answer.ledger.calls if c.kind == "model")
    assert call.expert == "pal-math" and call.name == "qwen2.5-coder-0.5b"
