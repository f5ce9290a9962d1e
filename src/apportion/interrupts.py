"""One interrupt that arrives twice: the rule the `apportion` command's child (supervise.py)
and the server's process (server/process.py) share. Standard library only: the supervisor
imports it before it forks."""

from __future__ import annotations

import time
from collections.abc import Callable

# A SIGINT this soon after the last one is the same interrupt arriving twice.
DUPLICATE_INTERRUPT_S = 1.0


def duplicate_interrupts(
    window_s: float = DUPLICATE_INTERRUPT_S, clock: Callable[[], float] = time.monotonic
) -> Callable[[], bool]:
    """A check to call on each SIGINT: whether it came within `window_s` of the last, and is
    that one's copy. A SIGINT sent to the whole process group (`kill -INT -PGID`, a test
    harness, some process managers) reaches the child directly and the parent too, which
    cannot tell it from one sent to itself alone and passes it on. A second Ctrl-C a moment
    later is not a copy."""
    last: list[float] = []

    def is_copy() -> bool:
        now = clock()
        if last and now - last[0] < window_s:
            return True
        last[:] = [now]
        return False

    return is_copy
