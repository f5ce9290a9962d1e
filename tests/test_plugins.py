"""The open module interface, end to end: the example plug-in package (examples/plugin) is
installed with pip and each of its pieces is used through `apportion ask`, `apportion bench`
and `apportion serve` (with the official openai client), as a user would; then each registry
on its own, broken plug-ins included.

How the package is installed: `pip install --no-deps --no-build-isolation --no-index --target
DIR` from a copy of examples/plugin (so no build files land in the repository), into a
temporary folder that the commands find on their PYTHONPATH, and this process on sys.path for
the in-process tests. That is an ordinary pip install that works offline and in CI, and it
leaves the environment as it found it: other tests, and other processes sharing this Python,
never see the plug-in's engine, store, solver or strategy. Nothing needs uninstalling.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from apportion.config import LlamaCppEngineConfig, RemoteEngineConfig, Settings
from apportion.engines.registry import EngineRegistry, EngineServices
from apportion.errors import UnknownNameError, UsageError
from apportion.plugins import ENGINES, SOLVERS, STORES, STRATEGIES, PluginIndex, PluginLoadError
from apportion.runtime import Engine
from apportion.strategies.registry import default_registry
from apportion.tools.solvers import SolverRegistry
from apportion.tools.store import SQLITE, StoreRegistry, open_store, store_scheme
from servers import env_with, serve_process

REPO = Path(__file__).resolve().parents[1]
ECHO_CONFIG = '[[engines]]\nid = "e"\nkind = "echo"\n'
# What the direct strategy sends before the question (strategies/direct.py).
DIRECT_SYSTEM = "Answer the user's question directly and concisely."
ECHO_PARAMS = 1e6  # the echo kind's default parameter count
FACTORIAL_20 = str(math.factorial(20))
EIFFEL = "The Eiffel Tower stands on the Champ de Mars in Paris."


# --------------------------------------------------------------------------- installing it


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed package whose entry points name a module that does not exist: a plug-in
    left half-uninstalled, say."""
    site = tmp_path_factory.mktemp("broken-site")
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[apportion.strategies]\nbroken = no_such_module_13:Strategy\n\n"
        "[apportion.engines]\nbrokenkind = no_such_module_13:KIND\n"
    )
    return site


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cli_env(plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_with(plugin_site, home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text(ECHO_CONFIG)
    return path


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "eiffel.md").write_text(f"# The Eiffel Tower\n\n{EIFFEL}\n")
    (folder / "rivers.md").write_text("# Rivers\n\nThe Danube flows into the Black Sea.\n")
    return folder


def ask_json(*args: str, env: dict[str, str]) -> dict[str, Any]:
    proc = run_cli("ask", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    payload: dict[str, Any] = json.loads(proc.stdout)
    return payload


# --------------------------------------------------------------------------- through ask


def test_echo_engine_answers_through_ask_and_is_charged(
    config: Path, cli_env: dict[str, str]
) -> None:
    """The issue's done-check: `ask "abc def" --model e --strategy direct --json` answers
    "fed cba" with a ledger entry for the call, its tokens and FLOPs."""
    out = ask_json("abc def", "--model", "e", "--strategy", "direct", "--config", str(config),
                   env=cli_env)  # fmt: skip
    assert out["answer"] == "fed cba"
    (call,) = out["ledger"]["calls"]
    assert call["kind"] == "model" and call["name"] == "e" and call["detail"] == "direct"
    prompt = len(DIRECT_SYSTEM) + len("abc def")  # one token per character
    assert call["prompt_tokens"] == prompt and call["completion_tokens"] == 7
    assert call["flops"] == pytest.approx(2 * ECHO_PARAMS * (prompt + 7))
    assert out["ledger"]["flops"] == call["flops"]


def test_plugin_strategy_runs_through_ask(config: Path, cli_env: dict[str, str]) -> None:
    out = ask_json("abc def", "--model", "e", "--strategy", "shout", "--config", str(config),
                   env=cli_env)  # fmt: skip
    assert out["answer"] == "FED CBA" and out["strategy"] == "shout"
    assert [c["name"] for c in out["ledger"]["calls"]] == ["e"]
    refused = run_cli("ask", "abc def", "--model", "e", "--strategy", "shout:max_tokens=0",
                      "--config", str(config), env=cli_env)  # fmt: skip
    assert refused.returncode == 2 and "shout:max_tokens must be between 1" in refused.stderr


def test_plugin_solver_answers_first_and_the_built_ins_still_answer(
    config: Path, cli_env: dict[str, str]
) -> None:
    """The factorial solver is asked before z3 and sympy, and charged as itself; what it
    declines still reaches the built-ins."""
    out = ask_json("What is 20 factorial?", "--strategy", "symbolic", "--config", str(config),
                   env=cli_env)  # fmt: skip
    assert out["answer"] == FACTORIAL_20
    assert [(c["kind"], c["name"]) for c in out["ledger"]["calls"]] == [("tool", "factorial")]
    out = ask_json("What is 17*23+5?", "--strategy", "symbolic", env=cli_env)
    assert out["answer"] == "396"
    assert [c["name"] for c in out["ledger"]["calls"]] == ["sympy"]
    out = ask_json("not ( True ) and False is", "--strategy", "symbolic", env=cli_env)
    assert out["answer"] == "False" and [c["name"] for c in out["ledger"]["calls"]] == ["z3"]


def test_plugin_store_serves_rag_through_ask(
    config: Path, cli_env: dict[str, str], docs: Path
) -> None:
    """`--store memory:DOCS`: the plug-in's in-process store, filled from DOCS, is what rag
    searches. rag asks the model only when the store returns a passage that holds the
    question's terms; from an empty `memory:` store it abstains without a model call."""
    question = "Where does the Eiffel Tower stand?"
    args = ["--model", "e", "--strategy", "rag:max_tokens=2000", "--config", str(config)]
    out = ask_json(question, *args, "--store", f"memory:{docs}", env=cli_env)
    calls = [(c["kind"], c["name"], c["detail"]) for c in out["ledger"]["calls"]]
    assert calls == [("tool", "retrieval", "rag: retrieve"), ("model", "e", "rag: answer")]
    # the echo reverses the whole user message: the question and the one relevant passage
    (_, call) = out["ledger"]["calls"]
    assert len(question) + len(EIFFEL) < call["completion_tokens"] < 2 * len(EIFFEL) + 60
    empty = ask_json(question, *args, "--store", "memory:", env=cli_env)
    assert [c["name"] for c in empty["ledger"]["calls"]] == ["retrieval"]
    assert empty["answer"] == "not found in the documents"


def test_models_lists_the_plugin_engine(config: Path, cli_env: dict[str, str]) -> None:
    proc = run_cli("models", "list", "--config", str(config), env={**cli_env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if "echo:" in line]
    assert row.split()[:4] == ["│", "e", "│", "echo:"]
    assert "the last user message reversed (1e+06 parameters charged)" in row


# --------------------------------------------------------------------------- through bench


def test_plugin_pieces_run_through_bench(
    config: Path, cli_env: dict[str, str], tmp_path: Path, docs: Path
) -> None:
    data = tmp_path / "items.jsonl"
    rows = [
        {"id": "echo", "question": "abc def", "answer": "fed cba"},
        {"id": "fact", "question": "What is 20 factorial?", "answer": FACTORIAL_20},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = run_cli("bench", "--data", str(data), "--strategies", "direct,shout,symbolic",
                   "--model", "e", "--out", str(out), "--config", str(config),
                   "--cache", str(tmp_path / "cache.sqlite"), env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = {
        (r["item_id"], r["strategy"]): r
        for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }
    assert results["echo", "direct"]["answer"] == "fed cba" and results["echo", "direct"]["correct"]
    assert results["echo", "shout"]["answer"] == "FED CBA"
    assert results["fact", "symbolic"]["answer"] == FACTORIAL_20
    assert results["fact", "symbolic"]["correct"]
    summary = json.loads((out / "summary.json").read_text())
    # direct: "fed cba" right, the reversed factorial question wrong; FLOPs charged for both
    assert summary["strategies"]["direct"]["accuracy"] == 0.5
    direct = summary["strategies"]["direct"]
    assert direct["flops"]["mean"] == pytest.approx(2 * ECHO_PARAMS * direct["tokens"]["mean"])
    assert summary["strategies"]["symbolic"]["flops"]["mean"] == 0  # a solver, no model


def test_bench_indexes_its_corpus_into_the_plugin_store(
    config: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"id": "eiffel", "title": "The Eiffel Tower", "text": EIFFEL})
        + "\n"
        + json.dumps({"id": "danube", "title": "Rivers", "text": "The Danube flows east."})
        + "\n"
    )
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"question": "Where does the Eiffel Tower stand?",
                                "answer": "Paris"}) + "\n")  # fmt: skip
    out = tmp_path / "run"
    proc = run_cli("bench", "--data", str(data), "--strategies", "rag:max_tokens=2000",
                   "--model", "e", "--corpus", str(corpus), "--store", "memory:",
                   "--out", str(out), "--config", str(config),
                   "--cache", str(tmp_path / "cache.sqlite"), env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 document(s) indexed" in proc.stderr and "memory:" in proc.stderr
    (result,) = map(json.loads, (out / "results.jsonl").read_text().splitlines())
    assert not result.get("abstained") and result["answer"]


# --------------------------------------------------------------------------- through serve


@pytest.fixture(scope="module")
def served(
    config: Path, plugin_site: Path, docs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`apportion serve` with the echo engine as its default model and the memory store."""
    home = tmp_path_factory.mktemp("serve-home")
    served_config = home / "config.toml"
    served_config.write_text(f'default_model = "e"\n{config.read_text()}')
    with serve_process(
        "--config", str(served_config), "--store", f"memory:{docs}",
        env=env_with(plugin_site, home=home), log=home / "serve.log",
    ) as (url, _):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def client(served: str) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)


def test_echo_engine_serves_through_the_openai_client(client: Any) -> None:
    assert "e" in [m.id for m in client.models.list()]
    resp = client.chat.completions.create(
        model="e",
        messages=[{"role": "user", "content": "abc def"}],
        extra_body={"apportion": {"strategy": "direct", "return_ledger": True}},
    )
    assert resp.choices[0].message.content == "fed cba"
    assert resp.usage.completion_tokens == 7
    assert resp.usage.prompt_tokens == len(DIRECT_SYSTEM) + 7
    (call,) = resp.model_extra["apportion"]["ledger"]["calls"]
    assert call["name"] == "e" and call["flops"] == pytest.approx(
        2 * ECHO_PARAMS * (resp.usage.prompt_tokens + 7)
    )


def test_echo_engine_streams_through_the_openai_client(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model="e",
            messages=[{"role": "user", "content": "abc def"}],
            stream=True,
            extra_body={"apportion": {"strategy": "direct"}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fed cba"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 7


def test_plugin_strategy_solver_and_store_serve(client: Any) -> None:
    shout = client.chat.completions.create(
        model="shout", messages=[{"role": "user", "content": "abc def"}]
    )
    assert shout.choices[0].message.content == "FED CBA"
    # the plug-in solver runs in the server's process; sympy in its worker processes
    for question, answer, tool in [
        ("What is 20 factorial?", FACTORIAL_20, "factorial"),
        ("What is 17*23+5?", "396", "sympy"),
    ]:
        resp = client.chat.completions.create(
            model="symbolic",
            messages=[{"role": "user", "content": question}],
            extra_body={"apportion": {"return_ledger": True}},
        )
        assert resp.choices[0].message.content == answer
        calls = resp.model_extra["apportion"]["ledger"]["calls"]
        assert [c["name"] for c in calls] == [tool]
    rag = client.chat.completions.create(
        model="e",
        messages=[{"role": "user", "content": "Where does the Eiffel Tower stand?"}],
        extra_body={"apportion": {"strategy": "rag:max_tokens=2000", "return_ledger": True}},
    )
    calls = rag.model_extra["apportion"]["ledger"]["calls"]
    assert [(c["name"], c["detail"]) for c in calls] == [
        ("retrieval", "rag: retrieve"), ("e", "rag: answer"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- broken plug-ins


def test_a_broken_plugin_breaks_only_its_own_name(
    config: Path, plugin_site: Path, broken_site: Path, tmp_path: Path
) -> None:
    env = env_with(plugin_site, broken_site, home=tmp_path)
    ok = run_cli("ask", "abc def", "--model", "e", "--strategy", "direct", "--config",
                 str(config), env=env)  # fmt: skip
    assert ok.returncode == 0 and "fed cba" in ok.stdout, ok.stderr
    assert "the strategy plug-in 'broken' failed to load" in ok.stderr  # said, not fatal
    broken = run_cli("ask", "abc def", "--strategy", "broken", env=env)
    assert broken.returncode == 1
    assert "the strategy plug-in 'broken' failed to load: ModuleNotFoundError" in broken.stderr
    assert "broken-plugin" in broken.stderr  # the package to reinstall or remove
    kind = tmp_path / "kind.toml"
    kind.write_text('[[engines]]\nid = "b"\nkind = "brokenkind"\n')
    refused = run_cli("ask", "abc def", "--model", "b", "--config", str(kind), env=env)
    assert refused.returncode == 1
    assert "the engine kind plug-in 'brokenkind' failed to load" in refused.stderr


# --------------------------------------------------------------------------- the registries


def points(*specs: tuple[str, str, str]) -> PluginIndex:
    return PluginIndex(EntryPoint(name, value, group) for name, value, group in specs)


@pytest.fixture
def example(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> PluginIndex:
    """The installed example plug-in, importable in this process and read as apportion reads
    installed packages."""
    monkeypatch.syspath_prepend(str(plugin_site))
    return PluginIndex()


BROKEN_MODULE = "no_such_module_13:thing"


def test_engine_kinds_map_names_to_factories(example: PluginIndex) -> None:
    kinds = EngineRegistry(example)
    assert kinds.config_model("openai") is RemoteEngineConfig
    assert kinds.config_model("llamacpp") is LlamaCppEngineConfig
    assert kinds.config_model("echo").__name__ == "EchoConfig"
    assert kinds.names()[:2] == ["openai", "llamacpp"] and "echo" in kinds.names()
    with pytest.raises(UnknownNameError) as raised:
        kinds.kind("telepathy")
    assert raised.value.hint is not None and "echo, expert, llamacpp, openai" in raised.value.hint
    # a catalogue model needs no entry: llama.cpp serves it under its own id
    entry = kinds.entry_for(Settings(), "smollm2-135m")
    assert isinstance(entry, LlamaCppEngineConfig) and entry.model == "smollm2-135m"
    assert not kinds.is_remote(entry)


def test_a_broken_or_wrong_engine_kind_is_reported_by_name() -> None:
    kinds = EngineRegistry(points(
        ("broken", BROKEN_MODULE, ENGINES),
        ("wrong", "apportion.engines.registry:EngineKind", ENGINES),  # the class, no instance
    ))  # fmt: skip
    with pytest.raises(PluginLoadError, match="'broken' failed to load: ModuleNotFoundError"):
        kinds.kind("broken")
    with pytest.raises(PluginLoadError, match="'wrong' is not an apportion.engines.registry"):
        kinds.kind("wrong")
    assert kinds.config_model("openai") is RemoteEngineConfig  # the rest keep working
    assert kinds.names() == ["openai", "llamacpp", "expert"]


def test_engine_entries_are_validated_by_their_kind(example: PluginIndex, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(ECHO_CONFIG + 'params = 2e6\n\n[[engines]]\nid = "small"\nkind = "llamacpp"\n'
                   'model = "smollm2-135m"\nn_ctx = 1024\n')  # fmt: skip
    settings = Settings.load(cfg, env={})
    echo, small = settings.engines
    assert type(echo).__name__ == "EchoConfig" and echo.params == 2e6  # type: ignore[attr-defined]
    assert isinstance(small, LlamaCppEngineConfig) and small.n_ctx == 1024
    # unknown keys are named against the kind's own model
    cfg.write_text(ECHO_CONFIG + "parms = 2e6\n")
    with pytest.raises(UsageError, match=r"'engines\[0\].parms'.*did you mean 'params'"):
        Settings.load(cfg, env={})
    cfg.write_text('[[engines]]\nid = "s"\nkind = "llamacpp"\nmodle = "x"\n')
    with pytest.raises(UsageError, match=r"'engines\[0\].modle'.*did you mean 'model'"):
        Settings.load(cfg, env={})
    cfg.write_text('[[engines]]\nid = "s"\nkind = "llamacpp"\n')
    with pytest.raises(UsageError, match=r"engines\[0\] \(kind 'llamacpp'\): model: Field"):
        Settings.load(cfg, env={})
    cfg.write_text('[[engines]]\nid = "s"\nkind = "telepathy"\n')
    with pytest.raises(UnknownNameError, match="unknown engine kind 'telepathy'"):
        Settings.load(cfg, env={})
    # entries in code keep their kind's fields
    settings = Settings.model_validate({"engines": [{"id": "e", "kind": "echo", "params": 5}]})
    assert settings.model_dump()["engines"][0]["params"] == 5


def test_engine_builds_plugin_and_local_engines_by_kind(
    example: PluginIndex, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, engines=[{"id": "e", "kind": "echo"}])  # type: ignore[list-item]
    engine = Engine(settings=settings)
    assert engine.ask("abc def", strategy="direct", model="e").answer == "fed cba"
    assert engine.model_fingerprint("e") == (
        'echo:{"context": 4096, "kind": "echo", "params": 1000000.0}'
    )  # the id is left out: two entries alike share cached outputs
    assert not engine.is_remote("e")
    # the same services any factory gets: a wrapper engine may build on another id
    services = EngineServices(settings, engine.engine_for, engine.check_model)
    assert engine.engine_kinds.build(settings.engines[0], services).model_id == "e"
    with pytest.raises(UnknownNameError, match="unknown model"):
        engine.check_model("nope")
    engine.close()


def test_store_schemes_map_to_openers(example: PluginIndex, tmp_path: Path) -> None:
    schemes = StoreRegistry(example)
    assert schemes.scheme(str(tmp_path / "s.sqlite")) == SQLITE
    assert schemes.scheme("sqlite:/tmp/s.sqlite") == SQLITE
    assert schemes.scheme("notes:v2.sqlite") == SQLITE  # a file with a colon in its name
    assert schemes.scheme("milvus-lite:/data/m") == "milvus-lite"
    assert schemes.scheme("https://milvus:19530") == "https"
    assert schemes.scheme("memory:") == "memory"
    assert store_scheme(tmp_path) == SQLITE
    with pytest.raises(UnknownNameError) as raised:
        schemes.scheme("ftp://host/db")
    assert "unknown store URI scheme 'ftp'" in str(raised.value)
    assert raised.value.hint is not None and "memory" in raised.value.hint
    store = open_store("memory:", registry=schemes, embedder=None)
    assert type(store).__name__ == "MemoryStore" and store.count() == 0


def test_a_broken_store_scheme_is_not_taken_for_a_path() -> None:
    schemes = StoreRegistry(points(("vault", BROKEN_MODULE, STORES)))
    with pytest.raises(PluginLoadError, match="'vault' failed to load"):
        schemes.open("vault:secrets", embedder=None)
    assert schemes.scheme("sqlite:/tmp/x") == SQLITE


def test_the_memory_store_is_a_document_store(example: PluginIndex, docs: Path) -> None:
    from apportion.tools.store.base import Chunk

    store = open_store(f"memory:{docs}", registry=StoreRegistry(example), embedder=None)
    assert store.stats()["documents"] == 2
    (best, *_) = store.search("Eiffel Tower Paris", k=2, mode="bm25")
    assert EIFFEL in best.text and best.score > 0
    assert store.search("zeppelin", k=2, mode="bm25") == []
    store.replace(best.doc_id, [Chunk("c1", best.doc_id, "Now about zeppelins.")])
    assert [h.chunk_id for h in store.search("zeppelins", k=2, mode="bm25")] == ["c1"]
    assert store.delete([best.doc_id]) == 1 and store.count() == 1
    with pytest.warns(UserWarning, match="bm25 only"):
        store.search("Danube", k=1, mode="hybrid")


def test_solvers_are_asked_in_order(example: PluginIndex) -> None:
    assert [s.name for s in SolverRegistry().solvers()] == ["z3", "sympy"]  # built-ins only
    solvers = SolverRegistry(example)
    assert [s.name for s in solvers.solvers()] == ["factorial", "z3", "sympy"]
    fact = solvers.solve("What is 20 factorial?", timeout_s=5)
    assert (fact.tool, fact.result.answer) == ("factorial", FACTORIAL_20)
    math_ = solvers.solve("What is 17*23+5?", timeout_s=5)
    assert (math_.tool, math_.result.answer) == ("sympy", "396")
    none = solvers.solve("Who wrote Hamlet?", timeout_s=5)  # every solver declines
    assert (none.tool, none.result.ok, none.result.error) == ("sympy", False, "no_math")
    assert none.result.wall_s > 0  # the time of every solver asked
    only = SolverRegistry(example, order=["sympy"])
    assert only.solve("not ( True ) and False is", timeout_s=5).result.error == "no_math"
    with pytest.raises(UnknownNameError, match="unknown solver 'wolfram'"):
        SolverRegistry(example, order=["wolfram"]).solvers()


def test_a_broken_solver_is_reported_by_name() -> None:
    solvers = SolverRegistry(points(("oracle", BROKEN_MODULE, SOLVERS)))
    assert [s.name for s in solvers.solvers()] == ["z3", "sympy"]  # left out of the default
    with pytest.raises(PluginLoadError, match="'oracle' failed to load"):
        SolverRegistry(points(("oracle", BROKEN_MODULE, SOLVERS)), order=["oracle"]).solvers()


def test_strategies_come_from_entry_points(example: PluginIndex) -> None:
    registry = default_registry(plugins=example)
    assert "shout" in registry.names() and registry.always_answers("shout")
    assert registry.parameters("shout") == {"model": None, "max_tokens": None}
    index = points(
        ("broken", BROKEN_MODULE, STRATEGIES),
        ("direct", "apportion.strategies.cot:ChainOfThought", STRATEGIES),  # a built-in's name
        ("notcallable", "apportion.plugins:STRATEGIES", STRATEGIES),
    )
    registry = default_registry(plugins=index)
    assert type(registry.build("direct")).__name__ == "Direct"  # the built-in wins
    assert "broken" not in registry.names() and "notcallable" not in registry.names()
    with pytest.raises(PluginLoadError, match="'broken' failed to load: ModuleNotFoundError"):
        registry.build("broken")
    with pytest.raises(PluginLoadError, match="'notcallable' is not a strategy factory"):
        registry.build("notcallable:n=1")
    with pytest.raises(UnknownNameError, match="unknown strategy 'nope'"):
        registry.build("nope")


def test_plugin_solvers_run_here_and_built_ins_in_the_workers(example: PluginIndex) -> None:
    """With a server's worker processes, the built-ins still run there (a slow solve never
    holds this interpreter) and a plug-in runs in the caller; each is charged as itself."""
    from apportion.ledger import Ledger
    from apportion.strategies.base import RunContext
    from apportion.tools.solver_worker import SolverWorkers

    with SolverWorkers(max_workers=1, start_method="forkserver") as workers:
        ctx = RunContext.over(
            engine_for=lambda model_id: pytest.fail("no model call"),
            default_model="none",
            ledger=Ledger(),
            solvers=workers,
            exact_solvers=SolverRegistry(example),
        )
        assert ctx.solve("What is 20 factorial?").answer == FACTORIAL_20
        assert workers.live_workers == 0  # answered before any built-in was asked
        assert ctx.solve("What is 17*23+5?").answer == "396"
        assert workers.live_workers == 1
    assert [c.name for c in ctx.ledger.charges] == ["factorial", "sympy"]
