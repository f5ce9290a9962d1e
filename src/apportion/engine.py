"""The public entry point: route → plan → execute → Answer.

>>> from apportion import Engine
>>> engine = Engine.from_config()
>>> answer = engine.ask("What is 17*23+5?")
>>> answer.answer, answer.strategy
('396', 'symbolic')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.engines.base import GenerationCancelled
from apportion.engines.registry import EngineRegistry, EngineServices
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
    load_policy,
    stops_here,
)
from apportion.strategies.base import CompletionCache, RunContext
from apportion.strategies.prompts import with_options
from apportion.strategies.registry import StrategyRegistry, default_registry
from apportion.tools.sandbox import SandboxLimits
from apportion.tools.solvers import SolverRegistry
from apportion.types import Answer, AnswerKind, Attempt, Budget, Message, Query

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine
    from apportion.tools.store.base import DocumentStore

log = logging.getLogger(__name__)

# Far beyond any context window we serve; rejects pathological input before tokenizing it.
MAX_QUESTION_CHARS = 200_000
AUTO = "auto"
# What closes an `auto` plan whose last step can decline: reasoning in text for the intents
# whose answers are computed (as the rule ladders end), a direct answer for the rest.
CLOSING_STEPS = {"arithmetic": "cot", "math_word": "cot", "logic": "cot"}


@dataclass(frozen=True)
class Prepared:
    """A validated, routed request, ready for `execute`: callers that need to adjust the run
    (a server streaming tokens, say) replace fields of `ctx` before executing."""

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
    )


@dataclass
class Engine:
    """Holds loaded models (each loaded once per Engine), the strategy registry and the policy."""

    settings: Settings = field(default_factory=Settings)
    registry: StrategyRegistry = field(default_factory=default_registry)
    policy: Policy = field(default_factory=load_policy)
    pull_progress: catalogue.PullProgress | None = None
    _engines: dict[str, TextEngine] = field(default_factory=dict, repr=False)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)
    # The document store retrieval strategies (rag) search; None until one is opened.
    store: DocumentStore | None = None
    # Opens a store on first need, for `auto` plans that retrieve: opening one loads the
    # embedding model, which a question that never retrieves should not wait for.
    store_opener: Callable[[], DocumentStore] | None = field(default=None, repr=False)
    # Probed once: looking for RAPL counters lists /sys, which no request should repeat.
    meter: RaplMeter = field(default_factory=RaplMeter, repr=False)
    # Model speeds measured here, for time budgets; kept in APPORTION_HOME across runs.
    speeds: SpeedBook | None = field(default=None, repr=False)

    # The installed plug-ins (read once, with the strategy registry's) and the registries of
    # engine kinds and exact solvers filled from them: built once per Engine.
    plugins: PluginIndex = field(init=False, repr=False)
    engine_kinds: EngineRegistry = field(init=False, repr=False)
    exact_solvers: SolverRegistry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.speeds is None:
            self.speeds = SpeedBook(self.settings.home / "speeds.json")
        self.plugins = self.registry.plugins or PluginIndex()
        self.engine_kinds = EngineRegistry(self.plugins)
        self.exact_solvers = SolverRegistry(self.plugins, order=self.settings.solvers)

    @classmethod
    def from_config(cls, path: Path | str | None = None, **overrides: object) -> Engine:
        """Settings from a TOML file and APPORTION_* variables, then keyword overrides."""
        settings = Settings.load(Path(path) if path else None)
        if overrides:
            settings = settings.model_copy(update=overrides)
        return cls(settings=settings)

    # -- models -----------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return [*catalogue.CATALOGUE, *(e.id for e in self.settings.engines)]

    def check_model(self, model_id: str) -> None:
        if model_id in self._engines or model_id in self.model_ids():
            return
        if catalogue.is_local_file(model_id) and Path(model_id).expanduser().is_file():
            return
        raise UnknownNameError("model", model_id, [*self.model_ids(), "<path/to/file.gguf>"])

    def engine_for(self, model_id: str) -> TextEngine:
        """The engine serving `model_id`, built by its kind (engines/registry.py) on first use
        and kept for this Engine's life."""
        if model_id not in self._engines:
            services = EngineServices(
                self.settings, self.engine_for, self.check_model, self.pull_progress
            )
            entry = self.engine_kinds.entry_for(self.settings, model_id)
            self._engines[model_id] = self.engine_kinds.build(entry, services)
        return self._engines[model_id]

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

    def loaded_models(self) -> list[str]:
        return list(self._engines)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        if self.speeds is not None:
            self.speeds.save()

    # -- answering --------------------------------------------------------------------------

    def plan(self, features: Features, strategy: str, budget: Budget) -> Plan:
        if strategy == AUTO:
            can_retrieve = self.store is not None or self.store_opener is not None
            unavailable = frozenset() if can_retrieve else self.registry.store_readers()
            planned = self.policy.plan(features, budget, unavailable=unavailable)
            return self.ends_in_answer(planned, features.intent)
        self.registry.build(strategy)  # validate the name and parameters before any work
        return Plan((Step(strategy, 0.0),), f"strategy {strategy!r} requested")

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

    def prepare(
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
    ) -> Prepared:
        """Validate, route and plan a question (and the conversation before it) without
        running anything."""
        if not question or not question.strip():
            raise UsageError("the question is empty", "pass the question as non-blank text")
        length = len(question) + sum(len(m.content) for m in history)
        if length > MAX_QUESTION_CHARS:
            raise UsageError(
                f"the question has {length:,} characters; the limit is {MAX_QUESTION_CHARS:,}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, got {max_tokens}")
        model = model or self.settings.default_model
        self.check_model(model)
        budget = budget or Budget()
        if choices:
            # A choice among options: the model is shown them by letter and asked for one.
            question, kind = with_options(question, choices), kind or "choice"
        query = Query(question.strip(), kind=kind, choices=tuple(choices), history=tuple(history))
        features = conversation_features(query)
        plan = self.plan(features, strategy, budget)
        readers = self.registry.store_readers()
        retrieves = any(step.name in readers for step in plan.steps)
        if retrieves and self.store is None and self.store_opener is not None:
            self.store = self.store_opener()
        ledger = Ledger(hardware=self.settings.hardware, budget=budget)
        ctx = RunContext(
            engine_for=self.engine_for,
            default_model=model,
            ledger=ledger,
            max_tokens=max_tokens or self.settings.max_tokens,
            seed=seed,
            cache=cache,
            cache_namespace=self.model_fingerprint,
            store=self.store,
            meter=self.meter,
            speeds=self.speeds,
            deterministic=self.settings.deterministic if deterministic is None else deterministic,
            exact_solvers=self.exact_solvers,
            # programs never see apportion's data (store, keys, caches), wherever it lives
            sandbox_limits=SandboxLimits(
                hidden_paths=tuple(str(p) for p in self.settings.data_paths())
            ),
        )
        return Prepared(query, features, plan, ctx)

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
        """Answer `question`; `history` is the conversation before it, oldest turn first.
        `deterministic` (default: the setting) gives the same tokens for the same request
        whatever ran before, at the cost of re-evaluating every prompt in full."""
        prepared = self.prepare(
            question, history=history, strategy=strategy, model=model, max_tokens=max_tokens,
            budget=budget, kind=kind, choices=choices, seed=seed, cache=cache,
            deterministic=deterministic,
        )  # fmt: skip
        return self.run(prepared)

    def run(self, prepared: Prepared) -> Answer:
        """Execute what `prepare` planned."""
        return execute(
            prepared.plan,
            prepared.query,
            prepared.ctx,
            self.registry,
            intent=prepared.features.intent,
        )


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
    return Answer(
        answer=chosen.answer or "",
        strategy=chosen.strategy,
        intent=intent,
        confidence=chosen.confidence,
        ledger=totals,
        attempts=tuple(attempts),
        stopped_for_budget=stopped_for_budget,
        abstained=chosen.abstained,
    )
