"""`apportion index ...` mounted in a Typer app the way `apportion.cli` mounts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from apportion.cli.index import index_app

app = typer.Typer()
app.add_typer(index_app, name="index")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APPORTION_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("APPORTION_STORE", raising=False)
    monkeypatch.delenv("APPORTION_CONFIG", raising=False)
    return tmp_path / "home"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "eiffel.md").write_text("# Eiffel Tower\n\nThe Eiffel Tower was completed in 1889.")
    (root / "rhine.txt").write_text("The Rhine flows from the Swiss Alps into the North Sea.")
    (root / "more.jsonl").write_text(
        json.dumps({"id": "sb50", "text": "The Denver Broncos won Super Bowl 50."}) + "\n"
    )
    return root


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["index", *args])
    return result.exit_code, result.stdout, result.stderr


def test_add_search_stats_delete_in_the_default_store(home: Path, docs: Path) -> None:
    code, out, _ = run("add", str(docs))
    assert code == 0, out
    assert "indexed 3 document(s), 3 chunk(s)" in out and "0 unchanged" in out
    assert (home / "store.sqlite").is_file()  # $APPORTION_HOME/store.sqlite by default

    code, out, _ = run("search", "When was the Eiffel Tower completed?", "--json", "--k", "2")
    assert code == 0
    hits = json.loads(out)
    assert len(hits) == 2
    assert hits[0]["doc_id"] == str((docs / "eiffel.md").resolve())
    assert hits[0]["chunk_id"] == hits[0]["doc_id"] + "#0"
    assert "1889" in hits[0]["text"] and isinstance(hits[0]["score"], float)
    assert hits[0]["score"] >= hits[1]["score"]

    code, out, _ = run("search", "Broncos", "--mode", "bm25", "--json")
    assert [h["doc_id"] for h in json.loads(out)] == ["sb50"]

    code, out, _ = run("stats", "--json")
    stats = json.loads(out)
    assert (stats["documents"], stats["chunks"], stats["backend"]) == (3, 3, "sqlite")

    code, out, _ = run("delete", "sb50", "nope")
    assert code == 0 and "deleted 1 of 2 document(s)" in out and "holds 2 chunk(s)" in out
    code, out, _ = run("search", "Broncos", "--mode", "bm25", "--json")
    assert json.loads(out) == []


def test_readding_skips_unchanged_documents(home: Path, docs: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "elsewhere.sqlite")
    assert run("add", str(docs), "--store", store)[0] == 0
    (docs / "rhine.txt").write_text("The Rhine is 1,230 kilometres long.")
    code, out, _ = run("add", str(docs), "--store", store)
    assert code == 0 and "indexed 1 document(s)" in out and "2 unchanged" in out
    assert not (home / "store.sqlite").exists()  # --store was honoured


def test_plain_search_prints_a_table(home: Path, docs: Path) -> None:
    run("add", str(docs))
    code, out, _ = run("search", "Swiss Alps", "--mode", "bm25")
    assert code == 0 and "North Sea" in out and "Eiffel" not in out
    code, out, _ = run("search", "zebra", "--mode", "bm25")
    assert code == 0 and "no matches" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "--mode", "fuzzy"], "unknown search mode 'fuzzy'"),
        (["add", "/no/such/path"], "no such file or folder"),
        (["add", ".", "--chunk-words", "50", "--overlap", "50"], "overlap must be between"),
        (["search", "x", "--store", "ftp://host/db"], "unknown store URI"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(home: Path, args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert out == ""


@pytest.mark.model
def test_ask_reads_the_store_the_config_names(home: Path, docs: Path, tmp_path: Path) -> None:
    """`store = ...` in the config is the store `ask` answers from (as `serve` does)."""
    import subprocess
    import sys

    store = tmp_path / "elsewhere" / "docs.sqlite"
    store.parent.mkdir()
    assert run("add", str(docs), "--store", str(store))[0] == 0
    config = tmp_path / "config.toml"
    config.write_text(f'store = "{store}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "apportion.cli", "ask", "Where does the Rhine flow into?",
         "--strategy", "rag", "--model", "smollm2-135m", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["strategy"] == "rag" and "North Sea" in answer["answer"]
    assert answer["ledger"]["calls"][0]["name"] == "retrieval"
    assert not (home / "store.sqlite").exists()  # the default store was never made
