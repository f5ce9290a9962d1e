"""One request must never freeze the server: pathological text is read in linear time, and solver
work runs in the app's persistent worker processes, so /healthz answers at once meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.server.app import create_app
from server.support import fake_core, live_server

# Accepted by the parser, but SymPy needs far longer than the solver's timeout.
HARD = "Solve (x+1)^1000 = 2"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    core = fake_core(Path(tmp_path_factory.mktemp("home")))
    app = create_app(core.settings, engine=core)
    with live_server(app) as url:
        yield url, app.state.apportion


def _ask(url: str, content: str, model: str, out: list[httpx.Response]) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    out.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300))


def _health_gaps_while(url: str, content: str, model: str) -> tuple[list[float], Any]:
    """Seconds between successive /healthz replies while one chat request on `content` runs.

    Gaps, not round-trip times: the server shares this process, so a request that holds the
    interpreter lock stalls this thread's clock reads too, and only the gaps show it."""
    replies: list[httpx.Response] = []
    worker = threading.Thread(target=_ask, args=(url, content, model, replies))
    last = time.perf_counter()
    worker.start()
    gaps = []
    with httpx.Client(timeout=120) as health:
        while (worker.is_alive() or len(gaps) < 5) and len(gaps) < 200:
            assert health.get(f"{url}/healthz").status_code == 200
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            time.sleep(0.05)
    worker.join(300)
    return gaps, replies[0]


def test_solver_calls_go_through_the_apps_workers(served: tuple[str, Any]) -> None:
    url, state = served
    replies: list[httpx.Response] = []
    _ask(url, "What is 17*23+5?", "symbolic", replies)
    assert replies[0].json()["choices"][0]["message"]["content"] == "396"
    assert state.solvers.live_workers >= 1


def test_a_hard_solve_times_out_in_its_worker_while_health_answers(
    served: tuple[str, Any],
) -> None:
    url, _ = served
    gaps, reply = _health_gaps_while(url, HARD, "symbolic")
    assert reply.status_code < 500, reply.text
    assert len(gaps) >= 5 and max(gaps) < 1.0, gaps


def test_a_long_run_of_question_marks_does_not_block_health(served: tuple[str, Any]) -> None:
    # issue 12: 30,000 characters to apportion-auto blocked /healthz for 49 s (a quadratic
    # pattern in tools/logic.py, run on the server's thread, holding the interpreter lock)
    url, _ = served
    for model in ("symbolic", "apportion-auto"):
        gaps, reply = _health_gaps_while(url, "?" * 30_000 + "x", model)
        assert reply.status_code < 500, reply.text
        assert max(gaps) < 1.0, (model, gaps)


def test_the_servers_solver_processes_stop_with_it(tmp_path: Path) -> None:
    core = fake_core(tmp_path)
    app = create_app(core.settings, engine=core)
    with live_server(app) as url:
        replies: list[httpx.Response] = []
        _ask(url, "What is 17*23+5?", "symbolic", replies)
        state = app.state.apportion
        assert state.solvers.live_workers >= 1
    assert state.solvers.live_workers == 0  # they once outlived the server
