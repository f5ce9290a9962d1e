"""Errors as the server answers them: an HTTP status and an OpenAI-style body.

Every failure of a request is typed: a 4xx that says what to change, or a clean 503/504 when
the server or a model could not answer. An unexpected exception is logged and answered 503
with no internals in the body; no request ever gets a 500.
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from apportion.engines.base import GenerationCancelled
from apportion.errors import (
    ApportionError,
    BudgetExceededError,
    ContextOverflowError,
    EngineError,
    ModelFetchError,
    ModelIntegrityError,
    UnknownNameError,
)
from apportion.server import metrics as m
from apportion.server.schemas import UNSUPPORTED, ErrorBody, ErrorDetail

UNSUPPORTED_CODE = "unsupported_parameter"


class ApiError(Exception):
    """An error with its HTTP status and OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI names the field `type`
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def _body(message: str, type_: str, code: str | None = None, param: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))


def error_payload(exc: BaseException) -> tuple[int, ErrorBody, dict[str, str]]:
    """The status, body and headers an exception answers with."""
    if isinstance(exc, ApiError):
        return exc.status, _body(exc.message, exc.type, exc.code, exc.param), exc.headers
    if isinstance(exc, GenerationCancelled):
        # nginx's "client closed request": only a client that is already gone ever gets it
        return 499, _body("the request was cancelled", "cancelled"), {}
    if isinstance(exc, UnknownNameError) and str(exc).startswith("unknown model "):
        return 404, _body(str(exc), "invalid_request_error", "model_not_found", "model"), {}
    if isinstance(exc, ContextOverflowError):
        return 400, _body(str(exc), "invalid_request_error", "context_length_exceeded"), {}
    if isinstance(exc, BudgetExceededError):
        return 400, _body(str(exc), "invalid_request_error", "budget_too_small"), {}
    if isinstance(exc, EngineError):
        # the model behind the request failed, not the request: try again later
        return 503, _body(str(exc), "engine_error", "engine_unavailable"), {"Retry-After": "5"}
    if isinstance(exc, ModelFetchError | ModelIntegrityError):
        return 503, _body(str(exc), "model_unavailable", "model_unavailable"), {}
    if isinstance(exc, ApportionError):
        return 400, _body(str(exc), "invalid_request_error"), {}
    name = type(exc).__name__
    return (
        503,
        _body(
            f"the server failed while answering ({name}); the failure is logged. Retry, and "
            "report it if it happens again",
            "server_error",
            "internal_error",
        ),
        {"Retry-After": "1"},
    )


def error_response(exc: BaseException) -> JSONResponse:
    status, payload, headers = error_payload(exc)
    return JSONResponse(payload.model_dump(), status_code=status, headers=headers)


def outcome_for(status: int) -> str:
    if status == 401:
        return m.UNAUTHORIZED
    if status == 429:
        return m.REJECTED
    if status == 504:
        return m.TIMEOUT
    return m.INVALID if status < 500 else m.ERROR


def _is_type_tag(part: object) -> bool:
    """pydantic puts the member of a union that failed (`str`, `list[constrained-str]`,
    `function-after[...]`) into an error's location: not a field name."""
    text = str(part)
    return text in {"str", "int", "float", "bool", "list", "dict", "none"} or any(
        c in text for c in "[-("
    )


def validation_error(exc: RequestValidationError) -> ApiError:
    """The 400 a malformed request gets: the first problem, naming its parameter. A parameter
    the server does not implement (or an unknown one) gets code `unsupported_parameter`."""
    errors = list(exc.errors())
    if not errors:
        return ApiError(400, "the request is not valid")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    if not loc:
        return ApiError(400, "the request body must be a JSON object")
    param = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first.get("type") == "extra_forbidden":
        return ApiError(
            400,
            f"{param} is not a parameter this server supports{more}; it would be ignored, "
            "so the request is refused",
            code=UNSUPPORTED_CODE,
            param=param,
        )
    if loc[0] in UNSUPPORTED:
        return ApiError(
            400,
            f"{param}: {UNSUPPORTED[loc[0]]} ({first.get('msg', 'invalid')}){more}",
            code=UNSUPPORTED_CODE,
            param=param,
        )
    return ApiError(400, f"{param}: {first.get('msg', 'invalid')}{more}", param=param)
