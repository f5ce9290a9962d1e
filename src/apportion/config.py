"""Settings: defaults, then a TOML file, then APPORTION_* environment variables.

Pydantic lives here, at the edge; the rest of the package passes the resulting
`Settings` object down explicitly (nothing reads configuration from globals mid-request).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from apportion.errors import UsageError

if TYPE_CHECKING:
    from apportion.plugins import PluginIndex

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
LARGE_MODEL = "qwen2.5-coder-1.5b"


class HardwareProfile(BaseModel):
    """What local compute costs. Defaults describe a small 2-core cloud VM."""

    name: str = "cpu-2core-vm"
    # Average package power while generating; used when RAPL counters are unreadable.
    active_watts: float = Field(default=25.0, gt=0)
    # Power attributed to one busy core for tool calls (solver, sandbox) per CPU-second.
    watts_per_core: float = Field(default=10.0, gt=0)
    # Rental price of the machine, charged per wall-second of local model time.
    usd_per_hour: float = Field(default=0.10, ge=0)


class LlamaCppSettings(BaseModel):
    """How local GGUF models are loaded by llama.cpp."""

    # llama.cpp's extra buffer types repack weights for faster CPU kernels, AMX included.
    # "auto" turns them off only where llama.cpp would take its AMX path, which segfaults on
    # some Intel Xeons (engines/cpu.py); "on"/"off" force it. APPORTION_EXTRA_BUFFERS overrides.
    extra_buffers: Literal["auto", "on", "off"] = "auto"


class EngineConfig(BaseModel):
    """One `[[engines]]` entry: the id requests name it by, and the `kind` of engine serving it
    (default "openai"). Each kind validates the entry with its own subclass of this model,
    which adds the kind's fields (`engines/registry.py` maps kinds to them; `apportion.plugins`
    says how a plug-in adds a kind)."""

    id: str
    kind: str

    def describe(self) -> str:
        """One line for `apportion models`."""
        return f"{self.kind} engine"

    @classmethod
    def entry_model(
        cls, entry: Mapping[str, Any], kinds: EntryModels | None = None
    ) -> type[EngineConfig]:
        """The model that validates `entry`: its kind's (see `check_keys`)."""
        return (kinds or EngineEntryModels()).config_model(str(entry.get("kind", DEFAULT_KIND)))


# The kind of an [[engines]] entry that names none: the OpenAI-compatible HTTP engine, which
# every entry was before engines had kinds.
DEFAULT_KIND = "openai"


ThinkingControl = Literal[
    "reasoning_effort", "enable_thinking", "thinking_budget", "thinking_token_budget"
]


class RemoteEngineConfig(EngineConfig):
    """An OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, Ollama, a hosted API):
    the `openai` kind."""

    kind: str = DEFAULT_KIND
    # The server's URL (ending in /v1); or `base_urls`, the URLs of several replicas of one
    # model, over which calls are balanced (engines/pool.py). One of the two is required.
    base_url: str | None = None
    base_urls: list[str] = Field(default_factory=list)
    model: str
    api_key_env: str | None = None
    params: float = Field(gt=0, description="parameter count, for FLOPs")
    n_layers: int | None = None
    d_model: int | None = None
    context: int = 4096
    usd_per_m_prompt: float = 0.0
    usd_per_m_completion: float = 0.0
    # Energy per FLOP when the server's power is not visible to us (about an H100 at 40% MFU).
    joules_per_flop: float = 2.5e-12
    timeout_s: float = 120.0
    # Transient failures (connection errors, 408, 429, 5xx) are retried with exponential
    # backoff and jitter, honouring Retry-After: at most `max_attempts` tries in all, and no
    # retry starts later than `retry_max_wait_s` after the first try began.
    max_attempts: int = Field(default=4, ge=1, le=100)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=8.0, ge=0)
    retry_max_wait_s: float = Field(default=30.0, ge=0)
    # Another engine id (an [[engines]] entry or a local model) that takes this engine's
    # requests while it is down; the ledger names whichever engine served each call.
    fallback: str | None = None
    # After a request that failed over, this engine counts as down for this long: requests
    # go straight to the fallback, without waiting through retries, and then it is tried again.
    fallback_cooldown_s: float = Field(default=30.0, ge=0)
    # A replica of a pool that fails a call is passed over for this long (while another is
    # healthy), then tried again.
    replica_cooldown_s: float = Field(default=30.0, ge=0)
    # Experts (LoRA adapters) the server serves under model names of its own (vLLM's
    # --lora-modules, SGLang's --lora-paths): expert name → the server's model name. A request
    # for the expert is sent to this server under that name.
    experts: dict[str, str] = Field(default_factory=dict)
    # Set on the entry made for one of those experts (engines/registry.py): its name, and its
    # adapter's parameters when the expert is installed here too (for FLOPs; else 0).
    expert: str | None = None
    adapter_params: float = Field(default=0.0, ge=0)
    # How this server's model takes a thinking budget (`cot:think_budget=N`), for reasoning
    # models; each named control is sent (engines/openai_http.py says how N maps onto it):
    # "reasoning_effort" (OpenAI's field), "enable_thinking" and "thinking_budget" (chat
    # template kwargs: Qwen3 on vLLM and SGLang), "thinking_token_budget" (vLLM's cap).
    # Empty: the server is not told, and cot caps and forces the reasoning itself.
    thinking: list[ThinkingControl] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_url_at_least(self) -> RemoteEngineConfig:
        if not self.urls():
            raise ValueError("an openai engine needs base_url, or base_urls for replicas")
        return self

    def urls(self) -> list[str]:
        """The server's URLs: base_url, then base_urls, each once."""
        return list(dict.fromkeys(u for u in [self.base_url, *self.base_urls] if u))

    def describe(self) -> str:
        urls = self.urls()
        where = urls[0] if len(urls) == 1 else f"{len(urls)} replicas ({', '.join(urls)})"
        return f"remote: {self.model} at {where}"


class LlamaCppEngineConfig(EngineConfig):
    """A GGUF model run in this process by llama.cpp: the `llamacpp` kind. A catalogue model
    needs no entry (its id is served as is); an entry gives one another id, or a context size
    of its own, or serves a .gguf file by id."""

    kind: str = "llamacpp"
    # A catalogue id (pulled on first use) or the path of a .gguf file.
    model: str
    # The context window; None: the n_ctx setting.
    n_ctx: int | None = Field(default=None, ge=256)

    def describe(self) -> str:
        return f"llama.cpp: {self.model}"


class EntryModels(Protocol):
    """Kind → the model an [[engines]] entry of that kind is validated with."""

    def config_model(self, name: str) -> type[EngineConfig]: ...


class EngineEntryModels:
    """The entry models of the built-in engine kinds, and of the plug-in kinds in the
    ``apportion.engines`` group (each an `EngineKind`, whose `config` is read here without
    building any engine; `engines/registry.py` builds them)."""

    def __init__(self, plugins: PluginIndex | None = None) -> None:
        from apportion.plugins import ENGINES, PluginIndex, Registry

        builtins: dict[str, type[EngineConfig]] = {
            DEFAULT_KIND: RemoteEngineConfig,
            "llamacpp": LlamaCppEngineConfig,
        }
        self._kinds: Registry[Any] = Registry(
            group=ENGINES,
            what="engine kind",
            builtins={name: _Kind(model) for name, model in builtins.items()},
            plugins=PluginIndex() if plugins is None else plugins,
            accepts=_declares_entry_model,
            expected="an apportion.engines.registry.EngineKind",
        )

    def config_model(self, name: str) -> type[EngineConfig]:
        model: type[EngineConfig] = self._kinds.get(name).config
        return model


@dataclasses.dataclass(frozen=True)
class _Kind:
    config: type[EngineConfig]


def _declares_entry_model(found: object) -> bool:
    model = getattr(found, "config", None)
    return isinstance(model, type) and issubclass(model, EngineConfig)


class Settings(BaseModel):
    home: Path = Field(default_factory=lambda: Path("~/.cache/apportion").expanduser())
    default_model: str = DEFAULT_MODEL
    large_model: str = LARGE_MODEL
    threads: int | None = Field(default=None, ge=1, description="None: pick from free cores")
    n_ctx: int = Field(default=4096, ge=256)
    # The most memory the local models of one process keep resident together ("1.5GB",
    # "800MiB"); None: no limit. Models are evicted least recently used first to load another
    # (engines/memory.py), and every load is then charged to the request that caused it.
    memory_limit: str | None = None
    # A plan whose models cannot be resident together within memory_limit (a cascade, say):
    # "swap" runs it, loading them in turn; "skip" leaves it out (--explain says why).
    memory_policy: Literal["swap", "skip"] = "swap"
    max_tokens: int = Field(default=512, ge=1)
    hardware: HardwareProfile = Field(default_factory=HardwareProfile)
    llamacpp: LlamaCppSettings = Field(default_factory=LlamaCppSettings)
    # Same request, same tokens, whatever ran before: no model call reuses a prompt prefix
    # cached by an earlier one (README, "Deterministic mode", gives what it costs).
    deterministic: bool = False
    # [[engines]] entries, each validated by its kind's model (see EngineConfig).
    engines: list[SerializeAsAny[EngineConfig]] = Field(default_factory=list)
    # The exact solvers the symbolic strategy asks, in order (built-in: z3, sympy; plug-ins
    # by their names). None: the installed plug-in solvers first, then z3, then sympy.
    solvers: list[str] | None = None
    # The document store `apportion serve` answers factual questions from (a path,
    # sqlite:PATH, milvus-lite:DIR or a Milvus URL); None: store_path, when it exists.
    store: str | None = None
    # The API keys of `apportion serve`; None: home / "keys.sqlite3".
    keys_db: Path | None = None
    # Where keys, quotas and the spend log live when not in keys_db: a postgresql:// URL that
    # several `apportion serve` replicas share (or a SQLite path).
    state: str | None = None

    @field_validator("engines", mode="before")
    @classmethod
    def _entries_by_kind(cls, value: Any, info: ValidationInfo) -> Any:
        """Validate each [[engines]] entry with its kind's model, so a kind's fields are
        checked (and kept) whichever kind it is. Entries built in code pass as they are."""
        if not isinstance(value, list):
            return value
        kinds = (info.context or {}).get("engine_kinds")
        out: list[Any] = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                out.append(entry)
                continue
            data = {**entry, "kind": str(entry.get("kind", DEFAULT_KIND))}
            model = EngineConfig.entry_model(data, kinds)
            try:
                out.append(model.model_validate(data))
            except ValidationError as e:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                    for err in e.errors()
                )
                raise ValueError(f"engines[{i}] (kind {data['kind']!r}): {problems}") from None
        return out

    @field_validator("memory_limit")
    @classmethod
    def _a_memory_size(cls, value: str | None) -> str | None:
        if value is not None:
            from apportion.engines.memory import parse_bytes

            try:
                parse_bytes(value)
            except UsageError as e:
                raise ValueError(e.message) from None
        return value

    @property
    def memory_limit_bytes(self) -> int | None:
        from apportion.engines.memory import parse_bytes

        return None if self.memory_limit is None else parse_bytes(self.memory_limit)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def store_path(self) -> Path:
        """The embedded document store `apportion index` fills and `rag` searches by default."""
        return self.home / "store.sqlite"

    def data_paths(self) -> tuple[Path, ...]:
        """Every place this configuration keeps apportion's data: the home folder (models, store,
        keys, bench caches and stores live there by default) and any other path a setting names.
        The sandbox hides them all from the code it runs."""
        named = [value for value in dict(self).values() if isinstance(value, Path)]
        store = (self.store or "").strip()
        if store and not store.startswith(("http://", "https://")):
            # a store file or milvus-lite folder on this machine (as open_store reads the URI)
            local = store.removeprefix("sqlite:").removeprefix("milvus-lite:")
            named.append(Path(local[2:] if local.startswith("//") else local))
        named = [p.expanduser() for p in named]
        return tuple(dict.fromkeys([self.home, self.models_dir, self.store_path, *named]))

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Defaults ← TOML file (explicit path, else $APPORTION_CONFIG if set) ← environment."""
        env = dict(os.environ) if env is None else env
        data: dict[str, Any] = {}
        kinds = EngineEntryModels()  # the engine kinds [[engines]] entries may name, read once
        config_path = path or (
            Path(env["APPORTION_CONFIG"]) if env.get("APPORTION_CONFIG") else None
        )
        if config_path is not None:
            try:
                data = tomllib.loads(config_path.read_text())
            except FileNotFoundError as e:
                raise UsageError(f"config file not found: {config_path}") from e
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"config file {config_path} is not valid TOML: {e}") from e
            check_keys(data, cls, where=str(config_path), engine_kinds=kinds)
        if env.get("APPORTION_HOME"):
            data["home"] = env["APPORTION_HOME"]
        if env.get("APPORTION_THREADS"):
            data["threads"] = env["APPORTION_THREADS"]
        if env.get("APPORTION_MODEL"):
            data["default_model"] = env["APPORTION_MODEL"]
        if env.get("APPORTION_DETERMINISTIC"):
            data["deterministic"] = env["APPORTION_DETERMINISTIC"]
        if env.get("APPORTION_EXTRA_BUFFERS"):
            data["llamacpp"] = {
                **data.get("llamacpp", {}),
                "extra_buffers": env["APPORTION_EXTRA_BUFFERS"].strip().lower(),
            }
        try:
            settings = cls.model_validate(data, context={"engine_kinds": kinds})
        except ValidationError as e:
            raise UsageError(f"invalid configuration: {e}") from e
        settings.home = settings.home.expanduser()
        return settings


def check_keys(
    data: dict[str, Any],
    model: type[BaseModel],
    *,
    where: str,
    at: str = "",
    engine_kinds: EntryModels | None = None,
) -> None:
    """Refuse a key `model` does not define, at every nesting level, naming the closest valid
    key: a misspelt setting silently left at its default is worse than an error. An
    [[engines]] entry is checked against its kind's model."""
    valid = dict(model.model_fields)
    valid.update({info.alias: info for info in model.model_fields.values() if info.alias})
    for key, value in data.items():
        path = f"{at}.{key}" if at else key
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            section = f" in [{at.split('[')[0]}]" if at else ""
            raise UsageError(
                f"unknown key {path!r} in {where}{guess}",
                f"valid keys{section}: {', '.join(sorted(valid))}",
            )
        nested = _nested_model(valid[key].annotation)
        if nested is None:
            continue
        if isinstance(value, dict):
            check_keys(value, nested, where=where, at=path, engine_kinds=engine_kinds)
        elif isinstance(value, list):
            for i, entry in enumerate(value):
                if isinstance(entry, dict):
                    # an entry whose fields depend on its kind is checked against that kind's
                    entry_model = (
                        nested.entry_model(entry, engine_kinds)
                        if issubclass(nested, EngineConfig)
                        else nested
                    )
                    check_keys(
                        entry, entry_model, where=where, at=f"{path}[{i}]",
                        engine_kinds=engine_kinds,
                    )  # fmt: skip


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds, directly, optionally or as a list's entries."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Annotated:
        return _nested_model(get_args(annotation)[0])
    if get_origin(annotation) in (list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None
