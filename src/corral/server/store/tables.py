"""The store's tables (SQLAlchemy Core). Times are UNIX epoch seconds (float) in every column.

The schema is created and evolved only by the Alembic migrations beside this module; this file is
their single description for queries.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

queues = Table(
    "queues",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
)

repos = Table(
    "repos",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("path", Text, nullable=False),  # bare repository under the server's repos directory
    Column("source", Text, nullable=False),  # where it was added from
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", String(64), ForeignKey("queues.name"), nullable=False),
    Column("state", String(16), nullable=False),  # queued processing completed errored failed canceled
    Column("spec", JSON, nullable=False),  # the Job's producer fields (wire names)
    Column("priority", Integer, nullable=False, default=0),
    Column("repository_name", String(255), nullable=False, default=""),
    Column("commit", String(64), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("process_after", Float, nullable=True),  # earliest dequeue time (retry backoff)
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("last_heartbeat_at", Float, nullable=True),
    Column("executor_name", String(255), nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("num_resets", Integer, nullable=False, default=0),
    Column("num_failures", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("cancel", Boolean, nullable=False, default=False),
    Column("failure_message", Text, nullable=True),
    Column("outcome", String(32), nullable=True),  # short machine reason: oom, timeout, image, ...
    Index("ix_jobs_dequeue", "queue", "state", "priority", "id"),
    Index("ix_jobs_state_heartbeat", "state", "last_heartbeat_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("executor_name", String(255), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("state", String(16), nullable=True),  # how this attempt ended
)

log_entries = Table(
    "log_entries",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("entry_id", Integer, primary_key=True),  # 1-based per job, as Sourcegraph numbers them
    Column("attempt", Integer, nullable=False),
    Column("key", String(255), nullable=False),
    Column("command", JSON, nullable=False),
    Column("start_time", String(40), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Column("out_len", Integer, nullable=False, default=0),  # bytes (UTF-8) stored so far
)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("entry_id", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_log_chunks_entry", "job_id", "entry_id", "id"),
)

results = Table(
    "results",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("exit_codes", JSON, nullable=False),
    Column("diff", Text, nullable=False),
    Column("files", JSON, nullable=False),  # path -> base64
    Column("created_at", Float, nullable=False),
)

executors = Table(
    "executors",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("hostname", String(255), nullable=False, default=""),
    Column("queues", JSON, nullable=False),
    Column("os", String(64), nullable=False, default=""),
    Column("architecture", String(64), nullable=False, default=""),
    Column("executor_version", String(64), nullable=False, default=""),
    Column("git_version", String(64), nullable=False, default=""),
    Column("docker_version", String(64), nullable=False, default=""),
    Column("src_cli_version", String(64), nullable=False, default=""),
    Column("qemu_version", String(64), nullable=False, default=""),
    Column("running_job_ids", JSON, nullable=False),
    Column("first_seen_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
)
