"""The `Store` Protocol: every operation the server asks of its job store.

Lifecycle: construct, `migrate()` (idempotent; creates the default queues), use, `close()`.
Concurrency: every method is synchronous and thread-safe, and each is one short transaction, so a
dequeue is atomic and every job-scoped write is fenced by the attempt that makes it (a write from
a stale attempt raises Conflict and changes nothing). When `inline` is true a call answers in well
under a millisecond without network I/O and may run on the event loop; otherwise callers run it in
a worker thread. When `shared` is true several server replicas may use the same database, and
wake-ups must go through it (`publish`, `listen`).
Errors: NotFound, Conflict (with the stored `offset` for a log offset mismatch) and Invalid, from
corral.errors. Rows are frozen values (corral.server.store.rows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from corral.server.store.files import FileInfo, StoredFile
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

Telemetry = Mapping[str, str | None]  # os, architecture, *_version, hostname of an executor


class Store(Protocol):
    clock: Callable[[], float]  # epoch seconds; injected so that tests move time
    secrets: Secrets  # executor secrets and their access log (corral.server.store.secrets)

    @property
    def inline(self) -> bool: ...
    @property
    def shared(self) -> bool: ...

    def migrate(self) -> None: ...
    def close(self) -> None: ...

    # queues and repositories
    def queue_exists(self, name: str) -> bool: ...
    def list_queues(self) -> list[QueueInfo]: ...
    def upsert_repo(self, name: str, path: str, source: str) -> bool: ...
    def get_repo(self, name: str) -> Repo: ...
    def list_repos(self) -> list[Repo]: ...
    def remove_repo(self, name: str) -> Repo: ...

    # the file store (files by bucket and key; corral.server.store.files)
    def put_file(self, bucket: str, key: str, content: bytes) -> tuple[FileInfo, bool]: ...
    def get_file(self, bucket: str, key: str) -> StoredFile: ...
    def file_info(self, bucket: str, key: str) -> FileInfo | None: ...
    def file_infos(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FileInfo]: ...
    def list_files(self, bucket: str, *, prefix: str = "", limit: int = 100) -> list[FileInfo]: ...
    def delete_file(self, bucket: str, key: str) -> FileInfo: ...

    # producers
    def enqueue(
        self, queue: str, spec: dict[str, Any], *, priority: int = 0, max_attempts: int = 3
    ) -> JobRow: ...
    def get_job(self, job_id: int) -> JobRow: ...
    def job_state(self, job_id: int) -> tuple[JobState, str | None]: ...
    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        repository: str | None = None,
    ) -> list[JobRow]: ...
    def request_cancel(self, job_id: int) -> JobRow: ...

    # executors
    def dequeue(self, queue_names: list[str], executor_name: str, token: str) -> JobRow | None: ...
    def release(self, job_id: int, attempt: int) -> bool: ...
    def heartbeat(
        self, executor_name: str, info: Telemetry, job_ids: list[int], queue_names: list[str]
    ) -> tuple[list[Lease], list[int]]: ...
    def executor_known(self, name: str) -> bool: ...
    def list_executors(self) -> list[Executor]: ...
    def cancel_requested(self, executor_name: str, job_ids: list[int]) -> list[int]: ...
    def reattach(
        self, job_id: int, attempt: int, executor_name: str, token: str, stalled_after: float
    ) -> JobRow: ...

    # job-scoped calls, fenced by attempt (None: Sourcegraph's unfenced form)
    def job_auth(self, token: str) -> JobAuth | None: ...
    def add_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry: Mapping[str, Any]
    ) -> int: ...
    def update_log_entry(
        self, job_id: int, attempt: int | None, executor_name: str, entry_id: int, entry: Mapping[str, Any]
    ) -> None: ...
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
    ) -> int: ...
    def put_result(
        self, job_id: int, attempt: int | None, executor_name: str, result: Mapping[str, Any]
    ) -> None: ...
    def mark(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        outcome: MarkOutcome,
        message: str = "",
        *,
        retry_backoff: float = 10.0,
    ) -> JobState: ...

    # reading logs and results
    def get_logs(self, job_id: int, *, offsets: Mapping[int, int] | None = None) -> list[LogEntry]: ...
    def read_log(self, job_id: int, entry_id: int, start: int = 0, end: int | None = None) -> bytes: ...
    def log_heads(self, job_id: int, attempt: int) -> list[LogEntry]: ...
    def get_result(self, job_id: int) -> Result | None: ...

    # maintenance and wake-ups
    def reset_stalled(self, stalled_after: float, max_resets: int) -> tuple[list[int], list[int]]: ...
    def publish(self, key: str) -> None: ...
    async def listen(self, notify: Callable[[str], None], ready: asyncio.Event | None = None) -> None: ...
