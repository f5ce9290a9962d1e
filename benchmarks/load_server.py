"""Load test for `apportion serve`: N concurrent clients x M requests each, per route.

Routes: `symbolic` (arithmetic through apportion-auto: the solver, no model) and `direct`
(`model="direct"` on the server's default model, small max_tokens). Each route runs as its own
phase; every client sends its M requests one after another. Bounded in count (N x M) and time
(--max-seconds per phase; requests not sent by then count as lost).

    apportion serve --model smollm2-135m --queue-depth 64 &
    python benchmarks/load_server.py --clients 50 --requests 4

Reports, per route: p50/p95 latency of successful requests, requests per second, HTTP errors
by status (a full queue's 429s among them), wrong answers (the solver's must be exact), and
lost requests (no response at all: connection errors, timeouts, never sent).

Only loopback servers are accepted: this tool must not be pointed at anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

ROUTES = ("symbolic", "direct")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Phase:
    route: str
    planned: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    wrong: int = 0
    lost: int = 0
    lost_why: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    completion_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, round(q * (len(lat) - 1)))], 4)

        return {
            "route": self.route,
            "requests": self.planned,
            "ok": ok,
            "errors": {str(k): v for k, v in sorted(self.statuses.items()) if k != 200},
            "wrong_answers": self.wrong,
            "lost": self.lost,
            "lost_why": dict(self.lost_why),
            "p50_s": pct(0.50),
            "p95_s": pct(0.95),
            "mean_s": round(statistics.fmean(lat), 4) if lat else None,
            "req_per_s": round(ok / self.wall_s, 2) if self.wall_s else None,
            "wall_s": round(self.wall_s, 2),
            "completion_tokens": self.completion_tokens,
        }


def request_for(route: str, client: int, i: int, max_tokens: int) -> tuple[dict[str, Any], str]:
    """The request body and, for the solver, the exact answer expected."""
    if route == "symbolic":
        a, b, c = 11 + client, 7 + i, client * 4 + i
        question = f"What is {a}*{b}+{c}?"
        return (
            {"model": "apportion-auto", "messages": [{"role": "user", "content": question}]},
            str(a * b + c),
        )
    return (
        {
            "model": "direct",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"Say hello to visitor number {client}."}],
        },
        "",
    )


async def run_phase(
    url: str,
    route: str,
    *,
    clients: int,
    requests: int,
    max_tokens: int,
    timeout_s: float,
    max_seconds: float,
    api_key: str | None,
) -> Phase:
    phase = Phase(route, clients * requests)
    deadline = time.monotonic() + max_seconds
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout_s, limits=limits, headers=headers
    ) as http:

        async def client(n: int) -> None:
            for i in range(requests):
                if time.monotonic() >= deadline:
                    phase.lost += requests - i
                    phase.lost_why["not sent: time budget"] += requests - i
                    return
                body, expected = request_for(route, n, i, max_tokens)
                started = time.perf_counter()
                try:
                    resp = await http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as e:
                    phase.lost += 1
                    phase.lost_why[type(e).__name__] += 1
                    continue
                elapsed = time.perf_counter() - started
                phase.statuses[resp.status_code] += 1
                if resp.status_code != 200:
                    continue
                data = resp.json()
                content = data["choices"][0]["message"]["content"]
                phase.completion_tokens += int(data["usage"]["completion_tokens"])
                if (expected and content != expected) or (not expected and not content):
                    phase.wrong += 1
                phase.latencies.append(elapsed)

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(clients)))
        phase.wall_s = time.monotonic() - started
    return phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="N concurrent clients x M requests against a local `apportion serve`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (N)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (M)")
    parser.add_argument(
        "--routes", default=",".join(ROUTES), help=f"comma-separated, from {', '.join(ROUTES)}"
    )
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens on the direct route")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time budget per route")
    parser.add_argument("--api-key", default=None, help="bearer key, if the server needs one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    host = urlparse(args.url).hostname or ""
    if host not in LOOPBACK:
        parser.error(f"refusing to load-test {host!r}: only 127.0.0.1/localhost")
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if bad := [r for r in routes if r not in ROUTES]:
        parser.error(f"unknown route(s) {bad}; choose from {', '.join(ROUTES)}")
    if min(args.clients, args.requests, args.max_tokens) < 1:
        parser.error("--clients, --requests and --max-tokens must be at least 1")

    results = []
    for route in routes:
        phase = asyncio.run(
            run_phase(
                args.url, route, clients=args.clients, requests=args.requests,
                max_tokens=args.max_tokens, timeout_s=args.timeout,
                max_seconds=args.max_seconds, api_key=args.api_key,
            )
        )  # fmt: skip
        results.append(phase.summary())
    if args.json:
        print(json.dumps({"clients": args.clients, "requests": args.requests, "routes": results}))
    else:
        print(f"{args.clients} clients x {args.requests} requests against {args.url}")
        for r in results:
            print(
                f"{r['route']:>9}: {r['ok']}/{r['requests']} ok | p50 {r['p50_s']} s | "
                f"p95 {r['p95_s']} s | {r['req_per_s']} req/s | errors {r['errors'] or 0} | "
                f"wrong {r['wrong_answers']} | lost {r['lost']} {r['lost_why'] or ''}"
            )
    failed = any(r["lost"] or r["wrong_answers"] or r["errors"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
