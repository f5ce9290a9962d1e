"""API keys for the server: sha256 digests in SQLite, with optional daily FLOP and $ budgets.

A key is 32 random bytes (`ap-` + URL-safe base64), shown once when it is created. Only its
sha256 is stored: a fast hash is enough for a secret with 256 bits of entropy (nothing to
brute-force, unlike a password), and it lets a lookup go straight to the row.

Spending is kept per key and UTC day, so budgets reset at midnight UTC and survive restarts.
Authentication is on as soon as the store holds one active key.

Quotas hold under concurrency through holds: a request opens a hold when it is admitted, raises
it to its worst case before each model call (all it has spent, plus the call's largest possible
cost), and settles it to what it really spent when it ends. Each step is one transaction
(`BEGIN IMMEDIATE`, so two server processes on one file are serialized too), and a hold is
granted only if today's spending, every other live hold and this one fit the key's budget, so
the requests in flight can never spend more than the key has left. A hold expires on its own
(`ttl_s`) if its server dies before settling it.

The file is created 0600 (in a 0700 folder when it makes one; private_files.py): it holds the
digests and who spent what.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apportion.errors import UsageError
from apportion.private_files import private_file

KEY_PREFIX = "ap-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_sha256 TEXT NOT NULL UNIQUE,
    daily_flops REAL,
    daily_usd REAL,
    created REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage (
    key_id INTEGER NOT NULL REFERENCES keys(id),
    day TEXT NOT NULL,
    flops REAL NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES keys(id),
    day TEXT NOT NULL,
    flops REAL NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_by_key ON holds (key_id, day);
"""


def utc_today() -> str:
    return datetime.now(UTC).date().isoformat()


def seconds_until_utc_midnight(now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    daily_flops: float | None
    daily_usd: float | None
    created: float
    revoked: bool


@dataclass(frozen=True)
class DailyUsage:
    day: str
    flops: float = 0.0
    usd: float = 0.0
    requests: int = 0


@dataclass(frozen=True)
class Allowance:
    """What a key may still spend today; None where it has no cap."""

    flops: float | None
    usd: float | None

    @property
    def exhausted(self) -> bool:
        return (self.flops is not None and self.flops <= 0) or (
            self.usd is not None and self.usd <= 0
        )


@dataclass(frozen=True)
class HoldResult:
    """Whether a hold was granted, and what the key has left beside the other live holds
    (what this hold may grow to), with how many of those there are."""

    granted: bool
    available: Allowance
    others: int = 0


def _within(amount: float, available: float | None, cap: float | None) -> bool:
    """`amount` fits in `available` (None: no cap), allowing for the rounding of the sums
    that gave it (a billionth of the cap)."""
    if available is None:
        return True
    return amount <= available + 1e-9 * abs(cap or 0.0)


class KeyStore:
    """Keys and their daily spending in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path, *, today: Callable[[], str] = utc_today) -> None:
        self.path = path
        self._today = today
        private_file(path, sqlite=True)
        # One connection behind a lock: calls are short, and it keeps writes ordered.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- administration ---------------------------------------------------------------------

    def add(
        self, name: str, *, daily_flops: float | None = None, daily_usd: float | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it and the secret, which is not stored and cannot be shown
        again."""
        name = name.strip()
        if not name:
            raise UsageError("a key needs a name")
        for label, value in (("FLOP", daily_flops), ("$", daily_usd)):
            if value is not None and not value > 0:
                raise UsageError(f"the daily {label} budget must be positive, got {value}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        created = time.time()
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO keys (name, key_sha256, daily_flops, daily_usd, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, digest(secret), daily_flops, daily_usd, created),
                )
            except sqlite3.IntegrityError as e:
                raise UsageError(
                    f"a key named {name!r} already exists", "pick another name or revoke it"
                ) from e
        key_id = cur.lastrowid
        assert key_id is not None
        return ApiKey(key_id, name, daily_flops, daily_usd, created, revoked=False), secret

    def revoke(self, name: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE keys SET revoked = 1 WHERE name = ? AND revoked = 0", (name,)
            )
        return cur.rowcount > 0

    def all_keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, daily_flops, daily_usd, created, revoked FROM keys ORDER BY id"
            ).fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    # -- requests ---------------------------------------------------------------------------

    def enabled(self) -> bool:
        """Whether requests must carry a key: true once any active key exists."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM keys WHERE revoked = 0 LIMIT 1").fetchone()
        return row is not None

    def authenticate(self, secret: str) -> ApiKey | None:
        with self._lock:
            r = self._db.execute(
                "SELECT id, name, daily_flops, daily_usd, created FROM keys "
                "WHERE key_sha256 = ? AND revoked = 0",
                (digest(secret),),
            ).fetchone()
        return None if r is None else ApiKey(r[0], r[1], r[2], r[3], r[4], revoked=False)

    def usage(self, key_id: int, day: str | None = None) -> DailyUsage:
        day = day or self._today()
        with self._lock:
            r = self._db.execute(
                "SELECT flops, usd, requests FROM usage WHERE key_id = ? AND day = ?",
                (key_id, day),
            ).fetchone()
        return DailyUsage(day) if r is None else DailyUsage(day, r[0], r[1], r[2])

    def allowance(self, key: ApiKey) -> Allowance:
        """What the key may still spend today, beside the holds of the requests in flight."""
        with self._lock:
            return self._available(key, self._today(), exclude=None)[0]

    # -- holds: reserve at admission, settle at the end (see the module docstring) ------------

    def _available(self, key: ApiKey, day: str, *, exclude: str | None) -> tuple[Allowance, int]:
        """Cap − spent today − live holds of today other than `exclude` (call under the lock),
        and how many such holds there are."""
        spent = self._db.execute(
            "SELECT flops, usd FROM usage WHERE key_id = ? AND day = ?", (key.id, day)
        ).fetchone() or (0.0, 0.0)
        held = self._db.execute(
            "SELECT COALESCE(SUM(flops), 0), COALESCE(SUM(usd), 0), COUNT(*) FROM holds "
            "WHERE key_id = ? AND day = ? AND expires > ? AND id IS NOT ?",
            (key.id, day, time.time(), exclude),
        ).fetchone()
        allowance = Allowance(
            flops=None if key.daily_flops is None else key.daily_flops - spent[0] - held[0],
            usd=None if key.daily_usd is None else key.daily_usd - spent[1] - held[1],
        )
        return allowance, int(held[2])

    def open_hold(self, key: ApiKey, hold_id: str, *, ttl_s: float) -> HoldResult:
        """Admit a request: if the key has anything left beside the other holds, open an empty
        hold named `hold_id` (it expires after `ttl_s` unless raised or settled)."""
        day = self._today()
        with self._lock, self._transaction():
            available, others = self._available(key, day, exclude=hold_id)
            if available.exhausted:
                return HoldResult(False, available, others)
            self._db.execute(
                "INSERT OR REPLACE INTO holds (id, key_id, day, flops, usd, expires) "
                "VALUES (?, ?, ?, 0, 0, ?)",
                (hold_id, key.id, day, time.time() + ttl_s),
            )
        return HoldResult(True, available, others)

    def hold(
        self, key: ApiKey, hold_id: str, *, flops: float, usd: float, ttl_s: float
    ) -> HoldResult:
        """Set the hold to `flops` and `usd` (what the request has spent plus the worst case of
        its next call) if that fits beside today's spending and the other live holds; the
        key's caps only are checked (a key without a cap always fits)."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT day FROM holds WHERE id = ?", (hold_id,)).fetchone()
            day = row[0] if row else self._today()
            available, others = self._available(key, day, exclude=hold_id)
            fits = _within(flops, available.flops, key.daily_flops) and _within(
                usd, available.usd, key.daily_usd
            )
            if not fits:
                return HoldResult(False, available, others)
            self._db.execute(
                "INSERT OR REPLACE INTO holds (id, key_id, day, flops, usd, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (hold_id, key.id, day, flops, usd, time.time() + ttl_s),
            )
        return HoldResult(True, available, others)

    def available(self, key: ApiKey, hold_id: str) -> Allowance:
        """What the request holding `hold_id` may spend in all: the key's budget left beside
        today's spending and the other live holds."""
        with self._lock:
            row = self._db.execute("SELECT day FROM holds WHERE id = ?", (hold_id,)).fetchone()
            day = row[0] if row else self._today()
            return self._available(key, day, exclude=hold_id)[0]

    def settle(self, key_id: int, hold_id: str, *, flops: float, usd: float) -> None:
        """End a request: drop its hold and add what it really spent (to the day it was
        admitted on), in one transaction."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT day FROM holds WHERE id = ?", (hold_id,)).fetchone()
            day = row[0] if row else self._today()
            self._db.execute("DELETE FROM holds WHERE id = ?", (hold_id,))
            self._add_usage(key_id, day, flops, usd)
            # holds left behind by a server that died are dropped once they have expired
            self._db.execute("DELETE FROM holds WHERE expires <= ?", (time.time(),))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken at once (IMMEDIATE), so no other connection, in this
        process or another, can read the same totals and act on them in between."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _add_usage(self, key_id: int, day: str, flops: float, usd: float) -> None:
        self._db.execute(
            "INSERT INTO usage (key_id, day, flops, usd, requests) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (key_id, day) DO UPDATE SET flops = flops + excluded.flops, "
            "usd = usd + excluded.usd, requests = requests + 1",
            (key_id, day, flops, usd),
        )

    def record(self, key_id: int, *, flops: float, usd: float) -> None:
        """Add one request's spending to today's total (without a hold: administration)."""
        with self._lock:
            self._add_usage(key_id, self._today(), flops, usd)
