"""`bench --workers N`: N processes, each with its own copy of the local model and
`threads / N` threads, answering items that the parent hands out one at a time.

A worker is `python -m apportion.bench.workers`: its first stdin line says how to build its
runtime (the settings, the policy, the store, the completion cache), and each further line is
one item × strategy, answered with one result line on stdout (anything else the process
prints goes to stderr). The parent keeps the order: `WorkerPool.submit` gives a future per
task, and bench writes the rows in the order a sequential run writes them.

Why processes: llama.cpp serves one call at a time per loaded model, and on a small machine a
model per core can read more tokens per second than one model on all cores (see the README's
Benchmarks section for what this machine measured).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from apportion.bench.datasets import BenchItem
from apportion.errors import ApportionError, UsageError
from apportion.traces import ItemResult


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker builds its runtime: the settings (threads already divided), the policy
    file, the store the run searches, the completion cache, and what each item runs with."""

    settings: dict[str, Any]
    policy: str | None
    store: str | None
    cache: str | None
    model: str
    seed: int
    max_tokens: int | None


class WorkerPool:
    """`workers` worker processes; each runs one task at a time, taken from a shared queue."""

    def __init__(self, setup: WorkerSetup, workers: int) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self._tasks: queue.Queue[tuple[BenchItem, str, Future[ItemResult]] | None] = queue.Queue()
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        # Each worker's completion-cache hits and misses so far (it reads the same file).
        self._cache_counts: dict[int, tuple[int, int]] = {}
        line = json.dumps(asdict(setup))
        for _ in range(workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "apportion.bench.workers"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            self._procs.append(proc)
            thread = threading.Thread(target=self._feed, args=(proc,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, item: BenchItem, strategy: str) -> Future[ItemResult]:
        future: Future[ItemResult] = Future()
        self._tasks.put((item, strategy, future))
        return future

    def _feed(self, proc: subprocess.Popen[str]) -> None:
        """One worker's thread: hand it a task, wait for its answer, and again."""
        assert proc.stdin is not None and proc.stdout is not None
        while True:
            task = self._tasks.get()
            if task is None:
                return
            item, strategy, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                proc.stdin.write(json.dumps({"item": item.to_json(), "strategy": strategy}) + "\n")
                answer = proc.stdout.readline()
                if not answer:
                    raise ApportionError(
                        f"a bench worker exited (code {proc.wait()})", "see its messages above"
                    )
                reply = json.loads(answer)
                self._cache_counts[proc.pid] = (reply["cache_hits"], reply["cache_misses"])
                future.set_result(ItemResult.from_json(reply["result"]))
            except BaseException as e:  # the future carries it to the parent's loop
                future.set_exception(e)
                return

    @property
    def cache_counts(self) -> tuple[int, int]:
        """The completion-cache hits and misses of all the workers' calls so far."""
        counts = list(self._cache_counts.values())
        return sum(h for h, _ in counts), sum(m for _, m in counts)

    def close(self) -> None:
        """Stop the workers: tasks not started are dropped, running ones end with them."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[2].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def threads_each(total: int | None, workers: int) -> int:
    """Each worker's share of the threads (`total`; None: the cores this process may use)."""
    cores = total or len(os.sched_getaffinity(0))
    return max(1, cores // workers)


def _serve(lines: Sequence[str] | IO[str], out: IO[str]) -> None:
    from apportion.bench.cache import SqliteCompletionCache
    from apportion.bench.runner import run_one
    from apportion.config import Settings
    from apportion.runtime import Runtime
    from apportion.tools.store import open_store

    stream = iter(lines)
    setup = WorkerSetup(**json.loads(next(stream)))
    settings = Settings.model_validate(setup.settings)
    store = open_store(setup.store) if setup.store else None
    runtime = Runtime.from_settings(settings, policy=setup.policy, documents="given", store=store)
    cache = SqliteCompletionCache(Path(setup.cache)) if setup.cache else None
    try:
        for line in stream:
            task = json.loads(line)
            raw = task["item"]
            item = BenchItem(
                id=raw["id"], question=raw["question"], answer=raw["answer"], kind=raw["kind"],
                dataset=raw["dataset"], choices=tuple(raw.get("choices") or ()),
                aliases=tuple(raw.get("aliases") or ()),
            )  # fmt: skip
            result = run_one(
                runtime, item, task["strategy"], model=setup.model, seed=setup.seed,
                max_tokens=setup.max_tokens, cache=cache,
            )  # fmt: skip
            hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
            reply = {"result": result.to_json(), "cache_hits": hits, "cache_misses": misses}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        runtime.close()
        if cache is not None:
            cache.close()
        if store is not None:
            store.close()


def main() -> None:
    # results go to the real stdout; whatever else is printed goes to stderr
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _serve(sys.stdin, out)


if __name__ == "__main__":
    main()
