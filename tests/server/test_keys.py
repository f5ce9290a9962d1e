"""API keys: hashed at rest, 401 without a valid one, daily budgets that end in 429 and
survive a restart, and the `keys` admin commands."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from apportion.cli.keys import keys_app
from apportion.server.app import create_app
from apportion.server.auth import KeyStore
from server.support import FakeEngine, assert_openai_error, fake_core, live_server

CHAT = "/v1/chat/completions"
BODY = {"model": "direct", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    key, secret = store.add("alice", daily_flops=1e12)
    assert secret.startswith("ap-") and len(secret) > 40
    assert store.authenticate(secret) == key
    assert store.authenticate(secret + "x") is None
    store.close()
    raw = sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT * FROM keys").fetchall()
    assert secret not in repr(raw) and secret[3:] not in repr(raw)


def test_bad_key_definitions_are_refused(tmp_path: Path) -> None:
    from apportion.errors import UsageError

    store = KeyStore(tmp_path / "keys.sqlite3")
    store.add("bob")
    with pytest.raises(UsageError, match="already exists"):
        store.add("bob")
    with pytest.raises(UsageError, match="positive"):
        store.add("carol", daily_flops=0)
    store.close()


def test_no_keys_means_no_auth(tmp_path: Path) -> None:
    core = fake_core(tmp_path)
    store = KeyStore(tmp_path / "keys.sqlite3")
    with live_server(create_app(core.settings, engine=core, keys=store)) as url:
        assert httpx.post(url + CHAT, json=BODY).status_code == 200
        assert httpx.get(url + "/healthz").json()["auth"] is False


def test_keys_401_budgets_429_and_persistence(tmp_path: Path) -> None:
    engine = FakeEngine("one two three four five six")  # always fills max_tokens=4
    db = tmp_path / "keys.sqlite3"
    store = KeyStore(db)
    # What one request costs: the fake's FLOPs for its prompt + 4 tokens, all charged.
    core = fake_core(tmp_path, engine)
    with live_server(create_app(core.settings, engine=core)) as url:
        one = httpx.post(url + CHAT, json=BODY).json()["apportion"]["ledger"]["flops"]
    _, limited = store.add("limited", daily_flops=1.5 * one)
    _, unlimited = store.add("unlimited")

    with live_server(create_app(core.settings, engine=core, keys=store)) as url:
        error = assert_openai_error(httpx.post(url + CHAT, json=BODY), 401)
        assert error["code"] == "missing_api_key"
        wrong = {"Authorization": "Bearer ap-not-a-key"}
        assert (
            assert_openai_error(httpx.post(url + CHAT, json=BODY, headers=wrong), 401)["code"]
            == "invalid_api_key"
        )
        assert_openai_error(httpx.get(url + "/v1/models"), 401)
        assert httpx.get(url + "/healthz").json()["auth"] is True

        auth = {"Authorization": f"Bearer {limited}"}
        first = httpx.post(url + CHAT, json=BODY, headers=auth)
        assert first.status_code == 200, first.text
        # Half a request's worth is left: the next one cannot fit in it.
        second = httpx.post(url + CHAT, json=BODY, headers=auth)
        error = assert_openai_error(second, 429)
        assert error["type"] == "insufficient_quota"
        assert int(second.headers["Retry-After"]) > 0
        # The solver spends no FLOPs, so the same key may still use it.
        math = {"model": "apportion-auto", "messages": [{"role": "user", "content": "2+2"}]}
        assert httpx.post(url + CHAT, json=math, headers=auth).status_code == 200
        other = {"Authorization": f"Bearer {unlimited}"}
        assert httpx.post(url + CHAT, json=BODY, headers=other).status_code == 200
    store.close()

    used = KeyStore(db)
    limited_key = used.authenticate(limited)
    assert limited_key is not None
    spent = used.usage(limited_key.id)
    # three requests ran: the refused one was stopped by its budget before spending anything
    assert spent.flops == pytest.approx(one) and spent.requests == 3
    # Spend the rest out of band; after a restart the key is refused before any work.
    used.record(limited_key.id, flops=one, usd=0.0)
    with live_server(create_app(core.settings, engine=core, keys=used)) as url:
        calls = len(engine.calls)
        r = httpx.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {limited}"})
        error = assert_openai_error(r, 429)
        assert error["code"] == "daily_budget_exceeded"
        assert len(engine.calls) == calls
        assert httpx.post(url + CHAT, json=BODY, headers=other).status_code == 200
    used.close()


def test_revoked_keys_are_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    _, a = store.add("a")
    _, b = store.add("b")
    assert store.revoke("a") and not store.revoke("a")
    core = fake_core(tmp_path)
    with live_server(create_app(core.settings, engine=core, keys=store)) as url:
        assert_openai_error(
            httpx.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {a}"}), 401
        )
        assert httpx.post(
            url + CHAT, json=BODY, headers={"Authorization": f"Bearer {b}"}
        ).is_success
    store.close()


def test_keys_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "k.sqlite3")
    added = runner.invoke(keys_app, ["add", "dana", "--budget-flops", "1e15", "--keys-db", db])
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip().splitlines()[0]
    assert secret.startswith("ap-")
    listed = runner.invoke(keys_app, ["list", "--keys-db", db])
    assert listed.exit_code == 0 and "dana" in listed.stdout and "1e+15" in listed.stdout
    assert secret not in listed.stdout
    assert runner.invoke(keys_app, ["add", "dana", "--keys-db", db]).exit_code == 2
    assert runner.invoke(keys_app, ["revoke", "dana", "--keys-db", db]).exit_code == 0
    assert runner.invoke(keys_app, ["revoke", "dana", "--keys-db", db]).exit_code == 1
    store = KeyStore(Path(db))
    assert store.authenticate(secret) is None and not store.enabled()
    store.close()


def test_data_the_settings_name_outside_home_is_hidden_from_programs(tmp_path: Path) -> None:
    """A key store and a document store kept outside APPORTION_HOME are among the paths the
    sandbox hides (Settings.data_paths), so a program the model writes cannot read them."""
    from apportion.config import Settings

    keys_file = tmp_path / "secrets" / "keys.sqlite3"
    docs_file = tmp_path / "corpus" / "docs.sqlite"
    settings = Settings(home=tmp_path / "home", store=str(docs_file), keys_db=keys_file)
    assert {keys_file, docs_file} <= set(settings.data_paths())
    lite = Settings(home=tmp_path / "home", store=f"milvus-lite:{tmp_path / 'lite'}")
    assert tmp_path / "lite" in lite.data_paths()
    remote = Settings(home=tmp_path / "home", store="http://127.0.0.1:19530")
    assert not any("19530" in str(p) for p in remote.data_paths())


def test_serve_names_its_key_store_in_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --keys-db` and `--store` go into the settings the engine (and so the sandbox)
    reads, not only into the server."""
    import apportion.cli.serve as server_cli

    seen = {}

    def fake_serve(app: object, **_: object) -> None:
        seen["settings"] = app.state.apportion.engine.settings  # type: ignore[attr-defined]

    monkeypatch.setattr("apportion.server.process.serve", fake_serve)
    monkeypatch.setattr(
        "apportion.engine.Engine.engine_for", lambda self, model_id: None, raising=True
    )
    docs = tmp_path / "docs.sqlite"
    from apportion.tools.store.embedded import EmbeddedStore

    EmbeddedStore(docs, embedder=None).close()
    keys_file = tmp_path / "elsewhere" / "keys.sqlite3"
    server_cli.serve(
        host="127.0.0.1", port=8000, config=None, model="smollm2-135m", threads=1,
        queue_depth=1, timeout=5.0, max_body_bytes=10_000, max_tokens_limit=64,
        keys_db=keys_file, store=str(docs), policy=None, log_level="warning",
    )  # fmt: skip
    paths = set(seen["settings"].data_paths())
    assert keys_file in paths and docs in paths
