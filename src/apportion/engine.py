"""The runtime under its first name: `Engine` is `apportion.runtime.Runtime` (kept so that
`from apportion.runtime import Engine` and the README's Python API keep working)."""

from apportion.runtime import (
    AUTO,
    MAX_QUESTION_CHARS,
    Engine,
    Hooks,
    Prepared,
    Request,
    Runtime,
    conversation_features,
    execute,
)

__all__ = [
    "AUTO",
    "MAX_QUESTION_CHARS",
    "Engine",
    "Hooks",
    "Prepared",
    "Request",
    "Runtime",
    "conversation_features",
    "execute",
]
