"""The database under the store: the one place where SQLite and PostgreSQL differ.

- Engines: SQLite (the embedded default) in WAL mode, write transactions with `BEGIN IMMEDIATE`
  behind one process-wide lock, so a dequeue is atomic and writers never spin on SQLITE_BUSY (an
  in-memory database is one shared connection: reads queue behind writes too). PostgreSQL through
  psycopg 3 with a connection pool.
- Row locks: PostgreSQL picks dequeue candidates with `FOR UPDATE SKIP LOCKED` (many replicas hand
  out jobs concurrently) and locks a job's row (`FOR UPDATE`) for a job-scoped write; SQLite's
  writer lock already serialises both, so the clauses are empty there.
- Inserts of rows keyed by name: `INSERT ... ON CONFLICT DO NOTHING` of either dialect.
- Migrations (Alembic, beside this module) under a lock: BEGIN IMMEDIATE or an advisory lock.
- Wake-ups across replicas: on PostgreSQL, NOTIFY/LISTEN on one channel (`publish`, `listen`);
  SQLite has one server process, so its notifier is in-process only.
- Whether calls may run on the event loop (`inline`): SQLite's answer in well under a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

__all__ = ["CHANNEL", "Database", "driver_url"]

log = logging.getLogger("corral.server")
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x636F7272616C  # PostgreSQL advisory lock key ("corral")
CHANNEL = "corral_wake"  # PostgreSQL NOTIFY channel of wake-ups
RECONNECT_MAX = 10.0  # seconds between LISTEN reconnects at most
MEMORY_URLS = ("sqlite://", "sqlite:///:memory:")
# Alembic's `context` is process-global: migrations of several stores in one process take turns.
_migrate_lock = threading.Lock()

Clock = Callable[[], float]


def driver_url(url: str) -> str:
    """`postgresql://` and `postgres://` (libpq's forms) mean psycopg 3, the driver corral ships."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    u = make_url(url)
    if u.drivername == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


class Database:
    """An engine, its transactions and its dialect's differences."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.memory = url in MEMORY_URLS
        self.engine: Engine = _make_engine(driver_url(url), memory=self.memory)
        self.sqlite = self.engine.dialect.name == "sqlite"
        # Several server replicas may share a PostgreSQL database; SQLite belongs to one process.
        self.shared = not self.sqlite
        self.inline = self.sqlite
        self._lock = threading.RLock() if self.sqlite else None
        self._read_lock = self._lock if self.memory else None
        self.for_update = "" if self.sqlite else " FOR UPDATE"
        self.skip_locked = "" if self.sqlite else " FOR UPDATE SKIP LOCKED"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: the process's only writer, BEGIN IMMEDIATE)."""
        if self._lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._lock, self.engine.connect().execution_options(sqlite_immediate=True) as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if self._read_lock is not None:
            with self._read_lock, self.engine.connect() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            yield conn

    def insert_new(self, conn: Connection, table: Table, **values: Any) -> bool:
        """Insert a row unless its primary key is taken; True when inserted (concurrent first
        inserts of one key on PostgreSQL all succeed but one would fail without ON CONFLICT)."""
        dialect_insert = sqlite.insert if self.sqlite else postgresql.insert
        stmt = dialect_insert(table).values(**values).on_conflict_do_nothing()
        return conn.execute(stmt.returning(*table.primary_key.columns)).first() is not None

    def announce(self, conn: Connection, key: str) -> None:
        """Within a write transaction: wake the waiters on `key` in every replica once it commits
        (PostgreSQL NOTIFY; nothing on SQLite, whose server wakes its own waiters)."""
        if self.shared:
            conn.execute(_SQL_NOTIFY, {"channel": CHANNEL, "key": key})

    # -- migrations -----------------------------------------------------------------------------
    def migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        # Servers starting together on a new database: one migrates, the others wait, then find it
        # done (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock held until commit).
        with (
            _migrate_lock,
            self.engine.connect().execution_options(sqlite_immediate=True) as conn,
            conn.begin(),
        ):
            if not self.sqlite:
                conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # -- wake-ups across replicas ---------------------------------------------------------------
    def publish(self, key: str) -> None:
        """Tell every replica (this one too) to wake the waiters on `key` (PostgreSQL only)."""
        with self.engine.begin() as conn:
            conn.execute(_SQL_NOTIFY, {"channel": CHANNEL, "key": key})

    async def listen(self, notify: Callable[[str], None], ready: asyncio.Event | None = None) -> None:
        """Relay every replica's notifications to `notify(key)` until cancelled, reconnecting after
        errors. On SQLite there is nothing to hear: returns at once (after setting `ready`)."""
        if not self.shared:
            if ready is not None:
                ready.set()
            return
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.5
                    if ready is not None:
                        ready.set()
                    async for n in conn.notifies():
                        notify(n.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN %s lost (%s); reconnecting in %.1fs", CHANNEL, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)


_SQL_NOTIFY = text("SELECT pg_notify(:channel, :key)")
BUSY_TIMEOUT = 30.0  # seconds a SQLite connection waits for a lock (busy handler, and WAL switch)


def _enter_wal(cur: Any) -> None:
    """Put the database into WAL mode (persistent: a no-op once done). Processes opening a new
    database at once race for the exclusive lock the switch needs, and SQLite answers the loser
    SQLITE_BUSY at once, without its busy handler (measured: 2 of 90 server processes started three
    at a time failed with "database is locked"); so retry, for as long as a busy write would wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        else:
            if not mode or str(mode[0]).lower() != "wal":
                log.warning("SQLite kept journal mode %r, not WAL (writers block readers)", mode)
            return
        time.sleep(0.01)


def _make_engine(url: str, *, memory: bool) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if not memory:
            _enter_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
