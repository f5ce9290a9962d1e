"""Where the server's shared state lives: one SQLite file (the default) or PostgreSQL.

`open_database(where)` takes a path (or `sqlite:PATH`) or a `postgresql://` URL. Both give a
`Database`: transactions that hold their rows against every other process using the same
database (SQLite: `BEGIN IMMEDIATE`, which locks the file; PostgreSQL: a row lock on the key a
transaction spends from, so that replicas admitting requests for one key take turns and
requests for different keys do not wait), and a versioned schema, migrated when opened (under
an advisory lock on PostgreSQL, so replicas starting together migrate once).

SQL is written once, with `?` placeholders and types both dialects read alike; `{id}` stands for
each dialect's auto-numbered primary key.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from apportion.errors import UsageError
from apportion.private_files import private_file

# Each migration, in order: statements that bring the schema from the version before to this
# one. Never edit one that has shipped; add the next.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS keys (
            id {id},
            name TEXT NOT NULL UNIQUE,
            key_sha256 TEXT NOT NULL UNIQUE,
            daily_flops DOUBLE PRECISION,
            daily_usd DOUBLE PRECISION,
            created DOUBLE PRECISION NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE IF NOT EXISTS usage (
            key_id INTEGER NOT NULL REFERENCES keys(id),
            day TEXT NOT NULL,
            flops DOUBLE PRECISION NOT NULL DEFAULT 0,
            usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day)
        )""",
        """CREATE TABLE IF NOT EXISTS holds (
            id TEXT PRIMARY KEY,
            key_id INTEGER NOT NULL REFERENCES keys(id),
            day TEXT NOT NULL,
            flops DOUBLE PRECISION NOT NULL DEFAULT 0,
            usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            expires DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS holds_by_key ON holds (key_id, day)",
    ),
    (
        # one row per settled request: who spent what, on which route and model, and how it
        # ended (`apportion keys usage`, GET /v1/usage)
        """CREATE TABLE IF NOT EXISTS spend (
            id {id},
            key_id INTEGER NOT NULL REFERENCES keys(id),
            request TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            day TEXT NOT NULL,
            route TEXT,
            model TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            flops DOUBLE PRECISION NOT NULL DEFAULT 0,
            usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            outcome TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS spend_by_key ON spend (key_id, day)",
    ),
)


class Rows(Protocol):
    """What a statement gives back."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One transaction: run a statement (SQL with `?` placeholders)."""

    def __call__(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...


class Database(Protocol):
    where: str
    # The error a UNIQUE constraint raises.
    integrity_error: type[Exception]

    def transaction(self, *, lock_key: int | None = None) -> AbstractContextManager[Tx]:
        """A transaction; with `lock_key`, no other transaction that locks the same key runs
        until this one ends."""
        ...

    def close(self) -> None: ...


def open_database(where: str | Path) -> Database:
    """The database at `where`: a `postgresql://` URL, else a SQLite file (created 0600)."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text)
    return SqliteDatabase(Path(text.removeprefix("sqlite:")).expanduser())


class SqliteDatabase:
    """One SQLite file, through one connection behind a lock (calls are short)."""

    integrity_error: type[Exception] = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        private_file(path, sqlite=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        with self.transaction() as tx:
            _migrate(tx, "INTEGER PRIMARY KEY")

    @contextmanager
    def transaction(self, *, lock_key: int | None = None) -> Iterator[Tx]:
        # BEGIN IMMEDIATE locks the whole file at once: every transaction takes turns, in this
        # process and in any other on the same file
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._execute
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self._db.execute(sql, tuple(params))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresDatabase:
    """A PostgreSQL database through a pool of connections (psycopg 3)."""

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as e:
            raise UsageError(
                "shared state on PostgreSQL needs psycopg", "pip install 'apportion[server]'"
            ) from e
        self.where = _redacted(url)  # what messages show: never the password
        self.integrity_error: type[Exception] = psycopg.errors.UniqueViolation
        try:
            self._pool = ConnectionPool(url, min_size=1, max_size=max_size, open=True, timeout=30)
            self._pool.wait(timeout=30)
        except psycopg.OperationalError as e:
            raise UsageError(f"cannot reach PostgreSQL at {url}: {e}") from e
        except Exception as e:  # the pool's own timeout error
            raise UsageError(f"cannot reach PostgreSQL at {url}: {e}") from e
        with self.transaction() as tx:
            # replicas starting at once: the first migrates, the others wait and find it done
            tx("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            _migrate(tx, "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")

    @contextmanager
    def transaction(self, *, lock_key: int | None = None) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.cursor()

            def execute(sql: str, params: Sequence[Any] = ()) -> Rows:
                cursor.execute(sql.replace("?", "%s"), tuple(params))
                rows: Rows = cursor
                return rows

            if lock_key is not None:
                execute("SELECT id FROM keys WHERE id = ? FOR UPDATE", (lock_key,))
            yield execute

    def close(self) -> None:
        self._pool.close()


def _redacted(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# pg_advisory_xact_lock's key for schema migrations ("apportion" in ASCII, as a number)
MIGRATION_LOCK = 0x6170706F7274


def _migrate(tx: Tx, id_column: str) -> None:
    """Apply the migrations the database has not seen yet (in the caller's transaction)."""
    tx("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = tx("SELECT MAX(version) FROM schema_version").fetchone()
    done = int(row[0]) if row and row[0] is not None else 0
    for version, statements in enumerate(MIGRATIONS[done:], start=done + 1):
        for statement in statements:
            tx(statement.replace("{id}", id_column))
        tx("INSERT INTO schema_version (version) VALUES (?)", (version,))
