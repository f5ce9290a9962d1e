"""Exact answers (Z3 for a boolean formula, SymPy for math) in persistent worker processes.

A server sets `RunContext.solvers` to a `SolverWorkers`: every call of the built-in solvers
(`tools/solvers.py`) is then a round trip over a pipe to a process with SymPy and Z3 imported
and warmed (about a millisecond), never work on the server's own threads, so one hard question
cannot hold the interpreter lock that other requests need. A call names the built-ins to ask,
in order; the worker answers with the first that does not decline. A call that runs past its
timeout gets a "timeout" result at once and its worker is killed; the next call starts a fresh
one. Workers start with the "forkserver" method when the caller has threads (a server always
does), since forking a threaded process is unsafe.

Without it (`solvers=None`, the CLI), the built-ins run Z3 in the calling process (its parser is
linear and capped) and SymPy in a child forked per call (`solver.solve`): for a one-shot command
that is cheaper than starting a worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from apportion.tools import solver
from apportion.tools.logic import evaluate_boolean
from apportion.tools.math_extract import find_math
from apportion.tools.results import SolverResult
from apportion.tools.solvers import BUILTIN_SOLVERS, DECLINING_ERRORS, ExactAnswer

__all__ = ["ExactAnswer", "SolverWorkers"]

# A worker answers this many calls, then is replaced, so SymPy's caches and any leak stay
# bounded in a long-running server.
MAX_CALLS_PER_WORKER = 500
DEFAULT_MAX_WORKERS = max(2, min(8, os.cpu_count() or 2))


# --------------------------------------------------------------------------- in the worker


def _z3(question: str) -> dict[str, Any]:
    logic = evaluate_boolean(question)
    return {"ok": logic.ok, "answer": logic.answer, "expression": logic.expression,
            "error": logic.error}  # fmt: skip


def _sympy(question: str) -> dict[str, Any]:
    """What `solver.solve` does, with SymPy run right here rather than in a further child."""
    found = find_math(question)
    if found is None:
        return {"ok": False, "answer": None, "expression": None, "error": "no_math"}
    return solver._work(found.text, found.target, found.mode)


# What each built-in solver (tools/solvers.py) does inside a worker.
_IN_WORKER: dict[str, Callable[[str], dict[str, Any]]] = {"z3": _z3, "sympy": _sympy}


def _answer(question: str, names: Sequence[str] = tuple(BUILTIN_SOLVERS)) -> dict[str, Any]:
    """One call's work inside a worker: the named built-ins, in order, until one does not
    decline (the last one's result if all do)."""
    out: dict[str, Any] = {}
    for name in names:
        out = {"tool": name, **_IN_WORKER[name](question)}
        if out.get("error") not in DECLINING_ERRORS:
            break
    return out


def _worker_main(conn: Connection) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Warm SymPy (its first solve imports and caches a lot) on fixed inputs, then cap the
        # address space so a runaway expansion ends in MemoryError instead of swapping.
        _answer("2x + 3 = 11")
        _answer("sqrt(2)/3 + 17*23")
        _answer("True and not False")
        solver._limit_memory()
        conn.send("ready")
        while True:
            try:
                question, names = conn.recv()
            except EOFError:
                return  # the parent closed its end (or died): nothing more to do
            cpu0 = time.process_time()
            try:
                out = _answer(question, names)
            except MemoryError:
                out = {"tool": "sympy", "ok": False, "error": "resource_limit"}
            except Exception as exc:  # report, never die on a question
                out = {"tool": "sympy", "ok": False, "error": f"unsupported: {type(exc).__name__}"}
            out["cpu_s"] = time.process_time() - cpu0
            conn.send(out)
    finally:
        conn.close()


# --------------------------------------------------------------------------- in the caller


@dataclass(eq=False)  # compared and hashed by identity: workers live in a set
class _Worker:
    process: BaseProcess
    conn: Connection
    calls: int = 0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


def _kill_all(workers: set[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class SolverWorkers:
    """A pool of up to `max_workers` persistent solver processes, started on first need.

    Thread-safe: each call takes an idle worker, or starts one, or waits for one to come back
    (the wait counts against its timeout). `close()` kills them all; so does garbage collection
    of the pool and interpreter exit."""

    def __init__(
        self, *, max_workers: int = DEFAULT_MAX_WORKERS, start_method: str | None = None
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._start_method = start_method
        self._lock = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    @property
    def live_workers(self) -> int:
        with self._lock:
            return len(self._all)

    def solve(
        self,
        question: str,
        *,
        timeout_s: float,
        solvers: Sequence[str] = tuple(BUILTIN_SOLVERS),
    ) -> ExactAnswer:
        """Answer `question` in a worker within `timeout_s` seconds (worker start-up aside),
        asking the named built-in `solvers` in order; never raises for bad input, a timeout or
        a worker that dies."""
        names = tuple(solvers)
        if not names or any(name not in _IN_WORKER for name in names):
            raise ValueError(f"workers run the built-in solvers {list(_IN_WORKER)}, not {names}")
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        out = self._call(question, names, max(timeout_s, 0.0))
        result = SolverResult.from_child(out, wall0=wall0, cpu0=cpu0)
        return ExactAnswer(str(out.get("tool", names[-1])), result)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        for worker in idle:
            self._discard(worker)

    def __enter__(self) -> SolverWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _call(self, question: str, names: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        worker = self._take(deadline)
        if worker is None:  # every worker stayed busy until the deadline, or the pool closed
            return {"ok": False, "error": "crashed" if self._closed else "timeout"}
        if isinstance(worker, str):
            return {"ok": False, "error": worker}
        try:
            cpu_before = solver._proc_cpu(worker.process.pid)
            worker.conn.send((question, names))
            if not worker.conn.poll(max(deadline - time.monotonic(), 0.0)):
                cpu = solver._proc_cpu(worker.process.pid) - cpu_before
                self._discard(worker)
                return {"ok": False, "error": "timeout", "cpu_s": max(cpu, 0.0)}
            out: dict[str, Any] = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._discard(worker)
            return {"ok": False, "error": "crashed"}
        worker.calls += 1
        if out.get("error") == "resource_limit" or worker.calls >= MAX_CALLS_PER_WORKER:
            self._discard(worker)  # a MemoryError may leave it half-broken; start afresh
        else:
            self._give_back(worker)
        return out

    def _take(self, deadline: float) -> _Worker | str | None:
        """An idle worker, a new one, or None if none frees up before `deadline`. A string
        is the error when a new worker could not start."""
        with self._lock:
            while True:
                if self._closed:
                    return None
                if self._idle:
                    return self._idle.pop()
                if len(self._all) + self._starting < self.max_workers:
                    self._starting += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
        try:
            return self._start()
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify_all()

    def _start(self) -> _Worker | str:
        ctx = solver._context(self._start_method)
        if ctx.get_start_method() == "fork":
            solver._warm_parent()  # so the forked worker starts warm
        parent_end, child_end = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_worker_main, args=(child_end,), daemon=True)
        try:
            process.start()
        except (AssertionError, OSError):  # e.g. called from a daemonic process, or no pids
            parent_end.close()
            child_end.close()
            return "crashed"
        child_end.close()
        worker = _Worker(process, parent_end)
        try:
            ready = parent_end.poll(solver.STARTUP_TIMEOUT_S) and parent_end.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            worker.kill()
            return "crashed"
        with self._lock:
            if self._closed:
                worker.kill()
                return "crashed"
            self._all.add(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                self._lock.notify_all()
                return
        self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            self._lock.notify_all()
