"""`SqlStore`: the Store on SQLAlchemy Core (SQLite or PostgreSQL), one aggregate per module.

It composes the aggregates (queues, repos, jobs, logs, results, executors) over one Database
(engine.py: the dialect's differences) and runs the operations that span two of them (a
heartbeat records its executor and renews its jobs' leases) in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from corral.server.store.base import Telemetry
from corral.server.store.engine import Clock, Database
from corral.server.store.executors import Executors
from corral.server.store.files import FileInfo, Files, StoredFile
from corral.server.store.jobs import Jobs
from corral.server.store.logs import Logs
from corral.server.store.queues import Queues
from corral.server.store.repos import Repos
from corral.server.store.results import Results
from corral.server.store.rows import (
    Executor,
    JobAuth,
    JobRow,
    JobState,
    Lease,
    LogEntry,
    MarkOutcome,
    QueueInfo,
    Repo,
    Result,
)
from corral.server.store.secrets import Secrets

__all__ = ["SqlStore", "memory_store"]


class SqlStore:
    """The job store in a database at `url` (`sqlite:///path`, `sqlite://` in memory, or
    `postgresql://...`), with times from `clock` (epoch seconds)."""

    def __init__(self, url: str, *, clock: Clock = time.time) -> None:
        self.url = url
        self.clock = clock
        self.db = Database(url)
        self.queues = Queues(self.db, clock)
        self.repos = Repos(self.db, clock)
        self.jobs = Jobs(self.db, clock, self.queues)
        self.logs = Logs(self.db, self.jobs)
        self.results = Results(self.db, clock, self.jobs)
        self.executors = Executors(self.db)
        self.files = Files(self.db, clock)
        self.secrets = Secrets(self.db, clock)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def inline(self) -> bool:
        return self.db.inline

    @property
    def shared(self) -> bool:
        return self.db.shared

    def migrate(self) -> None:
        self.db.migrate()
        self.queues.ensure_defaults()

    def close(self) -> None:
        self.db.close()

    # -- queues and repositories ----------------------------------------------------------------
    def queue_exists(self, name: str) -> bool:
        return self.queues.exists(name)

    def list_queues(self) -> list[QueueInfo]:
        return self.queues.list()

    def upsert_repo(self, name: str, path: str, source: str) -> bool:
        return self.repos.upsert(name, path, source)

    def get_repo(self, name: str) -> Repo:
        return self.repos.get(name)

    def list_repos(self) -> list[Repo]:
        return self.repos.list()

    def remove_repo(self, name: str) -> Repo:
        return self.repos.remove(name)

    # -- the file store -------------------------------------------------------------------------
    def put_file(self, bucket: str, key: str, content: bytes) -> tuple[FileInfo, bool]:
        return self.files.put(bucket, key, content)

    def get_file(self, bucket: str, key: str) -> StoredFile:
        return self.files.get(bucket, key)

    def file_info(self, bucket: str, key: str) -> FileInfo | None:
        return self.files.info(bucket, key)

    def file_infos(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FileInfo]:
        return self.files.infos(refs)

    def list_files(self, bucket: str, *, prefix: str = "", limit: int = 100) -> list[FileInfo]:
        return self.files.list(bucket, prefix=prefix, limit=limit)

    def delete_file(self, bucket: str, key: str) -> FileInfo:
        return self.files.delete(bucket, key)

    # -- producers ------------------------------------------------------------------------------
    def enqueue(
        self, queue: str, spec: dict[str, Any], *, priority: int = 0, max_attempts: int = 3
    ) -> JobRow:
        return self.jobs.enqueue(queue, spec, priority=priority, max_attempts=max_attempts)

    def get_job(self, job_id: int) -> JobRow:
        return self.jobs.get(job_id)

    def job_state(self, job_id: int) -> tuple[JobState, str | None]:
        return self.jobs.state(job_id)

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        repository: str | None = None,
    ) -> list[JobRow]:
        return self.jobs.find(
            queue=queue, state=state, limit=limit, before_id=before_id, repository=repository
        )

    def request_cancel(self, job_id: int) -> JobRow:
        return self.jobs.request_cancel(job_id)

    # -- executors ------------------------------------------------------------------------------
    def dequeue(self, queue_names: list[str], executor_name: str, token: str) -> JobRow | None:
        return self.jobs.dequeue(queue_names, executor_name, token)

    def release(self, job_id: int, attempt: int) -> bool:
        return self.jobs.release(job_id, attempt)

    def heartbeat(
        self, executor_name: str, info: Telemetry, job_ids: list[int], queue_names: list[str]
    ) -> tuple[list[Lease], list[int]]:
        """Record the executor; renew leases of its jobs. Returns (its leases, ids to cancel)."""
        now = self.clock()
        with self.db.write() as conn:
            self.executors.record(conn, executor_name, info, job_ids, queue_names, now)
            leases = self.jobs.renew(conn, executor_name, job_ids, now)
        return leases, [lease.id for lease in leases if lease.cancel]

    def executor_known(self, name: str) -> bool:
        return self.executors.known(name)

    def list_executors(self) -> list[Executor]:
        return self.executors.list()

    def cancel_requested(self, executor_name: str, job_ids: list[int]) -> list[int]:
        return self.jobs.cancel_requested(executor_name, job_ids)

    def reattach(
        self, job_id: int, attempt: int, executor_name: str, token: str, stalled_after: float
    ) -> JobRow:
        return self.jobs.reattach(job_id, attempt, executor_name, token, stalled_after)

    # -- job-scoped calls -----------------------------------------------------------------------
    def job_auth(self, token: str) -> JobAuth | None:
        return self.jobs.auth(token)

    def add_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry: Mapping[str, Any]
    ) -> int:
        return self.logs.add(job_id, attempt, executor_name, entry)

    def update_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry_id: int, entry: Mapping[str, Any]
    ) -> None:
        self.logs.update(job_id, attempt, executor_name, entry_id, entry)

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
        return self.logs.append(
            job_id,
            attempt,
            executor_name,
            entry_id,
            offset,
            data,
            exit_code=exit_code,
            duration_ms=duration_ms,
            max_bytes=max_bytes,
        )

    def put_result(
        self, job_id: int, attempt: int | None, executor_name: str, result: Mapping[str, Any]
    ) -> None:
        self.results.put(job_id, attempt, executor_name, result)

    def mark(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        outcome: MarkOutcome,
        message: str = "",
        *,
        retry_backoff: float = 10.0,
    ) -> JobState:
        return self.jobs.mark(job_id, attempt, executor_name, outcome, message, retry_backoff=retry_backoff)

    # -- reading logs and results ---------------------------------------------------------------
    def get_logs(self, job_id: int, *, offsets: Mapping[int, int] | None = None) -> list[LogEntry]:
        return self.logs.get(job_id, offsets=offsets)

    def log_heads(self, job_id: int, attempt: int) -> list[LogEntry]:
        return self.logs.heads(job_id, attempt)

    def read_log(self, job_id: int, entry_id: int, start: int = 0, end: int | None = None) -> bytes:
        return self.logs.read(job_id, entry_id, start, end)

    def get_result(self, job_id: int) -> Result | None:
        return self.results.get(job_id)

    # -- maintenance and wake-ups ---------------------------------------------------------------
    def reset_stalled(self, stalled_after: float, max_resets: int) -> tuple[list[int], list[int]]:
        return self.jobs.reset_stalled(stalled_after, max_resets)

    def publish(self, key: str) -> None:
        self.db.publish(key)

    async def listen(self, notify: Callable[[str], None], ready: asyncio.Event | None = None) -> None:
        await self.db.listen(notify, ready)


def memory_store(*, clock: Clock = time.time) -> SqlStore:
    """A migrated store in an in-memory SQLite database (for tests and harnesses)."""
    store = SqlStore("sqlite://", clock=clock)
    store.migrate()
    return store
