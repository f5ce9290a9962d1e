"""Real servers for tests: free loopback ports and llama-cpp-python's own OpenAI-compatible
server (the reference peer for the HTTP engine and the remote-engine route)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server on a fixed loopback port, which a test may
    stop and start again (a remote engine going down and coming back). It starts through
    apportion.engines.llamacpp_server, which keeps it off llama.cpp's AMX path where that
    crashes."""

    def __init__(self, model_path: Path, port: int | None = None) -> None:
        pytest.importorskip("llama_cpp.server", reason="needs the `server` extra")
        self.model_path = model_path
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "apportion.engines.llamacpp_server",
                "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", "1024", "--n_threads", "1", "--verbose", "False",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self._proc = proc
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                pytest.fail(f"llama_cpp.server exited: {err}")
            try:
                if httpx.get(f"{self.base}/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"llama_cpp.server did not start in {timeout_s:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def llama_cpp_server(model_path: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on a free port; yields its /v1 URL."""
    server = LlamaCppServer(model_path)
    server.start()
    try:
        yield server.base
    finally:
        server.stop()


def crash(proc: subprocess.Popen[bytes]) -> None:
    """Kill a `serve_process` server as a crash would: the supervisor and the server in it at
    once, with no graceful shutdown (killing the supervisor alone lets the server finish its
    streams cleanly)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def env_with(*sites: Path, home: Path) -> dict[str, str]:
    """This environment, with `sites` on PYTHONPATH and `home` as APPORTION_HOME."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, *map(str, sites)]),
        "APPORTION_HOME": str(home),
        "APPORTION_THREADS": os.environ.get("APPORTION_THREADS", "1"),
    }


@contextmanager
def serve_process(
    *args: str,
    start_s: float = 180.0,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The real `apportion serve` (the console script pip wrote, so through its supervisor) on
    a free port, with `args` (and `env`); yields its base URL and the process. Its stderr goes
    to `log`, else to a pipe that stays readable after it is stopped (SIGTERM) at the end.
    A test may kill the process itself, as a crashed server."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("apportion")), "serve", "--port", str(port)]
    sink = log.open("wb") if log is not None else subprocess.PIPE
    # a session of its own, so that `crash` can take down the supervisor and the server at once
    proc = subprocess.Popen(
        [*command, *args], stdout=subprocess.DEVNULL, stderr=sink, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def said() -> str:
        if log is not None:
            return log.read_text(errors="replace")
        return proc.stderr.read().decode() if proc.stderr else ""

    try:
        deadline = time.monotonic() + start_s
        while True:
            assert proc.poll() is None, said()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve did not start: {said()}"
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        if log is not None:
            sink.close()  # type: ignore[union-attr]


class PostgresServer:
    """A throwaway PostgreSQL server: `initdb` into a temporary folder and `pg_ctl start` on a
    free loopback port, as an unprivileged user when this runs as root (initdb refuses root);
    stopped and its folder removed at the end."""

    def __init__(self) -> None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if initdb is None or pg_ctl is None:
            for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
                initdb, pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
                break
        if initdb is None or pg_ctl is None or not Path(initdb).exists():
            pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self._pg_ctl = pg_ctl
        # a folder of its own under /tmp (pytest's are private to root, and initdb runs as
        # someone else when this runs as root)
        root = Path(tempfile.mkdtemp(prefix="apportion-pg-"))
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            self._as = ["runuser", "-u", "nobody", "--"]
        log = root / "postgres.log"
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run([*self._as, *cmd], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{cmd[0]} failed: {proc.stderr[-2000:]}")

    def stop(self) -> None:
        subprocess.run([*self._as, self._pg_ctl, "-D", str(self.data), "-m", "immediate",
                        "stop"], capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


class LoopbackChatServer:
    """A real HTTP server on loopback for /v1/chat/completions whose replies come from a
    script (the last reply repeats); it keeps each request's JSON body. A subclass says how
    a reply is written: `respond(reply, body)` → (status, content type, payload, headers)."""

    def __init__(self, script: Sequence[Any]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                reply = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                status, ctype, payload, headers = owner.respond(reply, body)
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, reply: Any, body: dict[str, Any]) -> tuple[int, str, str, dict[str, str]]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sse(chunks: Sequence[dict[str, Any]], *, done: bool = True) -> str:
    """Server-sent events of these chunks, then [DONE] unless `done` is false."""
    events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return events + ("data: [DONE]\n\n" if done else "")
