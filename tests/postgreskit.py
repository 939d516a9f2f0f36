"""PostgreSQL for the tests: the local server scripts/start-postgres.sh starts (role and database from
there; `CORRAL_TEST_PG_URL` points elsewhere).

Each test session works in a database of its own (`corral_test_<pid>_<random>`, dropped at exit), so
sessions running at the same time never meet; `fresh_database_url()` empties it (a new `public` schema)
for each test. An unreachable server fails the test in CI and skips it elsewhere (`require`).
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import secrets
import threading

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from tests.conftest import require

PG_URL = os.environ.get("CORRAL_TEST_PG_URL", "postgresql+psycopg://corral:corral@127.0.0.1:5432/corral_test")
NOT_RUNNING = "PostgreSQL is not running (scripts/setup.sh starts it)"
CONNECT_TIMEOUT = 3  # seconds
_PREFIX = "corral_test_"
_lock = threading.Lock()
_session_db: list[str] = []


def _conninfo(url: URL) -> str:
    """libpq connection string of a SQLAlchemy URL (for plain psycopg)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _connect(url: URL) -> psycopg.Connection:
    return psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT)


@functools.cache
def reachable() -> bool:
    try:
        with _connect(make_url(PG_URL)):
            return True
    except psycopg.OperationalError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _session_database() -> str:
    """Create this session's database once; drop those of sessions that died without cleaning up."""
    with _lock:
        if _session_db:
            return _session_db[0]
        base = make_url(PG_URL)
        name = f"{_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        with _connect(base) as conn:
            for (old,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'corral\\_test\\_%'"
            ):
                m = re.fullmatch(rf"{_PREFIX}(\d+)_[0-9a-f]+", old)
                if m and not _pid_alive(int(m.group(1))):
                    _drop(conn, old)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            # Commits need not wait for the disk: a crash would lose only test data.
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name))
            )
        _session_db.append(name)

        @atexit.register
        def _drop_session_database() -> None:
            try:
                with _connect(base) as conn:
                    _drop(conn, name)
            except psycopg.Error:
                pass  # a later session drops it

        return name


def fresh_database_url() -> str:
    """The URL of this session's database, emptied: the server must be reachable (`require`)."""
    require(reachable(), NOT_RUNNING)
    url = make_url(PG_URL).set(database=_session_database())
    with _connect(url) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a leaked connection fails the test, not hangs it
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url.render_as_string(hide_password=False)
