"""Strategies by name, with parameters in the name: `consistency:n=8`,
`cascade:small=qwen2.5-coder-0.5b,large=qwen2.5-coder-1.5b,threshold=0.6`.

A strategy is a dataclass; its fields are its parameters, and their annotations give the types
that `key=value` strings are coerced to, and the range each may take (`Bounds`, declared beside
the field). Third-party strategies register through the `apportion.strategies` entry-point group
(name → dataclass), without touching the core (`apportion.plugins` says how).

Any strategy that calls one model takes `expert=NAME` (apportion.experts): the strategy runs
on that expert, its LoRA adapter on the model it was trained on, as `model=NAME` would.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from apportion.errors import UnknownNameError, UsageError
from apportion.plugins import STRATEGIES, PluginIndex, PluginLoadError, Registry
from apportion.strategies.base import MAX_TOKENS_BOUND as MAX_TOKENS_BOUND
from apportion.strategies.base import Bounds as Bounds
from apportion.strategies.base import Strategy
from apportion.strategies.base import TokenStream as TokenStream

StrategyFactory = Callable[..., Strategy]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.params)


def parse_spec(text: str) -> StrategySpec:
    """`name` or `name:k=v,k=v` → StrategySpec (values stay strings until `build`)."""
    text = text.strip()
    if not text:
        raise UsageError("empty strategy name")
    name, _, rest = text.partition(":")
    params: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise UsageError(
                f"bad strategy parameter {part!r} in {text!r}", "write parameters as key=value"
            )
        params.append((key.strip(), value.strip()))
    return StrategySpec(name.strip(), tuple(params))


def spec_name(text: str) -> str:
    """The strategy name a spec starts with, its parameters left unread (and so unchecked):
    `consistency` for `consistency:n=8`, and `cot` for the malformed `cot:oops` too."""
    return text.partition(":")[0].strip()


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs whose own parameters are comma-separated too:
    a piece with `=` but no `:` continues the spec before it."""
    specs: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def _coerce(value: str, annotation: Any, where: str) -> Any:
    options = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    options = tuple(o for o in options if o is not type(None))
    target = options[0] if options else str
    try:
        if target is bool:
            lowered = value.lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(value)
            return lowered in {"true", "1", "yes"}
        if target is float:
            number = float(value)
            if not math.isfinite(number):
                raise UsageError(f"{where} must be a finite number, got {value!r}")
            return number
        if target in (int, str):
            return target(value)
    except ValueError:
        raise UsageError(
            f"{where} must be {getattr(target, '__name__', target)}, got {value!r}"
        ) from None
    return value


class StrategyRegistry:
    """Name → factory. Built once per Engine; not a mutable global.

    `broken` holds the plug-ins that failed to load: asking for one raises its error, every
    other name works. `plugins` is the entry-point index the registry was filled from, which
    an Engine fills its other registries from too (None: built from explicit factories)."""

    def __init__(
        self,
        factories: Mapping[str, StrategyFactory],
        *,
        broken: Mapping[str, PluginLoadError] | None = None,
        plugins: PluginIndex | None = None,
    ) -> None:
        self._factories = dict(factories)
        self._broken = dict(broken or {})
        self.plugins = plugins

    def names(self) -> list[str]:
        return sorted(self._factories)

    def store_readers(self) -> frozenset[str]:
        """The strategies that retrieve from the document store (their class says so)."""
        return frozenset(
            name for name, f in self._factories.items() if getattr(f, "uses_store", False)
        )

    def always_answers(self, spec_text: str) -> bool:
        """Whether the strategy a spec builds ends in an answer whenever its model says
        anything (direct, cot, ...), so a plan may end with it; solvers, programs and
        retrieval can decline. Plug-ins say so with an `always_answers` attribute."""
        return bool(getattr(self.build(spec_text), "always_answers", False))

    def token_stream(self, spec_text: str) -> TokenStream | None:
        """What the tokens of the strategy's one model call are (see `TokenStream`), or None
        for a strategy that does not say, or a name not registered. Read from the class, so
        the spec's parameters are not checked here."""
        declared = getattr(self._factories.get(spec_name(spec_text)), "token_stream", None)
        if declared == "answer":
            return "answer"
        if declared == "reasoning":
            return "reasoning"
        return None

    def parameters(self, name: str) -> dict[str, Any]:
        factory = self._factories[name]
        if not dataclasses.is_dataclass(factory):
            return {}
        return {f.name: f.default for f in dataclasses.fields(factory) if f.init}

    def bounds(self, name: str) -> dict[str, Bounds]:
        """The declared range of each bounded parameter of strategy `name`."""
        factory = self._factories[name]
        if not dataclasses.is_dataclass(factory):
            return {}
        hints = typing.get_type_hints(factory, include_extras=True)
        return {
            f.name: bound
            for f in dataclasses.fields(factory)
            if f.init
            for bound in getattr(hints.get(f.name), "__metadata__", ())
            if isinstance(bound, Bounds)
        }

    def build(self, spec_text: str) -> Strategy:
        spec = parse_spec(spec_text)
        factory = self._factories.get(spec.name)
        if factory is None:
            if spec.name in self._broken:
                raise self._broken[spec.name]
            raise UnknownNameError("strategy", spec.name, [*self.names(), "auto"])
        kwargs: dict[str, Any] = {}
        spec = self._with_expert(spec, factory)
        if spec.params:
            if not dataclasses.is_dataclass(factory):
                raise UsageError(f"strategy {spec.name!r} takes no parameters")
            hints = typing.get_type_hints(factory)
            valid = [f.name for f in dataclasses.fields(factory) if f.init]
            bounds = self.bounds(spec.name)
            for key, value in spec.params:
                if key not in valid:
                    raise UsageError(
                        f"strategy {spec.name!r} has no parameter {key!r}",
                        f"valid parameters: {', '.join(valid) or 'none'}",
                    )
                where = f"{spec.name}:{key}"
                kwargs[key] = _coerce(value, hints[key], where)
                if key in bounds:
                    bounds[key].check(kwargs[key], where)
        try:
            strategy = factory(**kwargs)
        except ValueError as e:
            raise UsageError(f"bad parameters for {spec.name!r}: {e}") from e
        return strategy

    @staticmethod
    def _with_expert(spec: StrategySpec, factory: StrategyFactory) -> StrategySpec:
        """`expert=NAME` as the `model=NAME` it means: an expert is served as a model id."""
        named = dict(spec.params)
        if "expert" not in named:
            return spec
        fields: set[str] = set()
        if dataclasses.is_dataclass(factory):
            fields = {f.name for f in dataclasses.fields(factory)}
        if "model" not in fields:
            raise UsageError(
                f"strategy {spec.name!r} does not call one model, so it takes no expert",
                "give expert= to a strategy that does: direct, cot, program, consistency, "
                "best_of_n, rag",
            )
        if "model" in named:
            raise UsageError(
                f"{spec}: give expert= or model=, not both",
                "an expert runs on the model it was trained on",
            )
        params = tuple(("model", v) if k == "expert" else (k, v) for k, v in spec.params)
        return StrategySpec(spec.name, params)


def builtin_factories() -> dict[str, StrategyFactory]:
    from apportion.strategies.best_of_n import BestOfN
    from apportion.strategies.cascade import Cascade
    from apportion.strategies.consistency import SelfConsistency
    from apportion.strategies.cot import ChainOfThought
    from apportion.strategies.direct import Direct
    from apportion.strategies.program import Program
    from apportion.strategies.rag import Rag
    from apportion.strategies.symbolic import Symbolic

    return {
        "direct": Direct,
        "cot": ChainOfThought,
        "program": Program,
        "symbolic": Symbolic,
        "consistency": SelfConsistency,
        "best_of_n": BestOfN,
        "cascade": Cascade,
        "rag": Rag,
    }


def default_registry(
    extra: Iterable[tuple[str, StrategyFactory]] = (), *, plugins: PluginIndex | None = None
) -> StrategyRegistry:
    """The built-in strategies, the installed plug-ins of the `apportion.strategies` group
    (from `plugins`, else the installed packages; a built-in name wins) and `extra`. A plug-in
    that fails to load is left out, with a warning, and named when it is asked for."""
    plugins = PluginIndex() if plugins is None else plugins
    source: Registry[StrategyFactory] = Registry(
        group=STRATEGIES,
        what="strategy",
        builtins=builtin_factories(),
        plugins=plugins,
        accepts=callable,
        expected="a strategy factory (a callable returning a Strategy)",
    )
    factories = {name: source.get(name) for name in source.names()}
    factories.update(dict(extra))
    return StrategyRegistry(factories, broken=source.failures(), plugins=plugins)


def models_of(spec: str, *, model: str, small: str, large: str) -> list[str]:
    """The models a strategy spec calls: those its parameters name (`expert`, `model`,
    `small`, `large`), else `model`, the request's; a cascade's default to `small` and `large` (the
    default_model and large_model settings)."""
    parsed = parse_spec(spec)
    named = dict(parsed.params)
    if parsed.name == "cascade":
        return list(dict.fromkeys([named.get("small", small), named.get("large", large)]))
    return [named.get("expert", named.get("model", model))]
