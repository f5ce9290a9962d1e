"""`apportion ask` (and the top-level --help, --version) as a user runs it, in a subprocess, on
the real default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apportion.router.policy import CalibratedPolicy
from cli.support import apportion

NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?"
)
LEDGER_FIELDS = ("prompt_tokens", "completion_tokens", "flops", "wall_s", "energy_j", "cost_usd")


def ask_json(*args: str) -> dict[str, object]:
    proc = apportion("ask", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def check_ledger(ledger: dict[str, object]) -> None:
    for name in LEDGER_FIELDS:
        value = ledger[name]
        assert isinstance(value, int | float) and value >= 0, (name, value)
    calls = ledger["calls"]
    assert isinstance(calls, list) and calls
    for call in calls:
        assert call["wall_s"] >= 0 and call["flops"] >= 0 and call["energy_j"] >= 0


def test_arithmetic_is_solved_exactly() -> None:
    out = ask_json("What is 17*23+5?")
    assert out["answer"] == "396"
    assert out["strategy"] in {"symbolic", "program"}
    assert out["intent"] == "arithmetic"
    check_ledger(out["ledger"])  # type: ignore[arg-type]
    # the shipped policy's map says what the strategy's confidence meant in its traces
    maps = CalibratedPolicy.load().confidence_maps
    expected = maps[str(out["strategy"])](float(out["confidence"]))  # type: ignore[arg-type]
    assert out["calibrated_confidence"] == round(expected, 4)
    explained = apportion("ask", "What is 17*23+5?", "--explain")
    assert explained.returncode == 0, explained.stderr
    assert "of its answers this confident were right" in explained.stderr


@pytest.mark.model
def test_word_problem_gets_72() -> None:
    out = ask_json(NATALIA)
    assert out["answer"] == "72", out
    assert out["intent"] == "math_word"
    check_ledger(out["ledger"])  # type: ignore[arg-type]


@pytest.mark.model
def test_direct_factual_answer_is_charged_flops() -> None:
    out = ask_json("What is the capital of Australia?", "--strategy", "direct")
    assert "Canberra" in str(out["answer"])
    assert out["strategy"] == "direct"
    ledger = out["ledger"]
    check_ledger(ledger)  # type: ignore[arg-type]
    assert ledger["flops"] > 0  # type: ignore[index,operator]
    assert ledger["calls"][0]["kind"] == "model"  # type: ignore[index]


def test_blank_question_exits_2_with_one_line() -> None:
    proc = apportion("ask", "   ")
    assert proc.returncode == 2
    assert "empty" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert proc.stdout == ""


def test_unknown_names_list_valid_ones() -> None:
    proc = apportion("ask", "hi", "--strategy", "nope")
    assert proc.returncode == 2 and "program" in proc.stderr and "symbolic" in proc.stderr
    proc = apportion("ask", "hi", "--model", "gpt-17")
    assert proc.returncode == 2 and "qwen2.5-coder-0.5b" in proc.stderr


@pytest.mark.model
def test_question_longer_than_context_is_refused() -> None:
    proc = apportion("ask", "word " * 6000, "--strategy", "direct")
    assert proc.returncode == 2
    assert "context" in proc.stderr


@pytest.mark.model
def test_the_context_size_is_set_with_n_ctx_which_the_overflow_error_names() -> None:
    question = "word " * 400  # about 400 tokens: fits the default 4096, not 256
    args = ("ask", question, "--strategy", "direct", "--model", "smollm2-135m", "--max-tokens", "4")
    small = apportion(*args, "--n-ctx", "256")
    assert small.returncode == 2
    said = " ".join(small.stderr.split())
    assert "256-token context" in said and "--n-ctx N" in said and "8,192" in said
    assert apportion(*args, "--n-ctx", "1024").returncode == 0


def test_help_teaches() -> None:
    proc = apportion("ask", "--help")
    assert proc.returncode == 0
    assert "--strategy" in proc.stdout and "17*23+5" in proc.stdout


def test_version() -> None:
    from apportion import __version__

    proc = apportion("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"apportion {__version__}"


def test_ask_dash_reads_the_question_from_stdin() -> None:
    proc = apportion("ask", "-", "--strategy", "symbolic", "--json", stdin="What is 17*23+5?\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answer"] == "396"
    assert "stdin" in apportion("ask", "--help").stdout


def test_ask_dash_takes_a_question_too_long_for_argv() -> None:
    # One argv string is capped at 128 KiB on Linux; stdin is not. 250,001 characters reach the
    # engine whole, and its length limit (not the shell's) answers.
    proc = apportion("ask", "-", "--strategy", "symbolic", stdin="?" * 250_000 + "x")
    assert proc.returncode == 2
    assert "250,001 characters" in proc.stderr
    empty = apportion("ask", "-", stdin="  \n")
    assert empty.returncode == 2 and "empty" in empty.stderr


# Runs the CLI as if the embed extra were not installed: a None entry in sys.modules makes both
# `import sentence_transformers` and importlib's find_spec report it missing.
WITHOUT_EMBED = (
    "import sys; sys.modules['sentence_transformers'] = None; "
    "from apportion.cli import app; app(prog_name='apportion')"
)


@pytest.mark.model
def test_rag_without_the_embed_extra_warns_in_one_clean_line(tmp_path: Path) -> None:
    doc = tmp_path / "eiffel.txt"
    doc.write_text("The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n")
    store = str(tmp_path / "store.sqlite")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_EMBED, *args],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    added = run("index", "add", str(doc), "--store", store)
    assert added.returncode == 0, added.stderr
    proc = run("ask", "When was the Eiffel Tower completed?", "--strategy", "rag", "--store",
               store, "--model", "smollm2-135m", "--max-tokens", "16")  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    warning_lines = [line for line in proc.stderr.splitlines() if "bm25" in line]
    assert len(warning_lines) == 1, proc.stderr
    assert warning_lines[0].startswith("warning: ")
    assert "pip install" in warning_lines[0]
    # none of Python's warning format: no file:line prefix, no category name, no source line
    assert "Warning" not in proc.stderr and "warnings.warn" not in proc.stderr
    assert ".py:" not in proc.stderr
