"""Typed errors. Each carries a one-line message and, where there is one, what to do next."""

from __future__ import annotations


class ApportionError(Exception):
    """Base class: `message` says what went wrong, `hint` what the user can do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(ApportionError):
    """The caller asked for something malformed: empty question, bad option, bad parameter."""

    exit_code = 2


class UnknownNameError(UsageError):
    """An unknown model, strategy, engine or dataset name; the message lists the valid ones."""

    def __init__(self, what: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        super().__init__(
            f"unknown {what} {name!r}", f"valid {what} names: {', '.join(sorted(valid))}"
        )
        self.name = name
        self.valid = list(valid)


class ModelIntegrityError(ApportionError):
    """A model file on disk does not match its pinned sha256."""


class ModelFetchError(ApportionError):
    """Pulling a model's packages failed."""


class ContextOverflowError(UsageError):
    """The prompt does not fit the model's context window."""


class EngineError(ApportionError):
    """A text generator failed (load error, HTTP error, malformed reply)."""


class EngineUnavailableError(EngineError):
    """A remote engine could not be reached, or kept failing (connection errors, 429, 5xx),
    after its retries: the engine's fault, not the request's, so a fallback may take it."""


class BudgetExceededError(ApportionError):
    """A call was refused because its worst case would exceed the remaining budget."""


class ToolError(ApportionError):
    """A tool (solver, sandbox, store) failed in a way the caller should see."""
