"""`apportion calibrate`, and `ask --policy --explain`, as a user runs them."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from cli.support import apportion
from router.test_calibrate import traces
from shared_data import shared_data_dir


def write_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with (folder / "results.jsonl").open("w") as f:
        for r in traces():
            f.write(json.dumps(asdict(r)) + "\n")
    return folder


def test_calibrate_writes_a_deterministic_policy(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    first, second = tmp_path / "p1.json", tmp_path / "p2.json"
    for out in (first, second):
        proc = apportion("calibrate", "--runs", str(run), "-o", str(out), "--min-cell", "10")
        assert proc.returncode == 0, proc.stderr
    assert first.read_text() == second.read_text().replace(str(second), str(first))
    policy = json.loads(first.read_text())
    arithmetic = [c for k, c in policy["cells"].items() if k.startswith("arithmetic/")]
    assert arithmetic and all(c["chosen"] == "symbolic@0.3>cot" for c in arithmetic)
    assert policy["source"]["command"].startswith("apportion calibrate --runs")
    assert "math_word" in proc.stdout and "symbolic" in proc.stdout  # the table of cells


def test_a_strategy_traced_on_few_items_is_named_not_silently_dropped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = traces()
    few = [replace(r, strategy="cot:model=qwen2.5-coder-1.5b") for r in rows[:30]
           if r.strategy == "cot"]  # fmt: skip
    (run / "results.jsonl").write_text(
        "".join(json.dumps(asdict(r)) + "\n" for r in [*rows, *few]))  # fmt: skip
    proc = apportion("calibrate", "--runs", str(run), "-o", str(tmp_path / "p.json"))
    assert proc.returncode == 0, proc.stderr
    warning = " ".join(proc.stderr.split())
    assert "cot:model=qwen2.5-coder-1.5b was traced on 14% of the items" in warning
    strategies = json.loads((tmp_path / "p.json").read_text())["strategies"]
    assert strategies == ["cot", "program", "symbolic"]


def test_calibrate_errors_say_what_to_do(tmp_path: Path) -> None:
    proc = apportion("calibrate", "--runs", str(tmp_path / "nope"), "-o", str(tmp_path / "p"))
    assert proc.returncode == 2 and "apportion bench --out" in proc.stderr
    proc = apportion("calibrate", "--help")
    assert proc.returncode == 0 and "--lambda" in proc.stdout


def test_ask_explains_its_plan(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    policy = tmp_path / "policy.json"
    assert apportion("calibrate", "--runs", str(run), "-o", str(policy)).returncode == 0
    proc = apportion("ask", "What is 17*23+5?", "--policy", str(policy), "--explain", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "396" and out["strategy"] == "symbolic"
    explain = out["explain"]
    assert explain["features"]["intent"] == "arithmetic"
    assert explain["features"]["intent_probabilities"]["arithmetic"] > 0.5
    assert explain["plan"] == "symbolic@0.3>cot" and "arithmetic/" in explain["reason"]
    assert explain["expected"]["accuracy"] == 1.0
    assert {a["plan"] for a in explain["alternatives"]} >= {"symbolic@0.3>cot"}
    route = explain["route"]
    assert route["chosen"] == "symbolic@0.3>cot"
    chosen = next(p for p in route["plans"] if p["plan"] == route["chosen"])
    assert chosen["p_correct"] == 1.0 and chosen["flops"] == explain["expected"]["flops"]
    # The human-readable form goes to stderr, beside the answer on stdout.
    proc = apportion("ask", "What is 17*23+5?", "--policy", str(policy), "--explain")
    assert proc.returncode == 0 and proc.stdout.strip() == "396"
    assert "features" in proc.stderr and "plan" in proc.stderr and "why" in proc.stderr


def test_a_training_share_reports_the_held_out_rest(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "policy.json"
    proc = apportion("calibrate", "--runs", str(run), "-o", str(out), "--train-share", "0.5")
    assert proc.returncode == 0, proc.stderr
    policy = json.loads(out.read_text())
    held = policy["held_out"]
    assert 0 < held["n"] < 70 and policy["train_share"] == 0.5
    accuracy, flops = held["auto"]
    # symbolic for arithmetic, program-then-cot for word problems: right on everything here
    assert accuracy == 1.0 and flops < held["fixed"]["cot"][1]
    assert "held out" in proc.stdout and "oracle" in proc.stdout
    # the floor: arithmetic answered free by symbolic, word problems by program (symbolic
    # declines them, so it cannot be their cheapest answer)
    floor_accuracy, floor_flops = held["cheapest_answer"]
    assert 0 < floor_flops < held["fixed"]["program"][1] and floor_accuracy < 1.0
    assert "cheapest answer (hindsight)" in proc.stdout
    # how far each strategy's confidence can be trusted, on the held-out half
    assert "AUROC" in proc.stdout and "ECE (isotonic)" in proc.stdout


def test_gzipped_traces_calibrate_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    run = write_run(tmp_path / "run")
    packed = tmp_path / "traces.jsonl.gz"
    packed.write_bytes(gzip.compress((run / "results.jsonl").read_bytes()))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert apportion("calibrate", "--runs", str(run), "-o", str(a)).returncode == 0
    assert apportion("calibrate", "--runs", str(packed), "-o", str(b)).returncode == 0
    cells = [json.loads(p.read_text())["cells"] for p in (a, b)]
    assert cells[0] == cells[1]


@pytest.mark.parametrize("name", ["policy.json", "predictor.json"])
def test_the_shipped_policies_are_what_their_recorded_commands_rebuild(
    tmp_path: Path, name: str
) -> None:
    """The default policy (the cells) and the shipped predictor (`--policy predictor`) ship
    with their traces; rebuilding either gives the same file."""
    import shlex

    from apportion.router.policy import POLICY_FILE, CalibratedPolicy
    from apportion.router.policy_file import PREDICTOR, PREDICTOR_FILE, load_policy
    from apportion.router.predictor import PredictedPolicy

    shared_data_dir()  # the archived traces get their questions back from it
    path = {"policy.json": POLICY_FILE, "predictor.json": PREDICTOR_FILE}[name]
    shipped = json.loads(path.read_text())
    kind = {"policy.json": CalibratedPolicy, "predictor.json": PredictedPolicy}[name]
    assert isinstance(load_policy(None if name == "policy.json" else Path(PREDICTOR)), kind)
    args = shlex.split(shipped["source"]["command"])[1:]  # after "apportion"
    out = args.index("-o") + 1
    args[out] = str(tmp_path / "rebuilt.json")
    repo = Path(__file__).resolve().parents[2]
    proc = apportion(*args, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    rebuilt = json.loads((tmp_path / "rebuilt.json").read_text())
    fitted = []
    for data in (shipped, rebuilt):
        data.pop("source")
        # the predictor's weights come from float32 gradient descent, whose sums BLAS may
        # order differently on another CPU: equal to within that, and every choice exact
        if "predictor" in data:
            fitted.append([data["predictor"].pop(k) for k in ("weights", "bias")])
    if fitted:
        import numpy as np

        for shipped_part, rebuilt_part in zip(*fitted, strict=True):
            np.testing.assert_allclose(rebuilt_part, shipped_part, rtol=1e-3, atol=1e-5)
    assert rebuilt == shipped


@pytest.mark.model  # the word problem is answered (SmolLM2, 8 tokens) after it is planned
def test_a_predictor_policy_plans_each_question_and_reports_its_predictions(
    tmp_path: Path,
) -> None:
    from apportion.router.policy_file import load_policy
    from apportion.router.predictor import PredictedPolicy

    run = write_run(tmp_path / "run")
    policy = tmp_path / "predictor.json"
    proc = apportion("calibrate", "--runs", str(run), "-o", str(policy), "--router", "predictor",
                     "--train-share", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(policy.read_text())
    assert data["router"] == "predictor" and data["cells"]  # the cells are kept beside it
    assert "auto (this policy: predictor)" in proc.stdout and "auto (its cells)" in proc.stdout
    assert isinstance(load_policy(policy), PredictedPolicy)
    proc = apportion("ask", "What is 17*23+5?", "--policy", str(policy), "--explain", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "396" and out["strategy"] == "symbolic"
    explain = out["explain"]
    assert explain["reason"].startswith("predicted for this question")
    assert explain["plan"].startswith("symbolic@")  # free and never wrong: first in every plan
    route = explain["route"]
    predicted = {p["plan"]: p["p_correct"] for p in route["plans"]}
    assert set(predicted) == {"cot", "program", "symbolic"}
    # symbolic solved every arithmetic question and no word problem; the predictor says so
    word = apportion("ask", "Tom has 4 apples and buys 9 more. How many apples does he have?",
                     "--policy", str(policy), "--explain", "--json", "--model", "smollm2-135m",
                     "--max-tokens", "8")  # fmt: skip
    assert word.returncode == 0, word.stderr
    on_word = {
        p["plan"]: p["p_correct"] for p in json.loads(word.stdout)["explain"]["route"]["plans"]
    }
    assert predicted["symbolic"] > 0.8 > 0.2 > on_word["symbolic"]


def test_a_policy_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("[1, 2]")
    proc = apportion("ask", "What is 2+2?", "--policy", str(bad))
    assert proc.returncode == 2 and "not a policy file" in proc.stderr
