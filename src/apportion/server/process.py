"""The server's process: the app run by uvicorn until a signal stops it.

uvicorn shuts down gracefully on the first SIGINT and forcibly on the second (open streams
cut, running jobs not drained). Under the `apportion` command a SIGINT sent to the whole
process group arrives twice, once directly and once passed on by the supervising parent
(supervise.py), so the copy is dropped here as it is in the other commands.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from apportion.interrupts import duplicate_interrupts


class InterruptOnceServer(uvicorn.Server):
    """uvicorn's server, taking a SIGINT and its copy (`duplicate_interrupts`) as one."""

    def __init__(self, config: uvicorn.Config, is_copy: Callable[[], bool] | None = None):
        super().__init__(config)
        self._is_copy = is_copy or duplicate_interrupts()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self._is_copy():
            return
        super().handle_exit(sig, frame)


# uvicorn's exit status when the server never started (the port taken, say).
STARTUP_FAILURE = 3


def serve(app: Any, *, host: str, port: int, log_level: str) -> None:
    """Run `app` on host:port until SIGINT or SIGTERM: what `uvicorn.run` does for one
    process, with the server above."""
    server = InterruptOnceServer(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    # uvicorn raises the SIGINT again once it has shut down
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
