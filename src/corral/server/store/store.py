"""The job store: every queue operation as one short transaction (SQLAlchemy Core).

SQLite (the embedded default) runs in WAL mode and takes its write transactions with
`BEGIN IMMEDIATE` behind one process-wide lock, so a dequeue is atomic and writers never spin on
SQLITE_BUSY. PostgreSQL picks dequeue candidates with `FOR UPDATE SKIP LOCKED`, so many server
replicas can hand out jobs concurrently; there a job-scoped write or cancel locks the job's row
(`FOR UPDATE`, a no-op on SQLite) so it cannot interleave with a stalled-job reset or another write,
rows keyed by name are created with `ON CONFLICT DO NOTHING`, and migrations hold an advisory lock.
All methods are synchronous; the server calls them from a worker thread. Times come from an injected
clock (epoch seconds) so tests can move time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from corral.errors import Conflict, Invalid, NotFound
from corral.protocol import QUEUE_NAME_RE
from corral.server.store.tables import (
    attempts,
    executors,
    jobs,
    log_chunks,
    log_entries,
    queues,
    repos,
    results,
)

__all__ = ["DEFAULT_QUEUES", "TERMINAL", "JobAuth", "Store", "hash_token"]

DEFAULT_QUEUES = ("batches", "codeintel")
TERMINAL = frozenset({"completed", "failed", "canceled"})
DEQUEUEABLE = ("queued", "errored")
RESET_FAILURE = "job processor died while handling this message too many times"
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x636F7272616C  # PostgreSQL advisory lock key ("corral")
# Alembic's `context` is process-global: migrations of several stores in one process take turns.
_migrate_lock = threading.Lock()

Clock = Callable[[], float]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class JobAuth:
    """Who a job token belongs to."""

    job_id: int
    attempt: int
    executor_name: str
    queue: str
    repository_name: str


def _row(r: Any) -> dict[str, Any]:
    return dict(r._mapping) if r is not None else {}


class Store:
    def __init__(self, url: str, *, clock: Clock = time.time) -> None:
        self.url = url
        self.clock = clock
        self.engine: Engine = _make_engine(_driver_url(url))
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._lock = threading.RLock() if self.sqlite else None
        self._queues: set[str] = set()  # queues known to exist (never deleted)
        self._sql_fence = _SQL_FENCE if self.sqlite else _SQL_FENCE_LOCK
        self._sql_dequeue: dict[int, Any] = {}  # number of queues -> statement
        # An in-memory SQLite database is one shared connection: reads must queue behind writes too.
        self._read_lock = self._lock if url in ("sqlite://", "sqlite:///:memory:") else None

    # -- plumbing -----------------------------------------------------------------------------
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
        with self._write() as conn:
            for q in DEFAULT_QUEUES:
                self._ensure_queue(conn, q)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._lock, self.engine.connect().execution_options(sqlite_immediate=True) as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._read_lock is not None:
            with self._read_lock, self.engine.connect() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            yield conn

    def _insert_new(self, conn: Connection, table: Table, **values: Any) -> bool:
        """Insert a row unless its primary key is taken; True when inserted. SQLite's writers take
        turns; on PostgreSQL concurrent first inserts of one key would fail but one, hence ON CONFLICT."""
        if self.sqlite:
            key = [c == values[c.name] for c in table.primary_key.columns]
            if conn.execute(select(*table.primary_key.columns).where(*key)).first() is not None:
                return False
            conn.execute(insert(table).values(**values))
            return True
        stmt = pg_insert(table).values(**values).on_conflict_do_nothing()
        return conn.execute(stmt.returning(*table.primary_key.columns)).first() is not None

    # -- queues and repositories --------------------------------------------------------------
    def _ensure_queue(self, conn: Connection, name: str) -> None:
        if not QUEUE_NAME_RE.match(name):
            raise Invalid(f"invalid queue name {name!r}: use 1-64 characters of [a-z0-9_-]")
        self._insert_new(conn, queues, name=name, created_at=self.clock())

    def queue_exists(self, name: str) -> bool:
        with self._read() as conn:
            return conn.execute(select(queues.c.name).where(queues.c.name == name)).first() is not None

    def list_queues(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            names = [r.name for r in conn.execute(select(queues.c.name).order_by(queues.c.name))]
            counts = conn.execute(
                select(jobs.c.queue, jobs.c.state, func.count()).group_by(jobs.c.queue, jobs.c.state)
            ).all()
        out = {n: {"name": n, "counts": {}} for n in names}
        for q, state, n in counts:
            out.setdefault(q, {"name": q, "counts": {}})["counts"][state] = n
        return list(out.values())

    def upsert_repo(self, name: str, path: str, source: str) -> bool:
        """Record a repository; True when it is new."""
        now = self.clock()
        with self._write() as conn:
            if self._insert_new(
                conn, repos, name=name, path=path, source=source, created_at=now, updated_at=now
            ):
                return True
            conn.execute(
                update(repos).where(repos.c.name == name).values(path=path, source=source, updated_at=now)
            )
            return False

    def get_repo(self, name: str) -> dict[str, Any]:
        with self._read() as conn:
            r = conn.execute(select(repos).where(repos.c.name == name)).first()
        if r is None:
            raise NotFound(f"unknown repository {name!r}: add it first (corral repo add)")
        return _row(r)

    def list_repos(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [_row(r) for r in conn.execute(select(repos).order_by(repos.c.name))]

    # -- producers ----------------------------------------------------------------------------
    def enqueue(
        self, queue: str, spec: dict[str, Any], *, priority: int = 0, max_attempts: int = 3
    ) -> dict[str, Any]:
        now = self.clock()
        with self._write() as conn:
            if queue not in self._queues:
                self._ensure_queue(conn, queue)
            row = conn.execute(
                insert(jobs)
                .values(
                    queue=queue,
                    state="queued",
                    spec=spec,
                    priority=priority,
                    repository_name=spec.get("repositoryName", ""),
                    commit=spec.get("commit", ""),
                    created_at=now,
                    attempt=0,
                    num_resets=0,
                    num_failures=0,
                    max_attempts=max_attempts,
                    cancel=False,
                )
                .returning(*jobs.c)
            ).one()
        self._queues.add(queue)  # after the commit: the queue row exists for good
        return _row(row)

    def get_job(self, job_id: int) -> dict[str, Any]:
        with self._read() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if r is None:
                raise NotFound(f"unknown job {job_id}")
            res = conn.execute(
                select(results.c.exit_codes, results.c.attempt).where(results.c.job_id == job_id)
            ).first()
        job = _row(r)
        job["exit_codes"] = list(res.exit_codes) if res is not None else []
        return job

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        q = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if queue:
            q = q.where(jobs.c.queue == queue)
        if state:
            q = q.where(jobs.c.state == state)
        if before_id:
            q = q.where(jobs.c.id < before_id)
        with self._read() as conn:
            return [_row(r) for r in conn.execute(q)]

    def request_cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job: at once when it waits; through its executor when it runs."""
        now = self.clock()
        with self._write() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
            if r is None:
                raise NotFound(f"unknown job {job_id}")
            if r.state in TERMINAL:
                raise Conflict(f"job {job_id} is already {r.state}")
            if r.state in DEQUEUEABLE:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(state="canceled", cancel=True, finished_at=now, failure_message="canceled")
                )
            else:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel=True))
            return _row(conn.execute(select(jobs).where(jobs.c.id == job_id)).first())

    # -- executors: dequeue, heartbeat --------------------------------------------------------
    def dequeue(self, queue_names: list[str], executor_name: str, token: str) -> dict[str, Any] | None:
        """Hand the best waiting job of these queues to the executor, as a new attempt."""
        now = self.clock()
        with self._write() as conn:
            # One statement picks and takes the job (the subquery's row lock skips rows that another
            # replica is taking on PostgreSQL; SQLite's writer lock serializes).
            sql = self._sql_dequeue.get(len(queue_names))
            if sql is None:
                sql = self._sql_dequeue[len(queue_names)] = _dequeue_sql(len(queue_names), self.sqlite)
            params: dict[str, Any] = {f"q{i}": q for i, q in enumerate(queue_names)}
            params.update(now=now, executor=executor_name)
            row = conn.execute(sql, params).first()
            if row is None:
                return None
            conn.execute(
                insert(attempts).values(
                    job_id=row.id,
                    attempt=row.attempt,
                    executor_name=executor_name,
                    token_hash=hash_token(token),
                    started_at=now,
                )
            )
            return _row(row)

    def release(self, job_id: int, attempt: int) -> bool:
        """Give back a job that was handed to an executor that had already gone (its long-poll
        ended before the answer): queued again, without counting a reset. The attempt stays used,
        so its token is stale from now on."""
        now = self.clock()
        with self._write() as conn:
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.state == "processing")
                .values(state="queued", executor_name=None, started_at=None, last_heartbeat_at=None)
            ).rowcount
            if n:
                conn.execute(
                    update(attempts)
                    .where(attempts.c.job_id == job_id, attempts.c.attempt == attempt)
                    .values(finished_at=now, state="released")
                )
            return bool(n)

    def heartbeat(
        self, executor_name: str, info: dict[str, Any], job_ids: list[int], queue_names: list[str]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Record the executor; renew leases of its jobs. Returns (known rows, ids to cancel)."""
        now = self.clock()
        with self._write() as conn:
            self._record_executor(conn, executor_name, info, job_ids, queue_names, now)
            if not job_ids:
                return [], []
            owned = (
                jobs.c.id.in_(job_ids),
                jobs.c.state == "processing",
                jobs.c.executor_name == executor_name,
            )
            conn.execute(update(jobs).where(*owned).values(last_heartbeat_at=now))
            rows = [
                _row(r) for r in conn.execute(select(jobs.c.id, jobs.c.queue, jobs.c.cancel).where(*owned))
            ]
        return rows, [r["id"] for r in rows if r["cancel"]]

    def _record_executor(
        self,
        conn: Connection,
        name: str,
        info: dict[str, Any],
        job_ids: list[int],
        queue_names: list[str],
        now: float,
    ) -> None:
        values = {k: (info.get(k) or "")[:64] for k in _EXECUTOR_TEXT}
        values.update(
            hostname=(info.get("hostname") or "")[:255],
            queues=queue_names,
            running_job_ids=job_ids,
            last_seen_at=now,
        )
        renew = update(executors).where(executors.c.name == name).values(**values)
        if conn.execute(renew).rowcount == 0 and not self._insert_new(
            conn, executors, name=name, first_seen_at=now, **values
        ):
            conn.execute(renew)  # PostgreSQL: a concurrent first heartbeat inserted it

    def executor_known(self, name: str) -> bool:
        with self._read() as conn:
            return conn.execute(select(executors.c.name).where(executors.c.name == name)).first() is not None

    def list_executors(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [
                _row(r) for r in conn.execute(select(executors).order_by(executors.c.last_seen_at.desc()))
            ]

    def cancel_requested(self, executor_name: str, job_ids: list[int]) -> list[int]:
        if not job_ids:
            return []
        with self._read() as conn:
            rows = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.id.in_(job_ids),
                    jobs.c.executor_name == executor_name,
                    jobs.c.state == "processing",
                    jobs.c.cancel.is_(True),
                )
            )
            return [r.id for r in rows]

    # -- job-scoped calls (fenced by attempt) -------------------------------------------------
    def job_auth(self, token: str) -> JobAuth | None:
        with self._read() as conn:
            r = conn.execute(_SQL_JOB_AUTH, {"h": hash_token(token)}).first()
        if r is None:
            return None
        return JobAuth(r.job_id, r.attempt, r.executor_name, r.queue, r.repository_name)

    def _fence(self, conn: Connection, job_id: int, attempt: int | None, executor_name: str) -> Any:
        """The job row, locked until the transaction ends, if this executor's attempt is the live one;
        else Conflict/NotFound."""
        r = conn.execute(self._sql_fence, {"id": job_id}).first()
        if r is None:
            raise NotFound(f"unknown job {job_id}")
        if attempt is not None and attempt != r.attempt:
            raise Conflict(f"stale attempt {attempt} of job {job_id}: the job is on attempt {r.attempt}")
        if r.state != "processing" or r.executor_name != executor_name:
            raise Conflict(f"job {job_id} is not processing for executor {executor_name!r} (state {r.state})")
        return r

    def add_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry: dict[str, Any]
    ) -> int:
        with self._write() as conn:
            job = self._fence(conn, job_id, attempt, executor_name)
            last = conn.execute(
                select(func.max(log_entries.c.entry_id)).where(log_entries.c.job_id == job_id)
            ).scalar()
            entry_id = (last or 0) + 1
            out = (entry.get("out") or "").encode()
            conn.execute(
                insert(log_entries).values(
                    job_id=job_id,
                    entry_id=entry_id,
                    attempt=job.attempt,
                    key=entry.get("key", ""),
                    command=entry.get("command") or [],
                    start_time=entry.get("start_time", ""),
                    exit_code=entry.get("exit_code"),
                    duration_ms=entry.get("duration_ms"),
                    out_len=len(out),
                )
            )
            if out:
                conn.execute(insert(log_chunks).values(job_id=job_id, entry_id=entry_id, data=out))
            return entry_id

    def _entry(self, conn: Connection, job_id: int, entry_id: int, attempt: int) -> Any:
        r = conn.execute(
            select(log_entries).where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
        ).first()
        if r is None or r.attempt != attempt:
            raise NotFound(f"unknown log entry {entry_id} of job {job_id}")
        return r

    def update_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry_id: int, entry: dict[str, Any]
    ) -> None:
        """Sourcegraph's update: the whole output so far replaces what was stored."""
        out = (entry.get("out") or "").encode()
        with self._write() as conn:
            job = self._fence(conn, job_id, attempt, executor_name)
            self._entry(conn, job_id, entry_id, job.attempt)
            conn.execute(
                log_chunks.delete().where(log_chunks.c.job_id == job_id, log_chunks.c.entry_id == entry_id)
            )
            if out:
                conn.execute(insert(log_chunks).values(job_id=job_id, entry_id=entry_id, data=out))
            conn.execute(
                update(log_entries)
                .where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
                .values(
                    out_len=len(out), exit_code=entry.get("exit_code"), duration_ms=entry.get("duration_ms")
                )
            )

    def append_log(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        entry_id: int,
        offset: int,
        data: bytes,
        *,
        exit_code: int | None = None,
        duration_ms: int | None = None,
        max_bytes: int,
    ) -> int:
        """corral's append: `data` goes at byte `offset`; a mismatch is a Conflict carrying ours."""
        with self._write() as conn:
            job = self._fence(conn, job_id, attempt, executor_name)
            e = self._entry(conn, job_id, entry_id, job.attempt)
            if offset != e.out_len:
                raise Conflict(f"log offset {offset} does not match the stored {e.out_len}", offset=e.out_len)
            if e.out_len + len(data) > max_bytes:
                raise Invalid(f"log entry {entry_id} would exceed the server's cap of {max_bytes} bytes")
            if data:
                conn.execute(insert(log_chunks).values(job_id=job_id, entry_id=entry_id, data=data))
            values: dict[str, Any] = {"out_len": e.out_len + len(data)}
            if exit_code is not None:
                values["exit_code"] = exit_code
            if duration_ms is not None:
                values["duration_ms"] = duration_ms
            conn.execute(
                update(log_entries)
                .where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
                .values(**values)
            )
            return int(values["out_len"])

    def get_logs(self, job_id: int, *, offsets: dict[int, int] | None = None) -> list[dict[str, Any]]:
        """Log entries with their output; with `offsets` (entry -> bytes already seen) only the rest."""
        with self._read() as conn:
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
                raise NotFound(f"unknown job {job_id}")
            entries = [
                _row(r)
                for r in conn.execute(
                    select(log_entries).where(log_entries.c.job_id == job_id).order_by(log_entries.c.entry_id)
                )
            ]
            chunks = conn.execute(
                select(log_chunks.c.entry_id, log_chunks.c.data)
                .where(log_chunks.c.job_id == job_id)
                .order_by(log_chunks.c.id)
            ).all()
        data: dict[int, bytearray] = {}
        for entry_id, blob in chunks:
            data.setdefault(entry_id, bytearray()).extend(blob)
        for e in entries:
            raw = bytes(data.get(e["entry_id"], b""))
            start = (offsets or {}).get(e["entry_id"], 0)
            e["out_bytes"] = raw[start:]
            e["offset"] = start
        return entries

    def put_result(
        self, job_id: int, attempt: int | None, executor_name: str, result: dict[str, Any]
    ) -> None:
        now = self.clock()
        with self._write() as conn:
            job = self._fence(conn, job_id, attempt, executor_name)
            conn.execute(results.delete().where(results.c.job_id == job_id))
            conn.execute(
                insert(results).values(
                    job_id=job_id,
                    attempt=job.attempt,
                    exit_codes=result.get("exit_codes", []),
                    diff=result.get("diff", ""),
                    files=result.get("files", {}),
                    created_at=now,
                )
            )
            if result.get("outcome"):
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(outcome=result["outcome"][:32]))

    def get_result(self, job_id: int) -> dict[str, Any] | None:
        with self._read() as conn:
            r = conn.execute(select(results).where(results.c.job_id == job_id)).first()
        return _row(r) if r is not None else None

    def mark(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        outcome: str,
        message: str = "",
        *,
        retry_backoff: float = 10.0,
    ) -> str:
        """End the live attempt: outcome is complete, errored or failed. Returns the job's new state."""
        now = self.clock()
        with self._write() as conn:
            job = self._fence(conn, job_id, attempt, executor_name)
            v: dict[str, Any] = {
                "id": job_id,
                "attempt": job.attempt,
                "now": now,
                "finished_at": now,
                "num_failures": job.num_failures + 1,
                "message": message,
                "process_after": None,
            }
            if outcome == "complete":
                v.update(state="completed", message=None, num_failures=job.num_failures)
            elif job.cancel:
                v.update(state="canceled", message=message or "canceled")
            elif outcome == "errored" and job.num_failures + 1 < job.max_attempts:
                backoff = retry_backoff * (2**job.num_failures)
                v.update(state="errored", process_after=now + backoff, finished_at=None)
            else:
                v.update(state="failed")
            conn.execute(_SQL_MARK_JOB, v)
            conn.execute(_SQL_MARK_ATTEMPT, v)
            return str(v["state"])

    # -- maintenance --------------------------------------------------------------------------
    def reset_stalled(self, stalled_after: float, max_resets: int) -> tuple[list[int], list[int]]:
        """Requeue jobs whose executor went silent; fail those reset too often. Returns (requeued, failed)."""
        now = self.clock()
        requeued: list[int] = []
        failed: list[int] = []
        with self._write() as conn:
            # A job being written to right now is locked (and so alive): the next sweep sees it again.
            stalled = conn.execute(
                select(jobs.c.id, jobs.c.num_resets, jobs.c.attempt, jobs.c.cancel)
                .where(jobs.c.state == "processing", jobs.c.last_heartbeat_at < now - stalled_after)
                .with_for_update(skip_locked=True)
            ).all()
            for r in stalled:
                if r.cancel:
                    values: dict[str, Any] = {
                        "state": "canceled",
                        "finished_at": now,
                        "failure_message": "canceled",
                    }
                    failed.append(r.id)
                elif r.num_resets + 1 > max_resets:
                    values = {"state": "failed", "finished_at": now, "failure_message": RESET_FAILURE}
                    failed.append(r.id)
                else:
                    values = {"state": "queued", "executor_name": None, "process_after": None}
                    requeued.append(r.id)
                values["num_resets"] = r.num_resets + 1
                values["last_heartbeat_at"] = None
                conn.execute(
                    update(jobs).where(jobs.c.id == r.id, jobs.c.state == "processing").values(**values)
                )
                conn.execute(
                    update(attempts)
                    .where(attempts.c.job_id == r.id, attempts.c.attempt == r.attempt)
                    .values(finished_at=now, state="stalled")
                )
        return requeued, failed


# Hot paths as plain SQL (built once; no per-call statement construction or cache-key work).
_SQL_JOB_AUTH = text(
    "SELECT a.job_id, a.attempt, a.executor_name, j.queue, j.repository_name "
    "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.token_hash = :h"
)
_FENCE = (
    "SELECT id, attempt, state, executor_name, cancel, num_failures, max_attempts FROM jobs WHERE id = :id"
)
_SQL_FENCE = text(_FENCE)
_SQL_FENCE_LOCK = text(_FENCE + " FOR UPDATE")
_SQL_MARK_JOB = text(
    "UPDATE jobs SET state = :state, finished_at = :finished_at, last_heartbeat_at = NULL, "
    "failure_message = :message, num_failures = :num_failures, process_after = :process_after WHERE id = :id"
).bindparams(bindparam("message", type_=jobs.c.failure_message.type))  # the column's NUL handling
_SQL_MARK_ATTEMPT = text(
    "UPDATE attempts SET finished_at = :now, state = :state WHERE job_id = :id AND attempt = :attempt"
)


def _dequeue_sql(n_queues: int, sqlite: bool) -> Any:
    names = ", ".join(f":q{i}" for i in range(n_queues))
    lock = "" if sqlite else " FOR UPDATE SKIP LOCKED"
    return text(
        "UPDATE jobs SET state = 'processing', attempt = attempt + 1, executor_name = :executor, "
        "started_at = :now, last_heartbeat_at = :now, finished_at = NULL, process_after = NULL "
        "WHERE id = (SELECT id FROM jobs WHERE queue IN (" + names + ") AND state IN ('queued', 'errored') "
        "AND (process_after IS NULL OR process_after <= :now) ORDER BY priority DESC, id LIMIT 1"
        + lock
        + ") "
        "AND state IN ('queued', 'errored') RETURNING " + ", ".join(f'"{c.name}"' for c in jobs.c)
    ).columns(*jobs.c)


_EXECUTOR_TEXT = (
    "os",
    "architecture",
    "executor_version",
    "git_version",
    "docker_version",
    "src_cli_version",
    "qemu_version",
)


def _driver_url(url: str) -> str:
    """`postgresql://` and `postgres://` (libpq's forms) mean psycopg 3, the driver corral ships."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    u = make_url(url)
    if u.drivername == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
