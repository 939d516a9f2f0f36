"""The store's tables (SQLAlchemy Core). Times are UNIX epoch seconds (float) in every column.

The schema is created and evolved only by the Alembic migrations beside this module (each one
frozen: 0001 spells out its own tables); this file describes today's schema for queries.

Integers and strings hold on PostgreSQL what they hold on SQLite, whose DDL these types leave as it
was: SQLite integers are 64-bit and it enforces no VARCHAR length, so PostgreSQL gets BIGINT and TEXT
(migration 0002 converts older PostgreSQL schemas).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine

Int = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER on SQLite (a rowid key stays one)


class Str(TypeDecorator[str]):
    """VARCHAR(length), or TEXT without one, on SQLite; TEXT on PostgreSQL, where a NUL character,
    which its text cannot hold, is stored as U+FFFD instead of failing the write."""

    impl = String
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return Text() if dialect.name == "postgresql" or self.length is None else String(self.length)

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


metadata = MetaData()

queues = Table(
    "queues",
    metadata,
    Column("name", Str(64), primary_key=True),
    Column("created_at", Float, nullable=False),
)

repos = Table(
    "repos",
    metadata,
    Column("name", Str(255), primary_key=True),
    Column("path", Str(), nullable=False),  # bare repository under the server's repos directory
    Column("source", Str(), nullable=False),  # where it was added from
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Int, primary_key=True, autoincrement=True),
    Column("queue", Str(64), ForeignKey("queues.name"), nullable=False),
    Column("state", Str(16), nullable=False),  # queued processing completed errored failed canceled
    Column("spec", JSON, nullable=False),  # the Job's producer fields (wire names)
    Column("priority", Int, nullable=False, default=0),
    Column("repository_name", Str(255), nullable=False, default=""),
    Column("commit", Str(64), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("process_after", Float, nullable=True),  # earliest dequeue time (retry backoff)
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("last_heartbeat_at", Float, nullable=True),
    Column("executor_name", Str(255), nullable=True),
    Column("attempt", Int, nullable=False, default=0),
    Column("num_resets", Int, nullable=False, default=0),
    Column("num_failures", Int, nullable=False, default=0),
    Column("max_attempts", Int, nullable=False, default=3),
    Column("cancel", Boolean, nullable=False, default=False),
    Column("failure_message", Str(), nullable=True),
    Column("outcome", Str(32), nullable=True),  # short machine reason: oom, timeout, image, ...
    Index("ix_jobs_dequeue", "queue", "state", "priority", "id"),
    Index("ix_jobs_state_heartbeat", "state", "last_heartbeat_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("job_id", Int, ForeignKey("jobs.id"), primary_key=True),
    Column("attempt", Int, primary_key=True),
    Column("executor_name", Str(255), nullable=False),
    Column("token_hash", Str(64), nullable=False, unique=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("state", Str(16), nullable=True),  # how this attempt ended
    Column("reason", Str(), nullable=True),  # why, in words (migration 0004)
)

log_entries = Table(
    "log_entries",
    metadata,
    Column("job_id", Int, ForeignKey("jobs.id"), primary_key=True),
    Column("entry_id", Int, primary_key=True),  # 1-based per job, as Sourcegraph numbers them
    Column("attempt", Int, nullable=False),
    Column("key", Str(255), nullable=False),
    Column("command", JSON, nullable=False),
    Column("start_time", Str(40), nullable=False),
    Column("exit_code", Int, nullable=True),
    Column("duration_ms", Int, nullable=True),
    Column("out_len", Int, nullable=False, default=0),  # bytes (UTF-8) stored so far
)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("id", Int, primary_key=True, autoincrement=True),
    Column("job_id", Int, nullable=False),
    Column("entry_id", Int, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_log_chunks_entry", "job_id", "entry_id", "id"),
)

results = Table(
    "results",
    metadata,
    Column("job_id", Int, ForeignKey("jobs.id"), primary_key=True),
    Column("attempt", Int, nullable=False),
    Column("exit_codes", JSON, nullable=False),
    Column("diff", Str(), nullable=False),
    Column("files", JSON, nullable=False),  # path -> base64
    Column("created_at", Float, nullable=False),
)

executors = Table(
    "executors",
    metadata,
    Column("name", Str(255), primary_key=True),
    Column("hostname", Str(255), nullable=False, default=""),
    Column("queues", JSON, nullable=False),
    Column("os", Str(64), nullable=False, default=""),
    Column("architecture", Str(64), nullable=False, default=""),
    Column("executor_version", Str(64), nullable=False, default=""),
    Column("git_version", Str(64), nullable=False, default=""),
    Column("docker_version", Str(64), nullable=False, default=""),
    Column("src_cli_version", Str(64), nullable=False, default=""),
    Column("qemu_version", Str(64), nullable=False, default=""),
    Column("running_job_ids", JSON, nullable=False),
    Column("first_seen_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("kubernetes_version", Str(64), nullable=False, default=""),  # 0007: after the others
)

files = Table(
    "files",
    metadata,
    Column("bucket", Str(64), primary_key=True),
    Column("key", Str(1024), primary_key=True),
    Column("size", Int, nullable=False),  # bytes of content
    Column("sha256", Str(64), nullable=False),  # hex digest of content
    Column("content", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

secrets = Table(  # executor secrets (migrations 0005, 0006); namespace "" is the global scope
    "secrets",
    metadata,
    Column("id", Int, primary_key=True, autoincrement=True),
    Column("name", Str(128), nullable=False),
    Column("namespace", Str(256), nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # corral.server.secretbox: format, nonce, ciphertext
    Column("key_id", Str(32), nullable=False),  # fingerprint of the key that sealed it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("name", "namespace", name="uq_secrets_name_namespace"),
    sqlite_autoincrement=True,  # migration 0006: a deleted secret's id is never reused
)

secret_accesses = Table(  # each hand-off of a secret's value to a job's attempt (kept after a delete)
    "secret_accesses",
    metadata,
    Column("id", Int, primary_key=True, autoincrement=True),
    Column("secret_id", Int, nullable=False),
    Column("name", Str(128), nullable=False),
    Column("namespace", Str(256), nullable=False),
    Column("job_id", Int, nullable=False),
    Column("attempt", Int, nullable=False),
    Column("executor_name", Str(255), nullable=False),
    Column("accessed_at", Float, nullable=False),
    Index("ix_secret_accesses_secret", "secret_id", "id"),
)
