"""The runtime: the one place engines, the store, the policy, the cache and the meter are
wired, and the one way a question is answered (route → plan → execute → Answer).

Every adapter (the CLI, bench, calibrate, the server) builds a `Runtime` from `Settings`,
states each question as a `Request`, and hands in its per-request `Hooks`:

>>> from apportion.runtime import Request, Runtime
>>> runtime = Runtime.from_config()
>>> answer = runtime.answer(Request("What is 17*23+5?"))
>>> answer.answer, answer.strategy
('396', 'symbolic')

`Engine` is the same class under its first name (`Engine.from_config().ask(...)`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from apportion.config import EngineConfig, LlamaCppEngineConfig, RemoteEngineConfig, Settings
from apportion.engines import catalogue
from apportion.engines.base import GenerationCancelled
from apportion.engines.layers import CompletionCache, ModelCalls, innermost
from apportion.engines.memory import ResidentSet, format_bytes, resident_bytes
from apportion.engines.registry import EngineRegistry, EngineServices, ExpertEngineConfig
from apportion.engines.speed import SpeedBook
from apportion.errors import ApportionError, BudgetExceededError, UnknownNameError, UsageError
from apportion.ledger import Ledger, RaplMeter
from apportion.plugins import PluginIndex
from apportion.router.features import Features, extract_features, top_intent, with_earlier_turns
from apportion.router.policy import (
    Plan,
    Policy,
    Step,
    fallback_choice,
    stops_here,
)
from apportion.router.policy_file import load_policy
from apportion.strategies.base import RunContext
from apportion.strategies.prompts import with_options
from apportion.strategies.registry import StrategyRegistry, default_registry, models_of
from apportion.tools.sandbox import SandboxLimits
from apportion.tools.solvers import SolverRegistry
from apportion.types import Answer, AnswerKind, Attempt, Budget, Charge, Message, Query

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine
    from apportion.engines.pool import ReplicaState
    from apportion.tools.solver_worker import SolverWorkers
    from apportion.tools.store import StoreRegistry
    from apportion.tools.store.base import DocumentStore

log = logging.getLogger(__name__)

# Far beyond any context window we serve; rejects pathological input before tokenizing it.
MAX_QUESTION_CHARS = 200_000
AUTO = "auto"
# What closes an `auto` plan whose last step can decline: reasoning in text for the intents
# whose answers are computed (as the rule ladders end), a direct answer for the rest.
CLOSING_STEPS = {"arithmetic": "cot", "math_word": "cot", "logic": "cot"}


@dataclass(frozen=True)
class Request:
    """One question to answer, as every adapter states it: the CLI from its options, bench
    from a dataset item, the server from a chat completion request.

    `question` is the final user message and `history` the conversation before it (oldest
    first). `strategy` is a spec (`auto`, `cot`, `consistency:n=4`); `model` an engine id (None:
    the default model). `kind` and `choices` are hints a bench item carries (a choice among
    options is shown to the model by letter). `deterministic` (None: the setting) gives the
    same tokens for the same request whatever ran before."""

    question: str
    history: tuple[Message, ...] = ()
    strategy: str = AUTO
    model: str | None = None
    max_tokens: int | None = None
    budget: Budget = field(default_factory=Budget)
    kind: AnswerKind | None = None
    choices: tuple[str, ...] = ()
    seed: int = 0
    deterministic: bool | None = None


@dataclass(frozen=True)
class Hooks:
    """What a caller adds to one request's run. Each becomes a layer around the engines the
    request calls (engines/layers.py), so strategies never see them.

    `cancel`: once set, no call starts and a streaming one stops at its next token.
    `on_token`: sees each generated piece of single-sample calls (raise GenerationCancelled to
    stop). `on_charge`: sees each charge as the ledger records it. `cache`: replays and keeps
    completions (bench). `engine_for`: the engines the request may call, by id, if not the
    runtime's own (the server's wrap the runtime's with key holds and its local queue).
    `solvers`: persistent solver processes to solve in (the server's)."""

    cancel: threading.Event | None = None
    on_token: Callable[[str], None] | None = None
    on_charge: Callable[[Ledger, Charge], None] | None = None
    cache: CompletionCache | None = None
    engine_for: Callable[[str], TextEngine] | None = None
    solvers: SolverWorkers | None = None


@dataclass(frozen=True)
class Prepared:
    """A validated, routed request with its run context, ready for `Runtime.run`."""

    query: Query
    features: Features
    plan: Plan
    ctx: RunContext


def conversation_features(query: Query) -> Features:
    """Routing features for a query and the conversation before it.

    The intent blends the final message with the user turns before it (see
    `with_earlier_turns`), so a follow-up ("How many altogether?") routes as the problem it
    follows up on. Whether there is a math expression is judged on the final message alone:
    only that message ever reaches the solver, and an expression in an earlier turn would
    otherwise send every later question down the arithmetic ladder.
    """
    last = extract_features(query.text)
    turns = [m.content for m in query.history if m.role == "user"]
    if not turns:
        return last
    text = "\n".join([*turns, query.text])
    # the last message was classified above; only the earlier turns are new
    shares = with_earlier_turns(dict(last.intent_probabilities), turns)
    return Features(
        intent=top_intent(shares),
        intent_probabilities=tuple(shares.items()),
        has_math_expression=last.has_math_expression,
        n_numbers=sum(ch.isdigit() for ch in text),
        n_words=len(text.split()),
        text=text,
    )


@dataclass
class Runtime:
    """Engines by id (each built by its kind on first use and kept), the strategy registry, the
    policy, the document store, the energy meter and the speed book: one per process or run.

    `documents`: whether the configured document store (the `store` setting, else
    `$APPORTION_HOME/store.sqlite` when it exists) is opened when a plan first retrieves
    ("configured"), or only a store given to the runtime is searched ("given")."""

    settings: Settings = field(default_factory=Settings)
    registry: StrategyRegistry = field(default_factory=default_registry)
    policy: Policy = field(default_factory=load_policy)
    pull_progress: catalogue.PullProgress | None = None
    documents: str = "configured"
    _engines: dict[str, TextEngine] = field(default_factory=dict, repr=False)
    # Models found ready to serve without a download (`model_available`), so auto's planning
    # does not look on disk for them again on every request.
    _available: set[str] = field(default_factory=set, repr=False)
    # The base model of each expert a plan named, looked up once: the lookup reads the
    # expert's manifest from disk (a name not found is looked up again, it may be installed).
    _expert_bases: dict[str, str | None] = field(default_factory=dict, repr=False)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)
    # The document store retrieval strategies (rag) search; None until one is opened. Opening
    # one loads the embedding model, which a question that never retrieves should not wait for.
    store: DocumentStore | None = None
    # Probed once: looking for RAPL counters lists /sys, which no request should repeat.
    meter: RaplMeter = field(default_factory=RaplMeter, repr=False)
    # Model speeds measured here, for time budgets; kept in APPORTION_HOME across runs.
    speeds: SpeedBook | None = field(default=None, repr=False)

    # The installed plug-ins (read once, with the strategy registry's) and the registries of
    # engine kinds, store schemes and exact solvers filled from them: built once per Runtime.
    plugins: PluginIndex = field(init=False, repr=False)
    engine_kinds: EngineRegistry = field(init=False, repr=False)
    exact_solvers: SolverRegistry = field(init=False, repr=False)
    _store_schemes: StoreRegistry | None = field(default=None, init=False, repr=False)
    # Re-entrant: building a fallback engine builds the engine it falls back to.
    _building: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    # The local models loaded, and what they keep resident (engines/memory.py).
    _resident: ResidentSet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.documents not in ("configured", "given"):
            raise ValueError(f"documents must be 'configured' or 'given', not {self.documents!r}")
        if self.speeds is None:
            self.speeds = SpeedBook(self.settings.home / "speeds.json")
        self.plugins = self.registry.plugins or PluginIndex()
        self.engine_kinds = EngineRegistry(self.plugins)
        self.exact_solvers = SolverRegistry(self.plugins, order=self.settings.solvers)
        self._resident = ResidentSet(self.settings.memory_limit_bytes)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: Path | str | None = None,
        pull_progress: catalogue.PullProgress | None = None,
        documents: str = "configured",
        store: DocumentStore | None = None,
    ) -> Runtime:
        """The runtime `settings` describe, with the policy file `policy` (None: the shipped
        one) and, if given, an open document `store`."""
        return cls(
            settings=settings, policy=load_policy(Path(policy) if policy else None),
            pull_progress=pull_progress, documents=documents, store=store,
        )  # fmt: skip

    @classmethod
    def from_config(cls, path: Path | str | None = None, **overrides: object) -> Runtime:
        """Settings from a TOML file and APPORTION_* variables, then keyword overrides."""
        settings = Settings.load(Path(path) if path else None)
        if overrides:
            settings = settings.model_copy(update=overrides)
        return cls(settings=settings)

    # -- documents --------------------------------------------------------------------------

    def store_uri(self) -> str | None:
        """Where the configured document store is: the `store` setting, else the default store
        when it exists; None when there is none (or the runtime searches only a given one)."""
        if self.documents != "configured":
            return None
        if self.settings.store is not None and self.settings.store.strip():
            return self.settings.store.strip()
        path = self.settings.store_path
        return str(path) if path.exists() else None

    def store_schemes(self) -> StoreRegistry:
        """Store URI schemes: the built-ins and this runtime's plug-ins."""
        if self._store_schemes is None:
            from apportion.tools.store import StoreRegistry

            self._store_schemes = StoreRegistry(self.plugins)
        return self._store_schemes

    def open_store(self, *, create: bool = False) -> DocumentStore | None:
        """The document store, opened on first need and kept. With `create`, a default store
        that does not exist yet is created (a strategy that searches was asked for by name)."""
        if self.store is None:
            uri = self.store_uri()
            if uri is None and create and self.documents == "configured":
                uri = str(self.settings.store_path)
            if uri is not None:
                from apportion.tools.store import open_store

                self.store = open_store(uri, registry=self.store_schemes())
        return self.store

    def can_retrieve(self) -> bool:
        return self.store is not None or self.store_uri() is not None

    # -- models -----------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """The ids a request may name: catalogue models, [[engines]] entries, and experts
        (installed here, or mapped to a remote server's model name by an entry)."""
        from apportion.experts.book import ExpertBook

        engines = self.settings.engines
        mapped = [name for e in engines for name in getattr(e, "experts", {}) or {}]
        installed = ExpertBook(self.settings.home).names()
        return list(dict.fromkeys(
            [*catalogue.CATALOGUE, *(e.id for e in engines), *mapped, *installed]
        ))  # fmt: skip

    def check_model(self, model_id: str) -> None:
        """Refuse a model id nothing here can serve (the valid ones listed). Asked per request:
        only an id that is not loaded, catalogued or configured costs a look on disk."""
        if model_id in self._engines or model_id in catalogue.CATALOGUE:
            return
        entry = self.engine_kinds.entry_for(self.settings, model_id)
        if not isinstance(entry, LlamaCppEngineConfig) or entry in self.settings.engines:
            return  # configured, an expert, or mapped to a remote server's name
        if catalogue.is_local_file(model_id) and Path(model_id).expanduser().is_file():
            return
        raise UnknownNameError("model", model_id, [*self.model_ids(), "<path/to/file.gguf>"])

    def engine_for(self, model_id: str, *, ledger: Ledger | None = None) -> TextEngine:
        """The engine serving `model_id`, built by its kind (engines/registry.py) on first use
        and kept, within the memory limit: loading a local model evicts the least recently
        used ones it would not fit beside, and the load is charged to `ledger` (the request
        that caused it), which also notes the memory then resident."""
        cap = ledger.budget.max_memory if ledger is not None else None
        if cap is not None:
            size = self._resident_size(self.engine_kinds.entry_for(self.settings, model_id))
            if size > cap:
                raise BudgetExceededError(
                    f"{model_id} keeps about {format_bytes(size)} resident; the request's "
                    f"memory budget is {format_bytes(cap)}",
                    "raise the memory budget, or name a smaller model",
                )
        engine = self._engines.get(model_id)
        if engine is None:
            with self._building:  # one build per model, however many threads ask at once
                engine = self._engines.get(model_id) or self._load(model_id, ledger)
        self._resident.used(model_id)
        if ledger is not None and (self._resident.limit or ledger.budget.max_memory):
            ledger.note_resident(self._resident.total)
        return engine

    def _load(self, model_id: str, ledger: Ledger | None) -> TextEngine:
        entry = self.engine_kinds.entry_for(self.settings, model_id)
        cap = ledger.budget.max_memory if ledger is not None else None
        size = self._resident_size(entry)
        for loaded in self._resident.to_evict(model_id, size, limit=cap):
            log.info("unloading %s to load %s within the memory limit", loaded, model_id)
            unloaded = self._engines.pop(loaded)
            unloaded.close()
            self._resident.remove(loaded)
            # experts served on it go with it (engines/llamacpp.py's AdaptedEngine, a layer)
            for other, engine in list(self._engines.items()):
                if innermost(engine) is unloaded:
                    del self._engines[other]
        services = EngineServices(self.settings, self.engine_for, self.check_model,
                                  self.pull_progress)  # fmt: skip
        wall0, cpu0 = time.perf_counter(), time.process_time()
        engine = self.engine_kinds.build(entry, services)
        if size:
            self._resident.add(model_id, size)
            # under a memory limit or budget, loads are part of what plans cost
            if ledger is not None and (self._resident.limit is not None or cap is not None):
                ledger.charge_tool(
                    "model load", wall_s=time.perf_counter() - wall0,
                    cpu_s=time.process_time() - cpu0, detail=f"load {model_id}",
                )  # fmt: skip
        self._engines[model_id] = engine
        return engine

    def _resident_size(self, entry: EngineConfig) -> int:
        """What a model keeps resident: a llama.cpp model in this process; 0 for others."""
        if not isinstance(entry, LlamaCppEngineConfig):
            return 0
        return resident_bytes(entry.model, entry.n_ctx or self.settings.n_ctx)

    def fit_memory(self, plan: Plan, model: str, budget: Budget | None = None) -> Plan:
        """The plan as the memory limit allows: a step whose models cannot be resident
        together (a cascade's two, say) runs with the models loaded in turn (memory_policy
        "swap"), or is left out ("skip"); the plan's reason says which."""
        limits = [x for x in (self._resident.limit, budget and budget.max_memory) if x]
        if not limits:
            return plan
        limit = min(limits)
        settings = self.settings
        kept: list[Step] = []
        notes: list[str] = []
        for step in plan.steps:
            names = models_of(step.strategy, model=model, small=settings.default_model,
                              large=settings.large_model)  # fmt: skip
            sizes = {m: self._resident_size(self.engine_kinds.entry_for(settings, m))
                     for m in names}  # fmt: skip
            need = sum(sizes.values())
            if len([m for m in sizes if sizes[m]]) < 2 or need <= limit:
                kept.append(step)
                continue
            over = (f"{step.strategy} needs {' + '.join(m for m in sizes if sizes[m])} resident "
                    f"together ({format_bytes(need)}), over the memory limit "
                    f"({format_bytes(limit)})")  # fmt: skip
            if settings.memory_policy == "swap":
                kept.append(step)
                notes.append(f"{over}: they are loaded in turn")
            else:
                notes.append(f"{over}: skipped (memory_policy = skip)")
        if not kept:
            raise UsageError(
                f"no step of the plan fits the memory limit: {'; '.join(notes)}",
                'raise --memory-limit, or set memory_policy = "swap" to load models in turn',
            )
        if not notes:
            return plan
        return replace(plan, steps=tuple(kept), reason=f"{plan.reason}; {'; '.join(notes)}")

    def model_fingerprint(self, model_id: str) -> str:
        """What identifies a model's outputs for caching: its weights' sha256, a remote
        endpoint and model name, or what its kind says."""
        if model_id not in self._fingerprints:
            entry = self.engine_kinds.entry_for(self.settings, model_id)
            self._fingerprints[model_id] = self.engine_kinds.fingerprint(entry)
        return self._fingerprints[model_id]

    def is_remote(self, model_id: str) -> bool:
        """Whether a model is served over the network (an OpenAI-compatible endpoint)."""
        return self.engine_kinds.is_remote(self.engine_kinds.entry_for(self.settings, model_id))

    def register(self, engine: TextEngine) -> None:
        """Serve `engine` under its own model id (an engine built elsewhere, or a test double)."""
        self._engines[engine.model_id] = engine
        # no weights file or endpoint to fingerprint it by: its id is what identifies it
        self._fingerprints.setdefault(engine.model_id, f"registered:{engine.model_id}")

    def replica_states(self) -> dict[str, list[ReplicaState]]:
        """The replicas of each loaded engine that is a pool (engines/pool.py), by engine id."""
        out: dict[str, list[ReplicaState]] = {}
        for model_id, engine in list(self._engines.items()):
            states = getattr(engine, "replica_states", None)
            found = states() if callable(states) else []
            if found:
                out[model_id] = list(found)
        return out

    def loaded_models(self) -> list[str]:
        return list(self._engines)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self._resident = ResidentSet(self.settings.memory_limit_bytes)
        if self.speeds is not None:
            self.speeds.save()

    # -- answering --------------------------------------------------------------------------

    def plan(
        self, features: Features, strategy: str, budget: Budget, model: str | None = None
    ) -> Plan:
        """The plan for a query: `auto`'s from the policy, leaving out plans that cannot run
        here (retrieval without a store; a step on a model that is neither pulled, configured
        nor `model`, the request's own); else the one strategy asked for."""
        if strategy == AUTO:
            unavailable = set() if self.can_retrieve() else set(self.registry.store_readers())
            own = model or self.settings.default_model
            unavailable |= {s for s in self.policy.step_specs() if not self.runnable(s, own)}
            planned = self.policy.plan(features, budget, unavailable=frozenset(unavailable))
            return self.ends_in_answer(planned, features.intent)
        self.registry.build(strategy)  # validate the name and parameters before any work
        return Plan((Step(strategy, 0.0),), f"strategy {strategy!r} requested")

    def runnable(self, spec: str, model: str) -> bool:
        """Whether every model the strategy spec calls can serve here without a download:
        `model` (the request's), loaded, configured, pulled, or an expert on `model`. An
        expert is an add-on to its base model, calibrated with it: a plan runs it only for a
        request to that model, never in place of the model the request named."""
        settings = self.settings
        names = models_of(spec, model=model, small=settings.default_model,
                          large=settings.large_model)  # fmt: skip
        if any(self.expert_base(m) not in (None, model) for m in names):
            return False
        return all(self.model_available(m, model) for m in names)

    def expert_base(self, model_id: str) -> str | None:
        """The model an expert adapts (for a remote server's expert, that server's entry), or
        None when `model_id` is not an expert."""
        if model_id in self._expert_bases:
            return self._expert_bases[model_id]
        entry = self.engine_kinds.entry_for(self.settings, model_id)
        base: str | None = None
        if isinstance(entry, ExpertEngineConfig):
            base = entry.base
        elif isinstance(entry, RemoteEngineConfig) and entry.expert:
            base = next(e.id for e in self.settings.engines
                        if isinstance(e, RemoteEngineConfig) and model_id in e.experts)  # fmt: skip
        if base is not None:
            self._expert_bases[model_id] = base
        return base

    def model_available(self, model_id: str, own: str | None = None) -> bool:
        if model_id == own or model_id in self._engines or model_id in self._available:
            return True
        entry = self.engine_kinds.entry_for(self.settings, model_id)
        if isinstance(entry, ExpertEngineConfig):
            found = self.model_available(entry.base, own)
        elif not isinstance(entry, LlamaCppEngineConfig):
            found = True  # a configured engine (remote, plug-in): it is there to be called
        elif (known := catalogue.CATALOGUE.get(entry.model)) is not None:
            found = catalogue.model_path(self.settings.models_dir, known).exists()
        else:
            found = Path(entry.model).expanduser().is_file()
        if found:  # kept: a pulled model stays (one not pulled yet is looked for again)
            self._available.add(model_id)
        return found

    def ends_in_answer(self, plan: Plan, intent: str) -> Plan:
        """The plan, closed by a step that always answers if its last one can decline (a
        solver on a question it cannot parse, rag with nothing relevant): the declining step
        stops the ladder whenever it does answer, and the closer answers otherwise.
        Calibration builds no such plans; an older or hand-written policy may hold them."""
        if plan.steps and self.registry.always_answers(plan.steps[-1].strategy):
            return plan
        closer = CLOSING_STEPS.get(intent, "direct")
        last = plan.steps[-1].strategy if plan.steps else "the plan"
        return replace(
            plan,
            steps=(*plan.steps, Step(closer, 0.0)),
            reason=f"{plan.reason}; then {closer}, since {last} can end without an answer",
        )

    def prepare(self, request: Request, hooks: Hooks | None = None) -> Prepared:
        """Validate, route and plan a request, and build its run context with the caller's
        hooks in, without running anything."""
        hooks = hooks or Hooks()
        question = request.question
        if not question or not question.strip():
            raise UsageError("the question is empty", "pass the question as non-blank text")
        length = len(question) + sum(len(m.content) for m in request.history)
        if length > MAX_QUESTION_CHARS:
            raise UsageError(
                f"the question has {length:,} characters; the limit is {MAX_QUESTION_CHARS:,}"
            )
        if request.max_tokens is not None and request.max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, got {request.max_tokens}")
        model = request.model or self.settings.default_model
        self.check_model(model)
        kind = request.kind
        if request.choices:
            # A choice among options: the model is shown them by letter and asked for one.
            question, kind = with_options(question, request.choices), kind or "choice"
        query = Query(question.strip(), kind=kind, choices=request.choices, history=request.history)
        features = conversation_features(query)
        planned = self.plan(features, request.strategy, request.budget, model)
        plan = self.fit_memory(planned, model, request.budget)
        readers = self.registry.store_readers()
        if any(step.name in readers for step in plan.steps):
            self.open_store(create=request.strategy != AUTO)
        deterministic = (
            self.settings.deterministic if request.deterministic is None
            else request.deterministic
        )  # fmt: skip
        ledger = Ledger(
            hardware=self.settings.hardware, budget=request.budget, on_charge=hooks.on_charge
        )
        calls = ModelCalls(
            hooks.engine_for or partial(self.engine_for, ledger=ledger), ledger,
            namespace=self.model_fingerprint,
            meter=self.meter, speeds=self.speeds, cache=hooks.cache,
            deterministic=deterministic, on_token=hooks.on_token, cancel=hooks.cancel,
        )  # fmt: skip
        ctx = RunContext(
            calls,
            default_model=model,
            max_tokens=request.max_tokens or self.settings.max_tokens,
            seed=request.seed,
            small_model=self.settings.default_model,
            large_model=self.settings.large_model,
            solvers=hooks.solvers,
            exact_solvers=self.exact_solvers,
            store=self.store,
            # programs never see apportion's data (store, keys, caches), wherever it lives
            sandbox_limits=SandboxLimits(
                hidden_paths=tuple(str(p) for p in self.settings.data_paths())
            ),
        )
        return Prepared(query, features, plan, ctx)

    def run(self, prepared: Prepared) -> Answer:
        """Execute what `prepare` planned."""
        return execute(
            prepared.plan,
            prepared.query,
            prepared.ctx,
            self.registry,
            intent=prepared.features.intent,
        )

    def answer(self, request: Request, hooks: Hooks | None = None) -> Answer:
        """Answer a request: `prepare`, then `run`."""
        return self.run(self.prepare(request, hooks))

    def ask(
        self,
        question: str,
        *,
        history: Sequence[Message] = (),
        strategy: str = AUTO,
        model: str | None = None,
        max_tokens: int | None = None,
        budget: Budget | None = None,
        kind: AnswerKind | None = None,
        choices: Sequence[str] = (),
        seed: int = 0,
        cache: CompletionCache | None = None,
        deterministic: bool | None = None,
    ) -> Answer:
        """Answer `question` (the Python API's short form of `answer`); `history` is the
        conversation before it, oldest turn first. `deterministic` (default: the setting) gives
        the same tokens for the same request whatever ran before, at the cost of re-evaluating
        every prompt in full."""
        request = Request(
            question, history=tuple(history), strategy=strategy, model=model,
            max_tokens=max_tokens, budget=budget or Budget(), kind=kind, choices=tuple(choices),
            seed=seed, deterministic=deterministic,
        )  # fmt: skip
        return self.answer(request, Hooks(cache=cache))


# The runtime's first name, kept for the Python API (`from apportion import Engine`).
Engine = Runtime


def _failure(e: Exception) -> str:
    """A failed step's error, as its attempt records it."""
    text = str(e) or type(e).__name__
    return text if isinstance(e, ApportionError) else f"{type(e).__name__}: {text}"


def execute(
    plan: Plan, query: Query, ctx: RunContext, registry: StrategyRegistry, *, intent: str | None
) -> Answer:
    """Run the ladder: stop at the first attempt whose confidence clears its step's bar; if none
    does, answer with the most confident attempt that produced anything."""
    attempts: list[Attempt] = []
    stopped_for_budget = False
    chosen: Attempt | None = None
    raised: Exception | None = None  # the last step's exception, if every step raised
    for step in plan.steps:
        strategy = registry.build(step.strategy)
        try:
            attempt = strategy.run(query, ctx)
        except BudgetExceededError as e:
            attempts.append(Attempt(step.strategy, None, 0.0, error=f"budget: {e}"))
            stopped_for_budget = True
            break
        except GenerationCancelled:
            raise  # the caller went away or timed out: nothing further should run
        except Exception as e:
            # An engine error, a context overflow, a sandbox or solver failure: this step
            # failed, which is what the next step is there for. What it spent stays charged.
            log.info("step %s of the plan failed: %s: %s", step.strategy, type(e).__name__, e)
            attempts.append(Attempt(step.strategy, None, 0.0, error=_failure(e)))
            raised = e
            continue
        raised = None
        attempt = replace(attempt, strategy=step.strategy)  # the spec, parameters included
        attempts.append(attempt)
        if stops_here(attempt.ok, attempt.confidence, step):
            chosen = attempt
            break
    if chosen is None:
        best = fallback_choice([(a.ok, a.confidence) for a in attempts])
        chosen = None if best is None else attempts[best]
    if chosen is None and raised is not None and all(a.answer is None for a in attempts):
        # Nothing answered and the last step raised: its typed error (a context overflow,
        # an unreachable server) says more, and what to do, than an empty answer would.
        raise raised
    totals = ctx.ledger.totals()
    if chosen is None:
        last_error = attempts[-1].error if attempts else "no strategy ran"
        return Answer(
            answer="",
            strategy=attempts[-1].strategy if attempts else "none",
            intent=intent,
            confidence=0.0,
            ledger=totals,
            attempts=tuple(attempts),
            stopped_for_budget=stopped_for_budget,
            error=last_error,
        )
    mapped = plan.calibration.get(chosen.strategy)
    return Answer(
        answer=chosen.answer or "",
        strategy=chosen.strategy,
        intent=intent,
        confidence=chosen.confidence,
        ledger=totals,
        attempts=tuple(attempts),
        stopped_for_budget=stopped_for_budget,
        abstained=chosen.abstained,
        calibrated_confidence=None if mapped is None else mapped(chosen.confidence),
    )
