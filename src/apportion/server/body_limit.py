"""The request body limit, applied before FastAPI reads a body."""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from apportion.server.errors import ApiError, error_response


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not they declare a length
    (a chunked body is counted as it arrives, and stopped once it is over)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"the request body is larger than {self.max_bytes:,} bytes",
            code="request_too_large",
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(
                        ApiError(400, "the Content-Length header is not a number")
                    )(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await error_response(too_large)(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> AsgiMessage:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from reading the body; app.py's handler
                    # turns this one into the OpenAI-style 413.
                    raise StarletteHTTPException(413, too_large.message)
            return message

        await self.app(scope, limited_receive, send)
