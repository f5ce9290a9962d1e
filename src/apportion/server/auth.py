"""API keys for the server: sha256 digests with optional daily FLOP and $ budgets, in a SQLite
file or in PostgreSQL shared by several replicas (server/state.py).

A key is 32 random bytes (`ap-` + URL-safe base64), shown once when it is created. Only its
sha256 is stored: a fast hash is enough for a secret with 256 bits of entropy (nothing to
brute-force, unlike a password), and it lets a lookup go straight to the row.

Spending is kept per key and UTC day, so budgets reset at midnight UTC and survive restarts.
Authentication is on as soon as the store holds one active key.

Quotas hold under concurrency through holds: a request opens a hold when it is admitted, raises
it to its worst case before each model call (all it has spent, plus the call's largest possible
cost), and settles it to what it really spent when it ends. Each step is one transaction that
locks the key's spending against every other process (SQLite: `BEGIN IMMEDIATE`; PostgreSQL:
the key's row, `FOR UPDATE`), and a hold is
granted only if today's spending, every other live hold and this one fit the key's budget, so
the requests in flight can never spend more than the key has left. A hold expires on its own
(`ttl_s`) if its server dies before settling it.

A SQLite file is created 0600 (in a 0700 folder when it makes one; private_files.py): it holds
the digests and who spent what. Each settled request is also logged (`spend`): key, time,
route, model, tokens, FLOPs, $ and outcome.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apportion.errors import UsageError
from apportion.server.state import Tx, open_database

KEY_PREFIX = "ap-"

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


@dataclass(frozen=True)
class Spend:
    """One settled request, as the spend log keeps it."""

    route: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    outcome: str


@dataclass(frozen=True)
class SpendRow:
    """What a key spent on one day and route (`apportion keys usage`, GET /v1/usage)."""

    key: str
    day: str
    route: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    flops: float
    usd: float


class KeyStore:
    """Keys, their daily spending and the spend log, in a `Database` (server/state.py): a
    SQLite file, or PostgreSQL that several server replicas share. Safe between threads."""

    def __init__(self, where: Path | str, *, today: Callable[[], str] = utc_today) -> None:
        self._today = today
        self._db = open_database(where)
        # where the store is, as messages show it (a URL's password left out)
        self.path = self._db.where

    def close(self) -> None:
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
        try:
            with self._db.transaction() as tx:
                row = tx(
                    "INSERT INTO keys (name, key_sha256, daily_flops, daily_usd, created) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (name, digest(secret), daily_flops, daily_usd, created),
                ).fetchone()
        except self._db.integrity_error as e:
            raise UsageError(
                f"a key named {name!r} already exists", "pick another name or revoke it"
            ) from e
        return ApiKey(int(row[0]), name, daily_flops, daily_usd, created, revoked=False), secret

    def revoke(self, name: str) -> bool:
        with self._db.transaction() as tx:
            rows = tx("UPDATE keys SET revoked = 1 WHERE name = ? AND revoked = 0", (name,))
            return rows.rowcount > 0

    def all_keys(self) -> list[ApiKey]:
        with self._db.transaction() as tx:
            rows = tx(
                "SELECT id, name, daily_flops, daily_usd, created, revoked FROM keys ORDER BY id"
            ).fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    # -- requests ---------------------------------------------------------------------------

    def enabled(self) -> bool:
        """Whether requests must carry a key: true once any active key exists."""
        with self._db.transaction() as tx:
            row = tx("SELECT 1 FROM keys WHERE revoked = 0 LIMIT 1").fetchone()
        return row is not None

    def authenticate(self, secret: str) -> ApiKey | None:
        with self._db.transaction() as tx:
            r = tx(
                "SELECT id, name, daily_flops, daily_usd, created FROM keys "
                "WHERE key_sha256 = ? AND revoked = 0",
                (digest(secret),),
            ).fetchone()
        return None if r is None else ApiKey(r[0], r[1], r[2], r[3], r[4], revoked=False)

    def usage(self, key_id: int, day: str | None = None) -> DailyUsage:
        day = day or self._today()
        with self._db.transaction() as tx:
            r = tx(
                "SELECT flops, usd, requests FROM usage WHERE key_id = ? AND day = ?",
                (key_id, day),
            ).fetchone()
        return DailyUsage(day) if r is None else DailyUsage(day, r[0], r[1], r[2])

    def allowance(self, key: ApiKey) -> Allowance:
        """What the key may still spend today, beside the holds of the requests in flight."""
        with self._db.transaction() as tx:
            return self._available(tx, key, self._today(), exclude=None)[0]

    # -- holds: reserve at admission, settle at the end (see the module docstring) ------------

    def _available(
        self, tx: Tx, key: ApiKey, day: str, *, exclude: str | None
    ) -> tuple[Allowance, int]:
        """Cap − spent today − live holds of today other than `exclude`, and how many such
        holds there are."""
        spent = tx(
            "SELECT flops, usd FROM usage WHERE key_id = ? AND day = ?", (key.id, day)
        ).fetchone() or (0.0, 0.0)
        held = tx(
            "SELECT COALESCE(SUM(flops), 0), COALESCE(SUM(usd), 0), COUNT(*) FROM holds "
            "WHERE key_id = ? AND day = ? AND expires > ? AND id IS DISTINCT FROM ?",
            (key.id, day, time.time(), exclude),
        ).fetchone()
        allowance = Allowance(
            flops=None if key.daily_flops is None else key.daily_flops - spent[0] - held[0],
            usd=None if key.daily_usd is None else key.daily_usd - spent[1] - held[1],
        )
        return allowance, int(held[2])

    def _put_hold(
        self, tx: Tx, hold_id: str, key: ApiKey, day: str, flops: float, usd: float, ttl_s: float
    ) -> None:
        tx(
            "INSERT INTO holds (id, key_id, day, flops, usd, expires) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, day = excluded.day, "
            "flops = excluded.flops, usd = excluded.usd, expires = excluded.expires",
            (hold_id, key.id, day, flops, usd, time.time() + ttl_s),
        )

    def _hold_day(self, tx: Tx, hold_id: str) -> str:
        row = tx("SELECT day FROM holds WHERE id = ?", (hold_id,)).fetchone()
        return str(row[0]) if row else self._today()

    def open_hold(self, key: ApiKey, hold_id: str, *, ttl_s: float) -> HoldResult:
        """Admit a request: if the key has anything left beside the other holds, open an empty
        hold named `hold_id` (it expires after `ttl_s` unless raised or settled)."""
        day = self._today()
        with self._db.transaction(lock_key=key.id) as tx:
            available, others = self._available(tx, key, day, exclude=hold_id)
            if available.exhausted:
                return HoldResult(False, available, others)
            self._put_hold(tx, hold_id, key, day, 0.0, 0.0, ttl_s)
        return HoldResult(True, available, others)

    def hold(
        self, key: ApiKey, hold_id: str, *, flops: float, usd: float, ttl_s: float
    ) -> HoldResult:
        """Set the hold to `flops` and `usd` (what the request has spent plus the worst case of
        its next call) if that fits beside today's spending and the other live holds; the
        key's caps only are checked (a key without a cap always fits)."""
        with self._db.transaction(lock_key=key.id) as tx:
            day = self._hold_day(tx, hold_id)
            available, others = self._available(tx, key, day, exclude=hold_id)
            fits = _within(flops, available.flops, key.daily_flops) and _within(
                usd, available.usd, key.daily_usd
            )
            if not fits:
                return HoldResult(False, available, others)
            self._put_hold(tx, hold_id, key, day, flops, usd, ttl_s)
        return HoldResult(True, available, others)

    def available(self, key: ApiKey, hold_id: str) -> Allowance:
        """What the request holding `hold_id` may spend in all: the key's budget left beside
        today's spending and the other live holds."""
        with self._db.transaction() as tx:
            return self._available(tx, key, self._hold_day(tx, hold_id), exclude=hold_id)[0]

    def settle(
        self, key_id: int, hold_id: str, *, flops: float, usd: float, spend: Spend | None = None
    ) -> None:
        """End a request: drop its hold, add what it really spent (to the day it was admitted
        on) and log it, in one transaction."""
        with self._db.transaction(lock_key=key_id) as tx:
            day = self._hold_day(tx, hold_id)
            tx("DELETE FROM holds WHERE id = ?", (hold_id,))
            self._add_usage(tx, key_id, day, flops, usd)
            if spend is not None:
                tx(
                    "INSERT INTO spend (key_id, request, at, day, route, model, prompt_tokens, "
                    "completion_tokens, flops, usd, outcome) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, hold_id, time.time(), day, spend.route, spend.model,
                     spend.prompt_tokens, spend.completion_tokens, flops, usd, spend.outcome),
                )  # fmt: skip
            # holds left behind by a server that died are dropped once they have expired
            tx("DELETE FROM holds WHERE expires <= ?", (time.time(),))

    def _add_usage(self, tx: Tx, key_id: int, day: str, flops: float, usd: float) -> None:
        tx(
            "INSERT INTO usage (key_id, day, flops, usd, requests) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (key_id, day) DO UPDATE SET flops = usage.flops + excluded.flops, "
            "usd = usage.usd + excluded.usd, requests = usage.requests + 1",
            (key_id, day, flops, usd),
        )

    def record(self, key_id: int, *, flops: float, usd: float) -> None:
        """Add one request's spending to today's total (without a hold: administration)."""
        with self._db.transaction(lock_key=key_id) as tx:
            self._add_usage(tx, key_id, self._today(), flops, usd)

    # -- the spend log ------------------------------------------------------------------------

    def spend_report(self, *, key: str | None = None, since: str | None = None) -> list[SpendRow]:
        """What each key (or `key`) spent per UTC day and route, from day `since` on."""
        where, params = ["1 = 1"], []
        if key is not None:
            where.append("k.name = ?")
            params.append(key)
        if since is not None:
            where.append("s.day >= ?")
            params.append(since)
        with self._db.transaction() as tx:
            rows = tx(
                "SELECT k.name, s.day, s.route, COUNT(*), SUM(s.prompt_tokens), "
                "SUM(s.completion_tokens), SUM(s.flops), SUM(s.usd) FROM spend s "
                f"JOIN keys k ON k.id = s.key_id WHERE {' AND '.join(where)} "
                "GROUP BY k.name, s.day, s.route ORDER BY k.name, s.day, s.route",
                params,
            ).fetchall()
        return [SpendRow(r[0], r[1], r[2], int(r[3]), int(r[4] or 0), int(r[5] or 0),
                         float(r[6] or 0.0), float(r[7] or 0.0)) for r in rows]  # fmt: skip
