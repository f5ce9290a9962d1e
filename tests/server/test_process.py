"""The server's process: uvicorn's server takes a SIGINT and the copy its supervisor passes on
as one interrupt, so that shutdown stays graceful."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("uvicorn", reason="needs the `server` extra")

import uvicorn

from apportion.interrupts import duplicate_interrupts
from apportion.server.process import InterruptOnceServer


async def _app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError


def test_a_sigint_and_its_copy_stop_gracefully_and_a_later_one_forces() -> None:
    now = [50.0]
    server = InterruptOnceServer(
        uvicorn.Config(_app), is_copy=duplicate_interrupts(1.0, clock=lambda: now[0])
    )
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not server.force_exit
    now[0] += 0.01  # the supervisor's copy of a SIGINT sent to the whole process group
    server.handle_exit(signal.SIGINT, None)
    assert not server.force_exit
    now[0] += 2.0  # a second Ctrl-C, later: "force quit", as uvicorn's own
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit


def test_sigterm_is_uvicorns_own() -> None:
    server = InterruptOnceServer(uvicorn.Config(_app), is_copy=lambda: True)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and not server.force_exit
