"""The initial schema: queues, repos, jobs, attempts, logs, results, executors.

Frozen: the tables as they were when this revision was written, defined here and never read from
tables.py, so that later changes to tables.py (each a new migration) cannot change what 0001 creates.
The types are spelled as tables.py's were then: integers BIGINT (INTEGER on SQLite, where a rowid
key stays one), strings VARCHAR(n) on SQLite (TEXT without a length) and TEXT on PostgreSQL.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    JSON,
    BigInteger,
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
from sqlalchemy.types import TypeEngine

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _int() -> TypeEngine[int]:
    return BigInteger().with_variant(Integer(), "sqlite")


def _str(length: int | None = None) -> TypeEngine[str]:
    return Text() if length is None else String(length).with_variant(Text(), "postgresql")


def _metadata() -> MetaData:
    m = MetaData()
    Table(
        "queues",
        m,
        Column("name", _str(64), primary_key=True),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "repos",
        m,
        Column("name", _str(255), primary_key=True),
        Column("path", _str(), nullable=False),
        Column("source", _str(), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    Table(
        "jobs",
        m,
        Column("id", _int(), primary_key=True, autoincrement=True),
        Column("queue", _str(64), ForeignKey("queues.name"), nullable=False),
        Column("state", _str(16), nullable=False),
        Column("spec", JSON, nullable=False),
        Column("priority", _int(), nullable=False),
        Column("repository_name", _str(255), nullable=False),
        Column("commit", _str(64), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("process_after", Float, nullable=True),
        Column("started_at", Float, nullable=True),
        Column("finished_at", Float, nullable=True),
        Column("last_heartbeat_at", Float, nullable=True),
        Column("executor_name", _str(255), nullable=True),
        Column("attempt", _int(), nullable=False),
        Column("num_resets", _int(), nullable=False),
        Column("num_failures", _int(), nullable=False),
        Column("max_attempts", _int(), nullable=False),
        Column("cancel", Boolean, nullable=False),
        Column("failure_message", _str(), nullable=True),
        Column("outcome", _str(32), nullable=True),
        Index("ix_jobs_dequeue", "queue", "state", "priority", "id"),
        Index("ix_jobs_state_heartbeat", "state", "last_heartbeat_at"),
    )
    Table(
        "attempts",
        m,
        Column("job_id", _int(), ForeignKey("jobs.id"), primary_key=True),
        Column("attempt", _int(), primary_key=True),
        Column("executor_name", _str(255), nullable=False),
        Column("token_hash", _str(64), nullable=False, unique=True),
        Column("started_at", Float, nullable=False),
        Column("finished_at", Float, nullable=True),
        Column("state", _str(16), nullable=True),
    )
    Table(
        "log_entries",
        m,
        Column("job_id", _int(), ForeignKey("jobs.id"), primary_key=True),
        Column("entry_id", _int(), primary_key=True),
        Column("attempt", _int(), nullable=False),
        Column("key", _str(255), nullable=False),
        Column("command", JSON, nullable=False),
        Column("start_time", _str(40), nullable=False),
        Column("exit_code", _int(), nullable=True),
        Column("duration_ms", _int(), nullable=True),
        Column("out_len", _int(), nullable=False),
    )
    Table(
        "log_chunks",
        m,
        Column("id", _int(), primary_key=True, autoincrement=True),
        Column("job_id", _int(), nullable=False),
        Column("entry_id", _int(), nullable=False),
        Column("data", LargeBinary, nullable=False),
        Index("ix_log_chunks_entry", "job_id", "entry_id", "id"),
    )
    Table(
        "results",
        m,
        Column("job_id", _int(), ForeignKey("jobs.id"), primary_key=True),
        Column("attempt", _int(), nullable=False),
        Column("exit_codes", JSON, nullable=False),
        Column("diff", _str(), nullable=False),
        Column("files", JSON, nullable=False),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "executors",
        m,
        Column("name", _str(255), primary_key=True),
        Column("hostname", _str(255), nullable=False),
        Column("queues", JSON, nullable=False),
        Column("os", _str(64), nullable=False),
        Column("architecture", _str(64), nullable=False),
        Column("executor_version", _str(64), nullable=False),
        Column("git_version", _str(64), nullable=False),
        Column("docker_version", _str(64), nullable=False),
        Column("src_cli_version", _str(64), nullable=False),
        Column("qemu_version", _str(64), nullable=False),
        Column("running_job_ids", JSON, nullable=False),
        Column("first_seen_at", Float, nullable=False),
        Column("last_seen_at", Float, nullable=False),
    )
    return m


def upgrade() -> None:
    _metadata().create_all(op.get_bind())


def downgrade() -> None:
    _metadata().drop_all(op.get_bind())
