"""Persistent solver workers: same answers as in process, hard timeouts that kill and replace the
worker, no solver work on the caller's threads, and a timeout that is a declined attempt."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from apportion.ledger import Ledger
from apportion.strategies.base import RunContext
from apportion.strategies.symbolic import Symbolic
from apportion.tools.results import SolverResult
from apportion.tools.solver_worker import SolverWorkers
from apportion.types import Query

# Accepted by the parser (degree 1000 is within its limits), but SymPy needs far over 20 s.
HARD = "Solve (x+1)^1000 = 2"


@pytest.fixture(scope="module")
def workers() -> Iterator[SolverWorkers]:
    # forkserver, as in a server (which always has threads); one worker start for the module
    with SolverWorkers(max_workers=2, start_method="forkserver") as pool:
        yield pool


def _no_engine(model_id: str) -> object:
    raise AssertionError("the solver path must not load a model")


def _context(workers: SolverWorkers | None, *, timeout_s: float = 5.0) -> RunContext:
    return RunContext.over(
        engine_for=_no_engine,  # type: ignore[arg-type]
        default_model="none",
        ledger=Ledger(),
        solver_timeout_s=timeout_s,
        solvers=workers,
    )


@pytest.mark.parametrize(
    ("question", "tool", "answer", "error"),
    [
        ("What is 17*23+5?", "sympy", "396", None),
        ("If 6x + 72 = 174, what is x?", "sympy", "x = 17", None),
        ("not ( True ) and ( True ) is", "z3", "False", None),
        ("What is 1/0?", "sympy", None, "undefined: division by zero"),
        ("Who wrote Hamlet?", "sympy", None, "no_math"),
        ("2 +* 3", "sympy", None, "parse_error: expected a number, variable or '(', got '*' at 3"),
    ],
)
def test_workers_answer_as_the_in_process_path_does(
    workers: SolverWorkers, question: str, tool: str, answer: str | None, error: str | None
) -> None:
    in_worker = _context(workers)
    in_process = _context(None)
    got, expected = in_worker.solve(question), in_process.solve(question)
    assert (got.answer, got.error) == (expected.answer, expected.error) == (answer, error)
    # charged once, as the tool that ran
    assert [(c.kind, c.name) for c in in_worker.ledger.charges] == [("tool", tool)]
    assert [(c.kind, c.name) for c in in_process.ledger.charges] == [("tool", tool)]


def test_a_warm_call_is_a_round_trip_not_an_import(workers: SolverWorkers) -> None:
    workers.solve("What is 2+2?", timeout_s=60)  # the worker is up
    walls = sorted(workers.solve("What is 17*23+5?", timeout_s=5).result.wall_s for _ in range(5))
    assert walls[2] < 0.25, walls  # a SymPy import alone is ~0.5 s


def test_timeout_kills_the_worker_and_the_next_call_gets_a_fresh_one(
    workers: SolverWorkers,
) -> None:
    workers.solve("What is 2+2?", timeout_s=60)
    started, cpu_started = time.perf_counter(), time.thread_time()
    hard = workers.solve(HARD, timeout_s=0.5)
    elapsed, caller_cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    assert hard.result.error == "timeout" and not hard.result.ok
    assert 0.5 <= elapsed < 3.0
    assert hard.result.cpu_s > 0.1  # the worker's CPU, read before it was killed
    assert caller_cpu < 0.2  # the work ran in the worker, not on this thread
    assert workers.solve("What is 2+2?", timeout_s=60).result.answer == "4"


def test_a_worker_that_dies_is_reported_and_replaced(workers: SolverWorkers) -> None:
    workers.solve("What is 2+2?", timeout_s=60)
    for worker in list(workers._all):
        worker.process.kill()
        worker.process.join()
    assert workers.solve("What is 3+3?", timeout_s=60).result.error == "crashed"
    assert workers.solve("What is 3+3?", timeout_s=60).result.answer == "6"


def test_concurrent_callers_share_the_workers(workers: SolverWorkers) -> None:
    questions = [f"What is {n}*{n}?" for n in range(2, 10)]
    answers: dict[str, str | None] = {}

    def ask(question: str) -> None:
        answers[question] = workers.solve(question, timeout_s=60).result.answer

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == {f"What is {n}*{n}?": str(n * n) for n in range(2, 10)}
    assert workers.live_workers <= workers.max_workers


def test_a_solver_timeout_is_a_declined_attempt_never_a_crash(workers: SolverWorkers) -> None:
    for pool in (workers, None):
        ctx = _context(pool, timeout_s=0.5)
        attempt = Symbolic().run(Query(HARD), ctx)
        assert attempt.answer is None and attempt.confidence == 0.0
        assert attempt.error is not None and attempt.error.startswith("solver: timeout")
        assert len(ctx.ledger.charges) == 1  # the time it took is still charged


def test_close_ends_every_worker() -> None:
    pool = SolverWorkers(max_workers=1)
    assert pool.solve("What is 2+2?", timeout_s=60).result == SolverResult(
        True, "4", "2 + 2", None, pytest.approx(0, abs=60), pytest.approx(0, abs=60)
    )
    (worker,) = pool._all
    pool.close()
    assert not worker.process.is_alive()
    assert pool.solve("What is 2+2?", timeout_s=1).result.error == "crashed"
    assert worker.process not in multiprocessing.active_children()


def test_a_call_asks_only_the_built_ins_it_names_in_their_order(workers: SolverWorkers) -> None:
    """The solver registry (tools/solvers.py) sends a run of built-ins in one round trip;
    the worker asks exactly those, in that order, and names the one that answered."""
    formula = "not ( True ) and ( True ) is"
    assert workers.solve(formula, timeout_s=60, solvers=("z3",)).tool == "z3"
    only_sympy = workers.solve(formula, timeout_s=60, solvers=("sympy",))
    assert (only_sympy.tool, only_sympy.result.error) == ("sympy", "no_math")
    sympy_first = workers.solve("What is 17*23+5?", timeout_s=60, solvers=("sympy", "z3"))
    assert (sympy_first.tool, sympy_first.result.answer) == ("sympy", "396")
    declined = workers.solve("What is 17*23+5?", timeout_s=60, solvers=("z3",))
    assert (declined.tool, declined.result.error) == ("z3", "no_logic")
    with pytest.raises(ValueError, match="built-in solvers"):
        workers.solve("What is 2+2?", timeout_s=60, solvers=("factorial",))
