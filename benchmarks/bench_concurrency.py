"""How much `apportion bench --concurrency N` gains against model servers that answer calls in
parallel: here, a pool of R llama-cpp-python servers (one thread each) on this machine.

Each configuration runs the same bench into a fresh completion cache (so every call reaches a
server) and reports its wall time, and whether its rows (answers, tokens, FLOPs) are those of
the sequential run.

    python benchmarks/bench_concurrency.py --limit 16 --replicas 2

Needs the `server` extra and the smollm2-135m weights (`apportion models pull smollm2-135m`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from apportion.config import Settings
from apportion.engines import catalogue

SAME = ("item_id", "strategy", "answer", "prompt_tokens", "completion_tokens", "flops")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(model: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apportion.engines.llamacpp_server", "--model", str(model),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
         "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def run(work: Path, name: str, config: Path, args: argparse.Namespace, n: int) -> float:
    out = work / name
    cmd = [sys.executable, "-m", "apportion.cli", "bench", "--dataset", args.dataset,
           "--limit", str(args.limit), "--strategies", args.strategies, "--model", "pool",
           "--config", str(config), "--out", str(out), "--cache", str(work / f"{name}.sqlite"),
           "--concurrency", str(n), "--max-tokens", str(args.max_tokens)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return wall


def rows(path: Path) -> list[dict[str, object]]:
    lines = (path / "results.jsonl").read_text().splitlines()
    return [{k: json.loads(line)[k] for k in SAME} for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--strategies", default="cot")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated N to try")
    args = parser.parse_args()
    model = catalogue.resolve("smollm2-135m", Settings.load().models_dir)
    servers = [start_server(model) for _ in range(args.replicas)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            urls = ", ".join(f'"{url}"' for _, url in servers)
            config = work / "config.toml"
            config.write_text(
                f'[[engines]]\nid = "pool"\nmodel = "smol"\nbase_urls = [{urls}]\n'
                "params = 134.5e6\nn_layers = 30\nd_model = 576\ncontext = 2048\n"
            )
            os.environ.setdefault("APPORTION_HOME", str(work / "home"))
            walls: dict[int, float] = {}
            first: list[dict[str, object]] | None = None
            print(f"{args.replicas} llama_cpp.server replicas (1 thread each), smollm2-135m; "
                  f"{args.dataset} --limit {args.limit}, {args.strategies}")  # fmt: skip
            for n in (int(x) for x in args.concurrency.split(",")):
                walls[n] = run(work, f"c{n}", config, args, n)
                got = rows(work / f"c{n}")
                first = first or got
                same = "identical rows" if got == first else "ROWS DIFFER"
                print(f"--concurrency {n}: {walls[n]:.1f} s "
                      f"({walls[min(walls)] / walls[n]:.2f}x), {same}")  # fmt: skip
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
