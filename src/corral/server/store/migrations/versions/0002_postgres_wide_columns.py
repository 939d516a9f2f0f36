"""PostgreSQL columns hold what SQLite's hold: BIGINT for every integer (SQLite's are 64-bit), TEXT
for every string (SQLite enforces no VARCHAR length). Schemas 0001 created with INTEGER and VARCHAR(n)
are converted; nothing happens on SQLite or on columns already converted (0001 now creates them so).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# As of this revision (frozen here, not read from tables.py).
BIGINT = {
    "jobs": ("id", "priority", "attempt", "num_resets", "num_failures", "max_attempts"),
    "attempts": ("job_id", "attempt"),
    "log_entries": ("job_id", "entry_id", "attempt", "exit_code", "duration_ms", "out_len"),
    "log_chunks": ("id", "job_id", "entry_id"),
    "results": ("job_id", "attempt"),
}
TEXT = {
    "queues": ("name",),
    "repos": ("name",),
    "jobs": ("queue", "state", "repository_name", "commit", "executor_name", "outcome"),
    "attempts": ("executor_name", "token_hash", "state"),
    "log_entries": ("key", "start_time"),
    "executors": (
        "name",
        "hostname",
        "os",
        "architecture",
        "executor_version",
        "git_version",
        "docker_version",
        "src_cli_version",
        "qemu_version",
    ),
}
SERIAL = (("jobs", "id"), ("log_chunks", "id"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    have = {
        (t, c): d
        for t, c, d in bind.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            )
        )
    }
    for table in dict.fromkeys([*BIGINT, *TEXT]):
        changes = [(c, "bigint") for c in BIGINT.get(table, ()) if have[(table, c)] != "bigint"]
        changes += [(c, "text") for c in TEXT.get(table, ()) if have[(table, c)] != "text"]
        if changes:
            alters = ", ".join(f'ALTER COLUMN "{c}" TYPE {t}' for c, t in changes)
            op.execute(f'ALTER TABLE "{table}" {alters}')
    for table, column in SERIAL:
        seq = bind.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column}).scalar()
        if seq:
            op.execute(f"ALTER SEQUENCE {seq} AS bigint")


def downgrade() -> None:
    pass  # narrowing could fail on stored values; the wider columns serve 0001's code as well
