"""Engines by kind: the `kind` of an `[[engines]]` entry names the `EngineKind` that builds it.

Built-in kinds: ``openai`` (an OpenAI-compatible HTTP endpoint, `engines/openai_http.py`; the
kind of an entry that names none) and ``llamacpp`` (a GGUF model in this process,
`engines/llamacpp.py`). Plug-in packages add kinds through the ``apportion.engines`` entry-point
group (`apportion.plugins`). A model id with no entry is a catalogue id or a .gguf path, served
by the llamacpp kind as if an entry ``{id = ID, kind = "llamacpp", model = ID}`` named it.

An expert's name (apportion.experts) is a model id too: an openai entry that lists it in its
`experts` serves it under the server's name for it; else an installed expert is served by the
``expert`` kind, its adapter applied per call on the engine of its base model.

    >>> from apportion.config import Settings
    >>> EngineRegistry().entry_for(Settings(), "smollm2-135m").kind
    'llamacpp'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from apportion.config import (
    DEFAULT_KIND,
    EngineConfig,
    LlamaCppEngineConfig,
    RemoteEngineConfig,
    Settings,
)
from apportion.errors import UsageError
from apportion.plugins import ENGINES, PluginIndex, Registry

if TYPE_CHECKING:
    from apportion.engines.base import TextEngine
    from apportion.engines.catalogue import PullProgress

__all__ = ["EngineKind", "EngineRegistry", "EngineServices", "ExpertEngineConfig"]

C = TypeVar("C", bound=EngineConfig)


@dataclass(frozen=True)
class EngineServices:
    """What an engine factory may use besides its own entry: the settings (models folder,
    threads, context size), the other engines by id (a wrapper such as a fallback builds on
    them; engines are built once per Engine and kept), and the model check that names the
    valid ids."""

    settings: Settings
    engine_for: Callable[[str], TextEngine]
    check_model: Callable[[str], None]
    pull_progress: PullProgress | None = None


@dataclass(frozen=True)
class EngineKind(Generic[C]):
    """One kind of engine, as the ``apportion.engines`` group registers it.

    `config`: the model an entry of this kind is validated with (a subclass of EngineConfig).
    `build(config, services) -> TextEngine`: the factory, called once per Engine and model id.
    `fingerprint(config) -> str`: what identifies the engine's outputs, for the completion cache
    and the speed book; None: the kind and the entry's fields, its id left out.
    `remote`: the engine serves over the network (its prompt cache is the server's own)."""

    config: type[C]
    build: Callable[[C, EngineServices], TextEngine]
    fingerprint: Callable[[C], str] | None = None
    remote: bool = False


class ExpertEngineConfig(EngineConfig):
    """An installed expert, served on the local engine of its base model: the ``expert``
    kind. Made from the expert's manifest, never written in a configuration."""

    kind: str = "expert"
    base: str
    base_sha256: str
    adapter_sha256: str
    adapter_params: int

    def describe(self) -> str:
        return f"expert on {self.base}"


# --------------------------------------------------------------------------- built-in kinds


def _build_openai(config: RemoteEngineConfig, services: EngineServices) -> TextEngine:
    from apportion.engines.fallback import FallbackEngine, fallback_chain
    from apportion.engines.openai_http import OpenAIHttpEngine

    urls = config.urls()
    engine: TextEngine
    if len(urls) > 1:
        from apportion.engines.pool import ReplicaPool

        engine = ReplicaPool(config)
    else:
        engine = OpenAIHttpEngine(config.model_copy(update={"base_url": urls[0]}))
    if (fallback := config.fallback) is not None:
        entries = services.settings.engines
        fallback_chain({e.id: getattr(e, "fallback", None) for e in entries}, config.id)
        services.check_model(fallback)
        engine = FallbackEngine(
            engine, lambda: services.engine_for(fallback), fallback_id=fallback,
            cooldown_s=config.fallback_cooldown_s,
        )  # fmt: skip
    return engine


def _openai_fingerprint(config: RemoteEngineConfig) -> str:
    urls = config.urls()
    # one server keeps the key it always had; replicas of one model are one model
    where = urls[0] if len(urls) == 1 else "pool(" + ",".join(sorted(urls)) + ")"
    return f"remote:{where}|{config.model}"


def _build_llamacpp(config: LlamaCppEngineConfig, services: EngineServices) -> TextEngine:
    from apportion.engines import catalogue
    from apportion.engines.cpu import choose_extra_buffers
    from apportion.engines.llamacpp import LlamaCppEngine

    settings = services.settings
    path = catalogue.resolve(config.model, settings.models_dir, progress=services.pull_progress)
    extra = choose_extra_buffers(settings.llamacpp.extra_buffers)
    return LlamaCppEngine(
        config.id,
        path,
        n_ctx=config.n_ctx or settings.n_ctx,
        threads=settings.threads,
        extra_buffers=extra.enabled,
    )


def _llamacpp_fingerprint(config: LlamaCppEngineConfig) -> str:
    """The weights' sha256: pinned in the catalogue, else read from the file."""
    from apportion.engines import catalogue

    if config.model in catalogue.CATALOGUE:
        return catalogue.CATALOGUE[config.model].sha256
    return catalogue.sha256_file(Path(config.model).expanduser())


def _build_expert(config: ExpertEngineConfig, services: EngineServices) -> TextEngine:
    from apportion.engines import catalogue
    from apportion.experts.book import ExpertBook

    known = catalogue.CATALOGUE.get(config.base)
    if known is not None and known.sha256 != config.base_sha256:
        raise UsageError(
            f"expert {config.id!r} was trained on weights with sha256 {config.base_sha256[:12]}…, "
            f"not {config.base}'s ({known.sha256[:12]}…)",
            f"retrain it: apportion experts train {config.id} --base {config.base} --data ...",
        )
    path = ExpertBook(services.settings.home).find(config.id).verify()
    base = services.engine_for(config.base)
    attach = getattr(base, "with_adapter", None)
    if not callable(attach):
        raise UsageError(
            f"expert {config.id!r} needs its base model {config.base!r} served by llama.cpp "
            "here, which can apply LoRA adapters; the engine serving it cannot",
            "serve the adapter on the remote server too (vLLM --lora-modules) and map it in "
            "that [[engines]] entry: experts = {" + f'"{config.id}" = "<served name>"' + "}",
        )
    engine: TextEngine = attach(config.id, path, config.adapter_params)
    return engine


def _expert_fingerprint(config: ExpertEngineConfig) -> str:
    return f"{config.base_sha256}+lora:{config.adapter_sha256}"


def builtin_kinds() -> dict[str, EngineKind[Any]]:
    return {
        DEFAULT_KIND: EngineKind(
            RemoteEngineConfig, _build_openai, _openai_fingerprint, remote=True
        ),
        "llamacpp": EngineKind(LlamaCppEngineConfig, _build_llamacpp, _llamacpp_fingerprint),
        "expert": EngineKind(ExpertEngineConfig, _build_expert, _expert_fingerprint),
    }


# --------------------------------------------------------------------------- the registry


class EngineRegistry:
    """Kind → EngineKind: the built-ins, then the ``apportion.engines`` plug-ins (read from
    `plugins`, else from the installed packages when a kind is not built in). One per Engine."""

    def __init__(self, plugins: PluginIndex | None = None) -> None:
        self._kinds: Registry[EngineKind[Any]] = Registry(
            group=ENGINES,
            what="engine kind",
            builtins=builtin_kinds(),
            plugins=PluginIndex() if plugins is None else plugins,
            accepts=lambda found: isinstance(found, EngineKind),
            expected="an apportion.engines.registry.EngineKind",
        )

    def names(self) -> list[str]:
        return self._kinds.names()

    def kind(self, name: str) -> EngineKind[Any]:
        """The kind registered as `name` (UnknownNameError lists the valid ones)."""
        return self._kinds.get(name)

    def config_model(self, name: str) -> type[EngineConfig]:
        return self.kind(name).config

    def entry_for(self, settings: Settings, model_id: str) -> EngineConfig:
        """The [[engines]] entry serving `model_id`; an expert's name, the entry of a server
        that serves it, else its `expert` entry; a catalogue id or .gguf path with no entry is
        served by llama.cpp under its own name."""
        from apportion.engines import catalogue

        for entry in settings.engines:
            if entry.id == model_id:
                return entry
        for entry in settings.engines:
            if isinstance(entry, RemoteEngineConfig) and model_id in entry.experts:
                return self._remote_expert(settings, entry, model_id)
        if model_id not in catalogue.CATALOGUE and not catalogue.is_local_file(model_id):
            from apportion.experts.book import ExpertBook

            expert = ExpertBook(settings.home).get(model_id)
            if expert is not None:
                m = expert.manifest
                return ExpertEngineConfig(
                    id=model_id, base=m.base_model, base_sha256=m.base_sha256,
                    adapter_sha256=m.adapter_sha256,
                    adapter_params=m.adapter_params,
                )  # fmt: skip
        return LlamaCppEngineConfig(id=model_id, model=model_id)

    @staticmethod
    def _remote_expert(
        settings: Settings, entry: RemoteEngineConfig, expert: str
    ) -> RemoteEngineConfig:
        """The entry of `entry`'s server serving `expert` under its name for it (no fallback:
        another engine would answer without the expert)."""
        from apportion.experts.book import ExpertBook

        installed = ExpertBook(settings.home).get(expert)
        return entry.model_copy(
            update={
                "id": expert, "model": entry.experts[expert], "experts": {}, "expert": expert,
                "adapter_params": float(installed.manifest.adapter_params) if installed else 0.0,
                "fallback": None,
            }
        )  # fmt: skip

    def _checked(self, config: EngineConfig) -> EngineKind[Any]:
        kind = self.kind(config.kind)
        if not isinstance(config, kind.config):
            raise UsageError(
                f"engine {config.id!r} is a {type(config).__name__}, which is not the "
                f"{config.kind!r} kind's configuration ({kind.config.__name__})"
            )
        return kind

    def build(self, config: EngineConfig, services: EngineServices) -> TextEngine:
        """The engine an entry describes, built by its kind's factory."""
        return self._checked(config).build(config, services)

    def fingerprint(self, config: EngineConfig) -> str:
        """What identifies an engine's outputs (cache keys, speeds): its kind's fingerprint, or
        else the kind and the entry's fields (its id, which names rather than defines it, left
        out)."""
        kind = self._checked(config)
        if kind.fingerprint is not None:
            return kind.fingerprint(config)
        fields = config.model_dump(mode="json", exclude={"id"})
        return f"{config.kind}:{json.dumps(fields, sort_keys=True)}"

    def is_remote(self, config: EngineConfig) -> bool:
        return self._checked(config).remote
