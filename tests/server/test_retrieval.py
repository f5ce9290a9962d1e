"""Retrieval through the server: `apportion serve --store PATH` (or the `store` setting) opens a
document store, and `rag` and `auto`'s factual route answer from it, with the chunks they
found the answer in as citations in the response's `apportion` object."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from apportion.cli.index import index_app
from apportion.config import Settings
from apportion.server.app import create_app
from server.support import live_server, serve_process

openai = pytest.importorskip("openai")

DOCS = {
    "eiffel.md": "# Eiffel Tower\n\nThe Eiffel Tower in Paris was completed in 1889 as the "
    "entrance arch to the World's Fair.",
    "rhine.txt": "The Rhine rises in the Swiss Alps and flows through Germany and the "
    "Netherlands into the North Sea.",
    "sb50.txt": "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50 "
    "at Levi's Stadium in Santa Clara, California.",
}
RHINE = [{"role": "user", "content": "Where does the Rhine rise?"}]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny corpus indexed the way a user indexes one: `apportion index add`."""
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    app = typer.Typer()
    app.add_typer(index_app, name="index")
    path = root / "docs.sqlite"
    result = CliRunner().invoke(app, ["index", "add", str(docs), "--store", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def client(settings: Settings, store_path: Path) -> Iterator[Any]:
    """A server built from settings whose `store` key names the store."""
    config = settings.model_copy(
        update={"default_model": "smollm2-135m", "threads": 1, "store": str(store_path)}
    )
    with live_server(create_app(config)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _ext(obj: Any) -> dict[str, Any]:
    return dict((obj.model_extra or {}).get("apportion") or {})


@pytest.mark.model
def test_rag_answers_from_the_store_with_citations(client: Any) -> None:
    resp = client.chat.completions.create(model="rag", messages=RHINE)
    assert "Swiss Alps" in resp.choices[0].message.content
    info = _ext(resp)
    assert info["route"] == ["rag"]
    (citation,) = info["citations"]
    assert citation.endswith("rhine.txt#0")
    # streamed, the citations ride on the last chunk with the rest of the apportion object
    chunks = list(client.chat.completions.create(model="rag", messages=RHINE, stream=True))
    assert _ext(chunks[-1])["citations"] == [citation]


@pytest.mark.model
def test_auto_routes_a_factual_question_to_the_store(client: Any) -> None:
    resp = client.chat.completions.create(
        model="apportion-auto",
        messages=[{"role": "user", "content": "Which team won Super Bowl 50?"}],
    )
    info = _ext(resp)
    # the solver goes first in every plan and declines; the store answers
    assert info["intent"] == "factual" and info["route"] == ["symbolic", "rag"]
    assert info["strategy"] == "rag"
    assert "Denver Broncos" in resp.choices[0].message.content


@pytest.mark.model
def test_rag_abstains_on_what_the_store_does_not_hold(client: Any) -> None:
    resp = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": "Who painted the Mona Lisa?"}]
    )
    assert resp.choices[0].message.content == "not found in the documents"
    assert _ext(resp)["citations"] == []


def _serve(*args: str) -> subprocess.Popen[bytes]:
    launcher = "import typer; from apportion.cli.serve import serve; typer.run(serve)"
    return subprocess.Popen(
        [sys.executable, "-c", launcher, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.model
def test_serve_store_option_opens_the_store(store_path: Path, tmp_path: Path) -> None:
    with serve_process(
        "--model", "smollm2-135m", "--threads", "1", "--keys-db", str(tmp_path / "keys.sqlite3"),
        "--store", str(store_path), "--log-level", "warning",
    ) as (url, proc):  # fmt: skip
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(model="rag", messages=RHINE)
        assert _ext(resp)["citations"][0].endswith("rhine.txt#0")
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert f"documents: {store_path} (3 chunks)" in err


def test_serve_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    """A misspelt --store is an error before any model loads, not an empty store."""
    missing = tmp_path / "nope.sqlite"
    proc = _serve("--keys-db", str(tmp_path / "keys.sqlite3"), "--store", str(missing))
    _, err = proc.communicate(timeout=120)
    text = " ".join(err.decode().split())  # rich wraps long lines
    assert proc.returncode == 2, text
    assert f"no document store at {missing}" in text and "apportion index add" in text
    assert "Traceback" not in text and not missing.exists()
