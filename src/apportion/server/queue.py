"""The local engine queue: one request at a time on the in-process llama.cpp engines."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from apportion.engines.base import GenerationCancelled
from apportion.server.errors import ApiError


class LocalQueue:
    """One request at a time on the in-process llama.cpp engines, at most `depth` waiting.

    Entered from worker threads at a request's first local model call (so requests that
    never touch a local model never queue), hence threading primitives rather than asyncio's.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._slot = threading.Semaphore(1)
        self._mutex = threading.Lock()
        self._admitted = 0  # running + waiting
        self._mean_hold_s = 1.0  # moving average of how long a request holds the slot
        self._held_since = 0.0

    @property
    def running(self) -> int:
        return min(self._admitted, 1)

    @property
    def waiting(self) -> int:
        return max(self._admitted - 1, 0)

    def retry_after_s(self) -> int:
        """A guess at when a slot frees up: everyone ahead, at the average hold time."""
        return max(1, min(600, math.ceil(self._mean_hold_s * (self.waiting + 1))))

    def enter(
        self,
        cancel: threading.Event,
        deadline: float,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        """Take the slot, waiting for it if need be (`on_wait` is told how many are ahead)."""
        with self._mutex:
            if self._admitted >= 1 + self.depth:
                retry = self.retry_after_s()
                raise ApiError(
                    429,
                    f"the local model is busy: 1 request running and {self.waiting} waiting "
                    f"(the queue holds {self.depth}); retry in about {retry} s",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            ahead = self._admitted
            self._admitted += 1
        try:
            if not self._slot.acquire(blocking=False):
                if on_wait is not None:
                    on_wait(ahead)
                # Poll so that a waiting request notices its client leaving or its deadline.
                while not self._slot.acquire(timeout=0.05):
                    if cancel.is_set():
                        raise GenerationCancelled()
                    if time.monotonic() >= deadline:
                        raise ApiError(504, "timed out waiting for the local model", type="timeout")
        except BaseException:
            with self._mutex:
                self._admitted -= 1
            raise
        self._held_since = time.monotonic()

    def leave(self) -> None:
        held = time.monotonic() - self._held_since
        self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held
        self._slot.release()
        with self._mutex:
            self._admitted -= 1
