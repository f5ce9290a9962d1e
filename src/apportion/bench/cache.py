"""A persistent completion cache: re-runs and new policies replay instead of regenerating.

Keyed by (model fingerprint, prompt, sampling parameters, seed) — see
`engines.layers.cache_key`. The model fingerprint is its weights' sha256, so a different
quantisation never replays another's text. Each entry is committed as soon as it is written
(SQLite WAL), so a kill -9 loses at most the call in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from types import TracebackType

from apportion.private_files import private_file
from apportion.types import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


class SqliteCompletionCache:
    """Implements `engines.layers.CompletionCache` over one SQLite file."""

    def __init__(self, path: Path) -> None:
        # 0600 in 0700 folders (SQLite gives its -wal and -shm files the database's mode)
        private_file(path, sqlite=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self.hits = 0
        self.misses = 0
        # bench --concurrency calls from several threads; one connection, one at a time
        self._lock = threading.Lock()

    def count(self, hits: int, misses: int) -> None:
        """Add lookups made on this file by other processes (bench's workers), so that the
        run's totals count every call."""
        with self._lock:
            self.hits += hits
            self.misses += misses

    def get(self, key: str) -> list[tuple[Completion, float]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM completions WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return [
            (
                Completion(
                    text=e["text"],
                    prompt_tokens=e["prompt_tokens"],
                    completion_tokens=e["completion_tokens"],
                    finish_reason=e["finish_reason"],
                    token_logprobs=tuple(e["token_logprobs"])
                    if e["token_logprobs"] is not None
                    else None,
                    # as the call that filled the cache read it (entries before this field: 0)
                    cached_tokens=int(e.get("cached_tokens", 0)),
                    reasoning=str(e.get("reasoning", "")),
                ),
                float(e["wall_s"]),
            )
            for e in json.loads(row[0])
        ]

    def put(self, key: str, value: list[tuple[Completion, float]]) -> None:
        payload = json.dumps(
            [
                {
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "finish_reason": c.finish_reason,
                    "token_logprobs": list(c.token_logprobs) if c.token_logprobs else None,
                    "cached_tokens": c.cached_tokens,
                    "wall_s": wall_s,
                    **({"reasoning": c.reasoning} if c.reasoning else {}),
                }
                for c, wall_s in value
            ]
        )
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions (key, value) VALUES (?, ?)", (key, payload)
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteCompletionCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
