"""Engine pools: replicas of one remote model, balanced by calls outstanding, a failing replica
ejected and its call tried on another. First the choice logic on scripted replicas, then two
real `apportion serve` replicas behind a third, one of them killed mid-run."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from apportion.config import RemoteEngineConfig
from apportion.engines.pool import ReplicaPool
from apportion.engines.registry import EngineRegistry
from apportion.errors import EngineError, EngineUnavailableError
from apportion.ledger import Ledger
from apportion.server.metrics import ServerMetrics
from apportion.strategies.base import RunContext
from apportion.types import Completion, Message
from fakes import FakeClock, ScriptedEngine
from servers import crash, env_with, serve_process

HI = [Message("user", "hi")]
URLS = ["http://a:8000/v1", "http://b:8000/v1"]


class Replica(ScriptedEngine):
    """A scripted replica that can be made to fail as an unreachable server does, at once or
    after `fail_after` pieces of a stream."""

    down: bool = False
    fail_after: int | None = None

    def generate(self, messages: Sequence[Message], **kw: Any) -> list[Completion]:
        if self.down:
            raise EngineUnavailableError(f"{self.model_id} is unreachable")
        return super().generate(messages, **kw)

    def stream(self, messages: Sequence[Message], **kw: Any) -> Generator[str, None, Completion]:
        if self.down:
            raise EngineUnavailableError(f"{self.model_id} is unreachable")
        pieces = super().stream(messages, **kw)
        if self.fail_after is None:
            return (yield from pieces)
        for _ in range(self.fail_after):
            yield next(pieces)
        raise EngineUnavailableError(f"{self.model_id} failed mid-stream")


def pool(*replicas: Replica, clock: FakeClock | None = None, **config: Any) -> ReplicaPool:
    settings = RemoteEngineConfig(
        id="pool", base_urls=URLS[: len(replicas)], model="m", params=1e6,
        retry_base_delay_s=0.0, **config,
    )  # fmt: skip
    return ReplicaPool(settings, engines=replicas, clock=clock or FakeClock(), sleep=lambda _: None)


def replicas(n: int = 2, replies: int = 20) -> list[Replica]:
    return [Replica([f"from {name}"] * replies, model_id=name) for name in "ab"[:n]]


def test_calls_take_turns_over_equal_replicas_and_name_the_one_that_served() -> None:
    a, b = replicas()
    p = pool(a, b)
    served = [p.generate(HI, max_tokens=8)[0] for _ in range(6)]
    assert Counter(c.replica for c in served) == {URLS[0]: 3, URLS[1]: 3}
    assert all(c.text == ("from a" if c.replica == URLS[0] else "from b") for c in served)


def test_a_call_goes_to_the_replica_with_fewer_outstanding() -> None:
    a, b = replicas()
    p = pool(a, b)
    held = p.stream(HI, max_tokens=8)
    next(held)  # a stream in flight on one replica
    busy = {s.url for s in p.replica_states() if s.outstanding}
    for _ in range(3):
        (c,) = p.generate(HI, max_tokens=8)
        assert c.replica not in busy
    held.close()
    assert all(s.outstanding == 0 for s in p.replica_states())


def test_a_failing_replica_is_ejected_and_its_call_served_by_another() -> None:
    clock = FakeClock()
    a, b = replicas()
    a.down = True
    p = pool(a, b, clock=clock, replica_cooldown_s=30.0)
    served = [p.generate(HI, max_tokens=8)[0].replica for _ in range(4)]
    assert served == [URLS[1]] * 4
    states = {s.url: s for s in p.replica_states()}
    assert states[URLS[0]].failed == 1 and not states[URLS[0]].healthy(clock.now)
    assert states[URLS[1]].served == 4
    # after the cool-down the replica is tried again, and back in turn once it answers
    a.down = False
    clock.now += 31
    later = {p.generate(HI, max_tokens=8)[0].replica for _ in range(4)}
    assert later == set(URLS)


def test_when_every_replica_fails_the_error_names_each() -> None:
    a, b = replicas()
    a.down = b.down = True
    p = pool(a, b, max_attempts=5)
    with pytest.raises(EngineUnavailableError) as raised:
        p.generate(HI, max_tokens=8)
    assert URLS[0] in raised.value.message and URLS[1] in raised.value.message
    assert sum(s.failed for s in p.replica_states()) == 5  # max_attempts tries in all


def test_a_request_error_is_not_retried_elsewhere() -> None:
    a, b = replicas()
    p = pool(a, b)

    def refuse(*_: Any, **__: Any) -> list[Completion]:
        raise EngineError("HTTP 400: bad request")

    a.generate = b.generate = refuse  # type: ignore[method-assign]
    with pytest.raises(EngineError, match="400"):
        p.generate(HI, max_tokens=8)
    assert sum(s.failed for s in p.replica_states()) == 0


def test_a_stream_moves_to_another_replica_before_its_first_token() -> None:
    a, b = replicas()
    a.down = True
    p = pool(a, b)
    pieces = p.stream(HI, max_tokens=8)
    text = []
    try:
        while True:
            text.append(next(pieces))
    except StopIteration as done:
        completion: Completion = done.value
    assert "".join(text) == "from b" and completion.replica == URLS[1]


def collect(pieces: Generator[str, None, Completion]) -> tuple[str, Completion]:
    text = []
    try:
        while True:
            text.append(next(pieces))
    except StopIteration as done:
        return "".join(text), done.value


def test_a_stream_cut_mid_way_continues_on_another_replica_without_repeating() -> None:
    reply = "one two three four five"
    a, b = (Replica([reply] * 4, model_id=name) for name in "ab")
    a.fail_after = 2
    text, completion = collect(pool(a, b).stream(HI, max_tokens=16))
    assert text == reply and completion.replica == URLS[1]


def test_a_stream_that_another_replica_would_answer_differently_fails() -> None:
    a = Replica(["one two three"] * 4, model_id="a")
    b = Replica(["uno dos tres"] * 4, model_id="b")
    a.fail_after = 2
    with pytest.raises(EngineUnavailableError, match="did not begin with"):
        collect(pool(a, b).stream(HI, max_tokens=16))


def test_the_ledger_names_the_replica() -> None:
    a, b = replicas()
    p = pool(a, b)
    ctx = RunContext.over(lambda _id: p, "pool", Ledger())
    ctx.generate(HI, max_tokens=8)
    (charge,) = ctx.ledger.charges
    assert charge.replica in URLS and charge.to_dict()["replica"] == charge.replica
    plain = RunContext.over(lambda _id: ScriptedEngine(["x"]), "scripted", Ledger())
    plain.generate(HI, max_tokens=8)
    assert "replica" not in plain.ledger.charges[0].to_dict()  # other records as they were


def test_replicas_show_in_metrics() -> None:
    clock = FakeClock()
    a, b = replicas()
    a.down = True
    p = pool(a, b, clock=clock)
    p.generate(HI, max_tokens=8)
    metrics = ServerMetrics()
    metrics.watch_replicas(lambda: {"pool": p.replica_states()})
    text = metrics.render()[0].decode()
    assert f'apportion_replica_calls_total{{engine="pool",replica="{URLS[1]}"}} 1.0' in text
    assert f'apportion_replica_failures_total{{engine="pool",replica="{URLS[0]}"}} 1.0' in text
    assert f'apportion_replica_outstanding{{engine="pool",replica="{URLS[0]}"}} 0.0' in text


def test_an_entry_names_one_url_or_several() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        RemoteEngineConfig(id="x", model="m", params=1e6)
    one = RemoteEngineConfig(id="x", base_url=URLS[0], model="m", params=1e6)
    many = RemoteEngineConfig(id="x", base_url=URLS[0], base_urls=URLS, model="m", params=1e6)
    assert one.urls() == [URLS[0]] and many.urls() == URLS
    kinds = EngineRegistry()
    # one server keeps the cache key it always had; a pool is keyed by all its replicas
    assert kinds.fingerprint(one) == f"remote:{URLS[0]}|m"
    assert kinds.fingerprint(many) == f"remote:pool({URLS[0]},{URLS[1]})|m"


# --------------------------------------------------------------------------- real servers

REPLICA_CONFIG = 'default_model = "e"\n[[engines]]\nid = "e"\nkind = "echo"\n'


def front_config(urls: list[str]) -> str:
    listed = ", ".join(f'"{u}/v1"' for u in urls)
    # the replicas answer `model: direct` with their default model, the echo engine
    return (
        'default_model = "pool"\n[[engines]]\nid = "pool"\nkind = "openai"\nmodel = "direct"\n'
        f"params = 1e6\nbase_urls = [{listed}]\nreplica_cooldown_s = 60\ntimeout_s = 30\n"
    )


def test_two_served_replicas_share_the_load_and_one_killed_loses_no_request(
    plugin_site: Path, tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    with ExitStack() as servers:
        urls, procs = [], []
        for name in ("r1", "r2"):
            home = tmp_path / name
            home.mkdir()
            (home / "config.toml").write_text(REPLICA_CONFIG)
            url, proc = servers.enter_context(serve_process(
                "--config", str(home / "config.toml"), env=env_with(plugin_site, home=home),
                log=home / "serve.log",
            ))  # fmt: skip
            urls.append(url)
            procs.append(proc)
        home = tmp_path / "front"
        home.mkdir()
        (home / "config.toml").write_text(front_config(urls))
        front, _ = servers.enter_context(serve_process(
            "--config", str(home / "config.toml"), env=env_with(home=home),
            log=home / "serve.log",
        ))  # fmt: skip
        client = openai.OpenAI(base_url=f"{front}/v1", api_key="unused", max_retries=0)
        done = threading.Semaphore(0)

        def ask(i: int) -> str:
            resp = client.chat.completions.create(
                model="pool", messages=[{"role": "user", "content": f"question {i:02d}"}],
                extra_body={"apportion": {"strategy": "direct", "return_ledger": True}},
            )  # fmt: skip
            done.release()
            (call,) = resp.model_extra["apportion"]["ledger"]["calls"]
            assert resp.choices[0].message.content == f"question {i:02d}"[::-1]
            return str(call["replica"])

        with ThreadPoolExecutor(8) as workers:
            futures = [workers.submit(ask, i) for i in range(40)]
            for _ in range(15):
                done.acquire(timeout=120)
            crash(procs[0])  # mid-run: calls in flight on it go to the other replica
            served = [f.result(timeout=300) for f in futures]
        split = Counter(served)
        print(f"load split over 40 requests, {urls[0]} killed after 15: {dict(split)}")
        assert sum(split.values()) == 40  # none lost
        assert split[f"{urls[0]}/v1"] >= 3 and split[f"{urls[1]}/v1"] >= 20
        metrics = httpx.get(f"{front}/metrics", timeout=10).text
        assert f'apportion_replica_healthy{{engine="pool",replica="{urls[0]}/v1"}} 0.0' in metrics
        assert f'apportion_replica_healthy{{engine="pool",replica="{urls[1]}/v1"}} 1.0' in metrics
