from pathlib import Path

from apportion.bench.cache import SqliteCompletionCache
from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.types import Completion, Message
from fakes import ScriptedEngine


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SqliteCompletionCache(path) as cache:
        cache.put("k", [(Completion("hi", 3, 1, "stop", (-0.5,), cached_tokens=2), 0.25)])
        cache.put("r", [(Completion("42", 3, 9, "stop", reasoning="six sevens"), 0.5)])
    with SqliteCompletionCache(path) as cache:
        ((c, wall),) = cache.get("k") or []
        assert (c.text, c.prompt_tokens, c.token_logprobs, wall) == ("hi", 3, (-0.5,), 0.25)
        assert c.cached_tokens == 2  # replayed as the call that filled it read its prompt
        assert c.reasoning == ""
        ((r, _),) = cache.get("r") or []
        assert (r.text, r.reasoning) == ("42", "six sevens")  # a reasoning model's thinking
        assert cache.get("other") is None and len(cache) == 2


def test_second_identical_call_replays_and_is_charged_the_same(tmp_path: Path) -> None:
    engine = ScriptedEngine(["first reply"])  # a second real call would raise (no replies left)
    with SqliteCompletionCache(tmp_path / "c.sqlite") as cache:
        ledgers = []
        for _ in range(2):
            ctx = RunContext.over(lambda _id: engine, "scripted", Ledger(), cache=cache)
            (c,) = ctx.generate([Message("user", "hello")], max_tokens=8)
            assert c.text == "first reply"
            ledgers.append(ctx.ledger.totals())
        assert len(engine.calls) == 1
        assert cache.hits == 1
        assert ledgers[0].flops == ledgers[1].flops and ledgers[0].wall_s == ledgers[1].wall_s
        # a different seed is a different key
        ctx = RunContext.over(lambda _id: engine, "scripted", Ledger(), cache=cache, seed=5)
        engine.replies.append("seeded")
        assert ctx.generate([Message("user", "hello")], max_tokens=8)[0].text == "seeded"
