"""The `apportion` command's entry point: the CLI runs in a child process, so that a crash of
native code (llama.cpp) is reported in one line instead of a silent exit 139.

A segfault in a C library cannot be caught inside the process it kills, so the command forks
before importing anything heavy: the child runs the CLI, the parent waits. The child keeps the
terminal, its standard streams and its process group, so a Ctrl-C at the terminal reaches it
directly (the parent does not pass that one on again); signals sent to the parent by another
process (`kill`, a service manager) are passed on. The parent exits with the child's status,
or with 128 + the signal's number after printing what happened and what to try.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from apportion.interrupts import DUPLICATE_INTERRUPT_S, duplicate_interrupts

# Signals the parent passes on to the child when another process sends them.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
# si_code of a signal the kernel raised itself, as a terminal's Ctrl-C is: the terminal sent
# it to the whole foreground process group, the child included.
_SI_KERNEL = 0x80
_PR_SET_PDEATHSIG = 1


def crash_message(signum: int) -> str:
    """One line: what killed the command, and what to try."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGKILL:
        return (
            f"apportion: the process was killed ({name}), most likely by the kernel for "
            "running out of memory; try a smaller model (--model) or context (--n-ctx)"
        )
    return (
        f"apportion: the model process crashed ({name}) inside native code (llama.cpp); "
        'try APPORTION_EXTRA_BUFFERS=off (or [llamacpp] extra_buffers = "off" in the config), '
        "and if it still crashes, report it with the output of `apportion --version`"
    )


def wait_for_child(pid: int) -> int:
    """Wait for the child, passing on signals other processes send us; its exit status."""
    watched = {*FORWARDED, signal.SIGCHLD}
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 1
        if done:
            return status
        info = signal.sigtimedwait(watched, 0.5)
        # Only a signal we watch for is passed on: after a SIGSTOP/SIGCONT of this process
        # (under nohup, at least) sigtimedwait has returned a siginfo with a garbage number.
        if info is None or info.si_signo not in FORWARDED:
            continue
        if info.si_code != _SI_KERNEL:
            with contextlib.suppress(OSError):
                os.kill(pid, info.si_signo)


def exit_code(status: int, report: Callable[[str], None]) -> int:
    """The shell's exit code for a wait status, reporting a death by signal."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            report(crash_message(signum))
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def interrupt_once(
    window_s: float = DUPLICATE_INTERRUPT_S, clock: Callable[[], float] = time.monotonic
) -> Callable[[int, Any], None]:
    """The child's SIGINT handler: KeyboardInterrupt, as Python's own, except for the copy of
    a SIGINT (`duplicate_interrupts`): without this, the copy lands while the child is saving
    its work after the first and cuts that short."""
    is_copy = duplicate_interrupts(window_s, clock)

    def handler(signum: int, frame: Any) -> None:
        if not is_copy():
            raise KeyboardInterrupt

    return handler


def run_cli() -> None:
    from apportion.cli import app

    app()


def _die_with_parent() -> None:
    """The child gets SIGTERM if the parent is killed, rather than run on orphaned."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def main() -> None:
    if not hasattr(os, "fork") or sys.platform != "linux":
        run_cli()
        return
    # Blocked before the fork, so no signal slips between the fork and the wait; the child
    # unblocks them at once.
    blocked = {*FORWARDED, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, interrupt_once())
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _die_with_parent()
        run_cli()
        return
    status = wait_for_child(pid)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sys.exit(exit_code(status, report))
