"""Real servers for tests: free loopback ports and llama-cpp-python's own OpenAI-compatible
server (the reference peer for the HTTP engine and the remote-engine route)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server on a fixed loopback port, which a test may
    stop and start again (a remote engine going down and coming back)."""

    def __init__(self, model_path: Path, port: int | None = None) -> None:
        pytest.importorskip("llama_cpp.server", reason="needs the `server` extra")
        self.model_path = model_path
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024",
                "--n_threads", "1", "--verbose", "False",
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
