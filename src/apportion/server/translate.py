"""Translation at the edge: a validated request (schemas.py) into a RunSpec in the package's
own terms, with the model and strategy it names checked, every parameter applied or said not
to apply, and the limits the schema cannot state enforced (400s naming the parameter)."""

from __future__ import annotations

from apportion.errors import UsageError
from apportion.runtime import AUTO, Request
from apportion.server.errors import ApiError
from apportion.server.jobs import RunSpec
from apportion.server.models import ServedModels
from apportion.server.schemas import (
    AUTO_MODEL,
    ApportionOptions,
    ChatCompletionRequest,
    ReasoningEffort,
)
from apportion.strategies.registry import StrategyRegistry, StrategySpec, parse_spec, spec_name
from apportion.types import Budget

# The thinking budget (cot's `think_budget`, in tokens) for each OpenAI `reasoning_effort`:
# "none" answers without reasoning, "high" reasons as long as the strategy would
# (up to max_tokens). A reasoning model behind an engine that is told the budget gets it back
# as its own server's control (engines/openai_http.py's thinking_fields).
EFFORT_THINK_BUDGETS: dict[ReasoningEffort, int | None] = {
    "none": 0,
    "minimal": 64,
    "low": 256,
    "medium": 1024,
    "high": None,
}


class RequestTranslator:
    """Turns requests into RunSpecs, against one strategy registry and the models served."""

    def __init__(
        self, registry: StrategyRegistry, models: ServedModels, *, max_tokens_limit: int
    ) -> None:
        self.registry = registry
        self.models = models
        self.max_tokens_limit = max_tokens_limit

    def resolve(self, body: ChatCompletionRequest) -> RunSpec:
        messages = [msg.to_message() for msg in body.messages]
        if messages[-1].role != "user":
            raise ApiError(400, "the last message must be the user's question", param="messages")
        if not messages[-1].content.strip():
            raise ApiError(400, "the question (the last message) is empty", param="messages")
        if body.stream_options is not None and not body.stream:
            raise ApiError(
                400, "stream_options is only allowed with stream: true", param="stream_options"
            )
        ext = body.apportion or ApportionOptions()
        model, strategy = self._route(body.model, ext.strategy)
        strategy, notes = self._with_temperature(strategy, body.temperature)
        strategy, effort_notes = self._with_reasoning_effort(strategy, body.reasoning_effort)
        notes += effort_notes
        max_tokens = body.max_completion_tokens or body.max_tokens
        limit = self.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {limit}",
                param="max_tokens",
            )
        b = ext.budget
        budget = Budget() if b is None else Budget(b.flops, b.usd, b.seconds, b.memory)
        request = Request(
            question=messages[-1].content,
            history=tuple(messages[:-1]),
            strategy=strategy,
            model=model,
            max_tokens=max_tokens,
            budget=budget,
            seed=body.seed or 0,
            deterministic=ext.deterministic,
        )
        return RunSpec(
            request,
            return_ledger=ext.return_ledger,
            stop=body.stop_sequences(),
            notes=tuple(notes),
            user=body.user,
        )

    def _route(self, name: str, ext_strategy: str | None) -> tuple[str | None, str]:
        """(model id or None for the default, strategy spec) for the request's `model`."""
        name = name.strip()
        if name in (AUTO_MODEL, AUTO):
            return None, self._checked(ext_strategy or AUTO, "apportion.strategy")
        if name in self.models.ids():
            return name, self._checked(ext_strategy or AUTO, "apportion.strategy")
        # A strategy's name, whether or not its parameters parse: `_checked` says what is wrong
        # with them.
        if spec_name(name) in self.registry.names():
            if ext_strategy is not None and ext_strategy.strip() != name:
                raise ApiError(
                    400,
                    f"model names the strategy {name!r} and apportion.strategy names "
                    f"{ext_strategy!r}; send one of them",
                    param="apportion.strategy",
                )
            return None, self._checked(name, "model")
        valid = [AUTO_MODEL, *self.registry.names(), *self.models.ids()]
        raise ApiError(
            404,
            f"unknown model {name!r}; valid models: {', '.join(valid)} "
            "(a strategy takes parameters, e.g. consistency:n=4)",
            code="model_not_found",
            param="model",
        )

    def _checked(self, strategy: str, param: str) -> str:
        """The strategy spec, built once to check its name and parameters (their declared
        bounds included), and its max_tokens held to the server's limit."""
        if strategy.strip() == AUTO:
            return AUTO
        try:
            self.registry.build(strategy)
        except UsageError as e:
            raise ApiError(400, str(e), code="invalid_strategy", param=param) from e
        limit = self.max_tokens_limit
        for key, value in parse_spec(strategy).params:
            if key == "max_tokens" and int(value) > limit:
                raise ApiError(
                    400,
                    f"the strategy's max_tokens is {value}; this server allows at most {limit}",
                    code="invalid_strategy",
                    param=param,
                )
        return strategy.strip()

    def _with_temperature(self, strategy: str, temperature: float | None) -> tuple[str, list[str]]:
        """Apply `temperature` to a strategy that has one (cot, program, consistency, ...), or
        say why it does not apply: `direct` is greedy by design, and `auto` picks each step's
        own sampling."""
        if temperature is None:
            return strategy, []
        shown = f"temperature {temperature:g}"
        return self._with_parameter(
            strategy,
            "temperature",
            str(temperature),
            param="temperature",
            shown=shown,
            for_auto=f"{shown} is not used: auto picks each step's own sampling "
            "(name a strategy such as cot to set it)",
            # what a strategy without sampling does anyway
            neutral=temperature == 0,
            lacking="does not sample",
        )

    def _with_reasoning_effort(
        self, strategy: str, effort: ReasoningEffort | None
    ) -> tuple[str, list[str]]:
        """Apply `reasoning_effort` as the thinking budget (EFFORT_THINK_BUDGETS) of a strategy
        that has one (cot), or say why it does not apply."""
        if effort is None:
            return strategy, []
        budget = EFFORT_THINK_BUDGETS[effort]
        shown = f"reasoning_effort {effort!r}"
        if budget is None:  # "high": think as long as the strategy would
            return strategy, []
        return self._with_parameter(
            strategy,
            "think_budget",
            str(budget),
            param="reasoning_effort",
            shown=shown,
            for_auto=f"{shown} is not used: auto picks each step's own thinking budget "
            "(name a strategy such as cot to set it)",
            neutral=False,
            lacking="has no thinking budget",
        )

    def _with_parameter(
        self,
        strategy: str,
        key: str,
        value: str,
        *,
        param: str,
        shown: str,
        for_auto: str,
        neutral: bool,
        lacking: str,
    ) -> tuple[str, list[str]]:
        """The strategy spec with `key=value` added where the strategy takes `key` and its spec
        does not set it already; otherwise the spec unchanged and a note saying why (none where
        the value is `neutral`, what the strategy does without it). A spec the parameter makes
        invalid is a 400 naming `param`, the request's field."""
        if strategy == AUTO:
            return strategy, [for_auto]
        spec = parse_spec(strategy)
        if key not in self.registry.parameters(spec.name):
            return strategy, [] if neutral else [f"{shown} is not used: {spec.name} {lacking}"]
        if any(k == key for k, _ in spec.params):
            return strategy, [f"{shown} is not used: the strategy spec sets its own {key}"]
        extended = StrategySpec(spec.name, (*spec.params, (key, value)))
        return self._checked(str(extended), param), []
