"""The `apportion` command runs its work in a child process, so a crash of native code is
reported in one line (it was a silent exit 139), and signals and exit codes pass through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apportion.supervise import crash_message, exit_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the supervisor forks (Linux)")


def supervised(body: str) -> list[str]:
    """A Python command that runs `body` as the supervised CLI."""
    code = (
        "import apportion.supervise as s\n"
        f"def work():\n{''.join('    ' + line + chr(10) for line in body.splitlines())}"
        "s.run_cli = work\n"
        "s.main()\n"
    )
    return [sys.executable, "-c", code]


def test_a_native_crash_is_reported_in_one_line() -> None:
    done = subprocess.run(
        supervised("import ctypes\nctypes.string_at(0)"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 128 + signal.SIGSEGV
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "crashed (SIGSEGV)" in lines[0] and "APPORTION_EXTRA_BUFFERS=off" in lines[0]


def test_exit_codes_and_output_pass_through() -> None:
    done = subprocess.run(
        supervised("print('answer: 42')\nraise SystemExit(3)"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "answer: 42\n", "")


def test_the_apportion_command_is_supervised() -> None:
    # the console script pip wrote beside this Python (a pyenv shim may stand first on PATH)
    script = Path(sys.executable).with_name("apportion")
    assert "apportion.supervise" in script.read_text()
    done = subprocess.run([script, "no-such-command"], capture_output=True, timeout=120)
    assert done.returncode == 2  # the CLI's own usage error, not a crash report
    assert b"crashed" not in done.stderr


def test_a_signal_sent_to_the_command_reaches_the_work(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    body = (
        "import time, pathlib\n"
        "try:\n"
        f"    pathlib.Path({str(ready)!r}).write_text('go')\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('saved', flush=True)\n"
        "    raise SystemExit(130)\n"
    )
    proc = subprocess.Popen(supervised(body), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    os.kill(proc.pid, signal.SIGINT)  # as `kill -INT` or a test harness would: the parent
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert out == "saved\n"


def test_exit_code_reporting() -> None:
    reports: list[str] = []
    assert exit_code(0, reports.append) == 0
    assert exit_code(2 << 8, reports.append) == 2
    assert exit_code(signal.SIGINT, reports.append) == 130 and reports == []  # Ctrl-C: quiet
    assert exit_code(signal.SIGABRT, reports.append) == 134
    assert reports == [crash_message(signal.SIGABRT)]
    assert "out of memory" in crash_message(signal.SIGKILL)


def test_stopping_and_continuing_the_command_does_not_break_it(tmp_path: Path) -> None:
    """kill -STOP / kill -CONT of a command started under nohup once made the supervisor pass
    on a signal number sigtimedwait had garbled, crash with EINVAL, and take the work with it."""
    ready = tmp_path / "ready"
    body = (
        "import time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).write_text('go')\n"
        "time.sleep(3)\n"
        "print('done', flush=True)\n"
    )
    proc = subprocess.Popen(
        ["nohup", *supervised(body)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = [proc.pid, *map(int, children)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(1)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "done\n" and "Traceback" not in err


def test_an_interrupt_that_arrives_twice_at_once_interrupts_once() -> None:
    from apportion.supervise import interrupt_once

    now = [100.0]
    handler = interrupt_once(1.0, clock=lambda: now[0])
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    now[0] += 0.01  # the parent's copy of a SIGINT sent to the whole process group
    handler(signal.SIGINT, None)
    now[0] += 2.0  # a second Ctrl-C, later: interrupts again
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
