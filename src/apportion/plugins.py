"""The open module interface: what a plug-in package registers, and how apportion finds it.

Four registries map a name to a factory. Each holds the built-ins (registered in code) and the
entry points of one group in the installed packages; a built-in name always wins over a plug-in
of the same name. A plug-in package declares its entry points in its own `pyproject.toml`
(`examples/plugin/` is a complete one)::

    [project.entry-points."apportion.engines"]
    echo = "apportion_echo.engine:ECHO"

The groups, and what each entry point must name:

``apportion.strategies`` (name → factory; ``--strategy NAME``, ``model: NAME`` over the API)
    A callable returning a `Strategy` (``strategies/base.py``): ``factory(**params) ->
    Strategy``. A frozen dataclass is the usual factory: its fields are the parameters that
    ``NAME:key=value`` sets, coerced to their annotations and held to their `Bounds`
    (``strategies/registry.py``). Optional class attributes: ``always_answers`` (a plan may
    end with it), ``uses_store`` (it reads the document store), ``token_stream``.

``apportion.engines`` (kind → `EngineKind`; the ``kind`` of an ``[[engines]]`` entry)
    An `apportion.engines.registry.EngineKind`: ``EngineKind(config=ConfigModel,
    build=build)``, where ``ConfigModel`` subclasses `apportion.config.EngineConfig` with the
    kind's own fields (it validates the entry; unknown keys are refused by name) and
    ``build(config: ConfigModel, services: EngineServices) -> TextEngine``
    (``engines/base.py``). Optional: ``fingerprint(config) -> str``, what identifies the
    engine's outputs in caches (default: the kind and the entry's fields, its id left out), and
    ``remote=True`` for an engine that serves over the network.

``apportion.stores`` (URI scheme → opener; ``--store SCHEME:...``, the ``store`` setting)
    A callable ``open(uri: str, *, embedder: Embedder | None) -> DocumentStore``
    (``tools/store/base.py``), given the whole URI as written (``memory:notes``) and the
    embedding model to use, or None for keyword search only.

``apportion.solvers`` (name → factory; asked in turn by the ``symbolic`` strategy)
    A callable ``factory() -> Solver`` (``tools/solvers.py``): a ``name`` and ``solve(question,
    *, timeout_s) -> SolverResult``, declining a question that is not its kind with the error
    ``"declined"``. The ``solvers`` setting orders them; by default plug-ins come first.

An entry point that cannot be loaded (its module is missing, it raises on import, it names the
wrong kind of object) breaks only its own name: every other name keeps working, and asking for
the broken one raises a `PluginLoadError` naming the package, the entry point and the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from apportion.errors import ApportionError, UnknownNameError

log = logging.getLogger(__name__)

STRATEGIES = "apportion.strategies"
ENGINES = "apportion.engines"
STORES = "apportion.stores"
SOLVERS = "apportion.solvers"
GROUPS = (STRATEGIES, ENGINES, STORES, SOLVERS)

T = TypeVar("T")


class PluginLoadError(ApportionError):
    """An installed plug-in's entry point failed to load, or named the wrong kind of object."""


class PluginIndex:
    """The entry points of apportion's groups, read from the installed packages on first need
    and kept: one read serves every registry built from the same index (one per Engine).

    `PluginIndex(entry_points)` holds exactly the given entry points (tests); `PluginIndex()`
    reads the installed packages; `PluginIndex.none()` holds nothing (built-ins only)."""

    def __init__(self, found: Iterable[EntryPoint] | None = None) -> None:
        self._given = None if found is None else tuple(found)
        self._by_group: dict[str, tuple[EntryPoint, ...]] | None = None

    @classmethod
    def none(cls) -> PluginIndex:
        return cls(())

    def group(self, group: str) -> tuple[EntryPoint, ...]:
        """The entry points of `group`, in the order the packages were found."""
        if self._by_group is None:
            if self._given is None:
                installed = entry_points()  # one scan of every installed package's metadata
                found = [ep for name in GROUPS for ep in installed.select(group=name)]
            else:
                found = list(self._given)
            by_group: dict[str, tuple[EntryPoint, ...]] = {}
            for ep in found:
                by_group[ep.group] = (*by_group.get(ep.group, ()), ep)
            self._by_group = by_group
        return self._by_group.get(group, ())


def _origin(ep: EntryPoint) -> str:
    """Where an entry point comes from: `name = value` and the package that declares it."""
    dist = getattr(ep, "dist", None)
    package = f" of package {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value!r} in group {ep.group}{package}"


class Registry(Generic[T]):
    """Name → factory for one group: the built-ins, then the group's plug-ins, each loaded on
    first need (so a broken one costs nothing until it is asked for) and kept.

    `what` names the thing in messages ("engine kind"); `accepts` says whether a loaded object
    is a factory of the right kind, `expected` describes one for the error when it is not."""

    def __init__(
        self,
        *,
        group: str,
        what: str,
        builtins: Mapping[str, T],
        plugins: PluginIndex | None,
        accepts: Callable[[object], bool],
        expected: str,
    ) -> None:
        self.group = group
        self.what = what
        self._builtins = dict(builtins)
        self._plugins = plugins or PluginIndex.none()
        self._accepts = accepts
        self._expected = expected
        self._loaded: dict[str, T] = {}
        self._failed: dict[str, PluginLoadError] = {}

    def builtin_names(self) -> list[str]:
        return list(self._builtins)

    def plugin_names(self) -> list[str]:
        """The plug-ins of this group that load, by name (loading them all)."""
        names = dict.fromkeys(
            ep.name for ep in self._plugins.group(self.group) if ep.name not in self._builtins
        )
        return sorted(name for name in names if self._load(name) is not None)

    def names(self) -> list[str]:
        """Every name that can be asked for: built-ins first, then loadable plug-ins."""
        return [*self._builtins, *self.plugin_names()]

    def failures(self) -> dict[str, PluginLoadError]:
        """The plug-ins that failed to load so far, by name."""
        return dict(self._failed)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._builtins or self._load(name) is not None)

    def get(self, name: str) -> T:
        """The factory registered as `name`: a UnknownNameError listing the valid names if
        there is none, a PluginLoadError if its plug-in failed to load."""
        if name in self._builtins:
            return self._builtins[name]
        found = self._load(name)
        if found is not None:
            return found
        if name in self._failed:
            raise self._failed[name]
        raise UnknownNameError(self.what, name, self.names())

    def _load(self, name: str) -> T | None:
        if name in self._loaded:
            return self._loaded[name]
        if name in self._failed or name in self._builtins:
            return None
        for ep in self._plugins.group(self.group):
            if ep.name != name:
                continue
            try:
                loaded = ep.load()
            except Exception as e:  # whatever a plug-in's import raises breaks that plug-in only
                error = PluginLoadError(
                    f"the {self.what} plug-in {name!r} failed to load: {type(e).__name__}: {e}",
                    f"{_origin(ep)}; reinstall or uninstall that package",
                )
            else:
                if self._accepts(loaded):
                    self._loaded[name] = loaded  # of the right kind: `accepts` said so
                    return self._loaded[name]
                error = PluginLoadError(
                    f"the {self.what} plug-in {name!r} is not {self._expected}: it is "
                    f"{type(loaded).__name__}",
                    _origin(ep),
                )
            log.warning("%s (%s)", error.message, error.hint)
            self._failed[name] = error
            return None  # the first entry point of a name decides it
        return None
