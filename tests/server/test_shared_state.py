"""Keys, quotas and the spend log on a real PostgreSQL server (started for the session by the
`postgres` fixture), shared by two key stores in one process and by two `apportion serve`
replicas: a capped key never overspends by more than one request, a revoked key is refused by
the other replica at once, and a killed replica loses no completed request's spend."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.server.auth import KeyStore, Spend
from servers import crash, env_with, serve_process

CAP = 1.5e9  # FLOPs: about ten of the echo requests below
QUESTION = "question {:02d}"


def test_two_stores_on_one_database_share_keys_holds_and_spend(postgres: str) -> None:
    one, two = KeyStore(postgres), KeyStore(postgres)  # two replicas' stores
    try:
        key, secret = one.add(f"shared-{time.monotonic_ns()}", daily_flops=CAP)
        assert two.authenticate(secret) == key
        spent: list[float] = []
        lock = threading.Lock()

        def request(i: int) -> None:
            store = (one, two)[i % 2]
            hold = f"h-{key.id}-{i}"
            if not store.open_hold(key, hold, ttl_s=60).granted:
                return
            worst, actual = 2e8, 1.5e8  # the call's worst case, and what it really cost
            if store.hold(key, hold, flops=worst, usd=0.0, ttl_s=60).granted:
                store.settle(key.id, hold, flops=actual, usd=0.0,
                             spend=Spend("direct", "m", 10, 5, "ok"))  # fmt: skip
                with lock:
                    spent.append(actual)
            else:
                store.settle(key.id, hold, flops=0.0, usd=0.0)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(request, range(40)))
        charged = one.usage(key.id).flops
        assert charged == pytest.approx(sum(spent)) and charged <= CAP
        assert 5 <= len(spent) < 40  # the cap held, and was reached
        (row,) = two.spend_report(key=key.name)
        assert row.requests == len(spent) and row.route == "direct"
    finally:
        one.close()
        two.close()


def keys_cli(*args: str, state: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli", "keys", *args, "--state", state],
        capture_output=True, text=True, timeout=120, check=False, env=env_with(home=home),
    )  # fmt: skip


def test_two_served_replicas_on_postgresql(
    postgres: str, plugin_site: Path, tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    home = tmp_path / "admin"
    name = f"capped-{time.monotonic_ns()}"
    added = keys_cli("add", name, "--budget-flops", str(CAP), state=postgres, home=home)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    with ExitStack() as servers:
        urls, procs = [], []
        for label in ("r1", "r2"):
            where = tmp_path / label
            where.mkdir()
            config = where / "config.toml"
            config.write_text('default_model = "e"\n[[engines]]\nid = "e"\nkind = "echo"\n')
            url, proc = servers.enter_context(serve_process(
                "--config", str(config), "--state", postgres,
                env=env_with(plugin_site, home=where), log=where / "serve.log",
            ))  # fmt: skip
            urls.append(url)
            procs.append(proc)
        clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
                   for url in urls]  # fmt: skip

        def ask(i: int) -> str:
            try:
                clients[i % 2].chat.completions.create(
                    model="direct", max_tokens=16,
                    messages=[{"role": "user", "content": QUESTION.format(i)}],
                )  # fmt: skip
            except openai.APIStatusError as e:
                return str(e.status_code)
            return "200"

        # 40 requests at once, split between the replicas, against one capped key
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(ask, range(40)))
        report = keys_cli("usage", name, "--json", state=postgres, home=home)
        assert report.returncode == 0, report.stderr
        rows = [json.loads(line) for line in report.stdout.splitlines()]
        charged = sum(r["flops"] for r in rows)
        one_request = max(r["flops"] / r["requests"] for r in rows)
        print(
            f"40 requests on 2 replicas: {statuses.count('200')} answered, "
            f"{40 - statuses.count('200')} refused; charged {charged:.3g} of a {CAP:.3g} cap"
        )
        assert statuses.count("200") >= 5 and "429" in statuses
        assert charged <= CAP + one_request
        assert sum(r["requests"] for r in rows) >= statuses.count("200")

        # the key holder sees the same through the API
        usage = httpx.get(f"{urls[1]}/v1/usage", timeout=10,
                          headers={"Authorization": f"Bearer {secret}"}).json()  # fmt: skip
        assert usage["key"] == name and sum(r["flops"] for r in usage["data"]) == charged

        # revoked through one replica's store: the other refuses the key at once
        fresh = keys_cli("add", f"{name}-b", state=postgres, home=home).stdout.strip()
        assert urls[1] and ask_with(openai, urls[1], fresh) == "200"
        revoked = keys_cli("revoke", f"{name}-b", state=postgres, home=home)
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        assert ask_with(openai, urls[0], fresh) == "401"
        assert ask_with(openai, urls[1], fresh) == "401"
        assert time.monotonic() - started < 1.0

        # a replica killed mid-run: every request it answered is in the spend log
        third = keys_cli("add", f"{name}-c", state=postgres, home=home).stdout.strip()
        answered: list[int] = []

        def ask_first(i: int) -> None:
            if ask_with(openai, urls[0], third, i) == "200":
                answered.append(i)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask_first, i) for i in range(12)]
            while len(answered) < 4:
                time.sleep(0.05)
            crash(procs[0])  # mid-run: calls in flight on it go to the other replica
            for f in futures:
                f.result()
        logged = keys_cli("usage", f"{name}-c", "--json", state=postgres, home=home)
        requests = sum(json.loads(line)["requests"] for line in logged.stdout.splitlines())
        assert requests >= len(answered) >= 4


def ask_with(openai: Any, url: str, secret: str, i: int = 0) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
    try:
        client.chat.completions.create(
            model="direct",
            max_tokens=16,
            messages=[{"role": "user", "content": QUESTION.format(i)}],
        )
    except openai.APIStatusError as e:
        return str(e.status_code)
    except openai.APIConnectionError:
        return "down"
    return "200"
