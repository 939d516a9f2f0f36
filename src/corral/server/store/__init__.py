"""The job store: the `Store` Protocol (base.py), its rows and states (rows.py), and `SqlStore`
(sql.py) on SQLite or PostgreSQL, one module per aggregate:

    engine.py     the database: dialect, locks, migrations, LISTEN/NOTIFY (the one place they differ)
    queues.py     queues          repos.py      repositories
    jobs.py       jobs, attempts, leases, fencing, marks, stalled resets (prebuilt hot-path SQL)
    logs.py       log entries and chunks, read by offset
    results.py    results         executors.py  executors seen by heartbeat
    files.py      the file store (files by bucket and key, bounded)
    tables.py     today's schema  migrations/   Alembic revisions (0001 frozen)
"""

from __future__ import annotations

from corral.server.store.base import Store, Telemetry
from corral.server.store.files import FileInfo, StoredFile
from corral.server.store.jobs import RESET_FAILURE, after_mark, hash_token
from corral.server.store.logs import log_key
from corral.server.store.queues import DEFAULT_QUEUES
from corral.server.store.rows import (
    DEQUEUEABLE,
    TERMINAL,
    AttemptEnd,
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
from corral.server.store.sql import SqlStore, memory_store

__all__ = [
    "DEFAULT_QUEUES",
    "DEQUEUEABLE",
    "RESET_FAILURE",
    "TERMINAL",
    "AttemptEnd",
    "Executor",
    "FileInfo",
    "JobAuth",
    "JobRow",
    "JobState",
    "Lease",
    "LogEntry",
    "MarkOutcome",
    "QueueInfo",
    "Repo",
    "Result",
    "SqlStore",
    "Store",
    "StoredFile",
    "Telemetry",
    "after_mark",
    "hash_token",
    "log_key",
    "memory_store",
]
