"""Migrations: 0001 is frozen (it creates the schema of its day, whatever tables.py says now), and
the migrated head is exactly what tables.py describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect

from corral.server.store.engine import MIGRATIONS, driver_url
from corral.server.store.tables import metadata
from tests.postgreskit import fresh_database_url

# What 0001 created on SQLite when it was frozen (sqlite_master, tables and indexes).
SQLITE_0001 = {
    "queues": "name VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (name)",
    "repos": "name VARCHAR(255) NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,"
    " created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (name)",
    "jobs": "id INTEGER NOT NULL, queue VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, spec JSON NOT NULL,"
    ' priority INTEGER NOT NULL, repository_name VARCHAR(255) NOT NULL, "commit" VARCHAR(64) NOT NULL,'
    " created_at FLOAT NOT NULL, process_after FLOAT, started_at FLOAT, finished_at FLOAT,"
    " last_heartbeat_at FLOAT, executor_name VARCHAR(255), attempt INTEGER NOT NULL,"
    " num_resets INTEGER NOT NULL, num_failures INTEGER NOT NULL, max_attempts INTEGER NOT NULL,"
    " cancel BOOLEAN NOT NULL, failure_message TEXT, outcome VARCHAR(32), PRIMARY KEY (id),"
    " FOREIGN KEY(queue) REFERENCES queues (name)",
    "attempts": "job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, executor_name VARCHAR(255) NOT NULL,"
    " token_hash VARCHAR(64) NOT NULL, started_at FLOAT NOT NULL, finished_at FLOAT, state VARCHAR(16),"
    " PRIMARY KEY (job_id, attempt), FOREIGN KEY(job_id) REFERENCES jobs (id), UNIQUE (token_hash)",
    "log_entries": "job_id INTEGER NOT NULL, entry_id INTEGER NOT NULL, attempt INTEGER NOT NULL,"
    ' "key" VARCHAR(255) NOT NULL, command JSON NOT NULL, start_time VARCHAR(40) NOT NULL, exit_code INTEGER,'
    " duration_ms INTEGER, out_len INTEGER NOT NULL, PRIMARY KEY (job_id, entry_id),"
    " FOREIGN KEY(job_id) REFERENCES jobs (id)",
    "log_chunks": "id INTEGER NOT NULL, job_id INTEGER NOT NULL, entry_id INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (id)",
    "results": "job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, exit_codes JSON NOT NULL,"
    " diff TEXT NOT NULL, files JSON NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (job_id),"
    " FOREIGN KEY(job_id) REFERENCES jobs (id)",
    "executors": "name VARCHAR(255) NOT NULL, hostname VARCHAR(255) NOT NULL, queues JSON NOT NULL,"
    " os VARCHAR(64) NOT NULL, architecture VARCHAR(64) NOT NULL, executor_version VARCHAR(64) NOT NULL,"
    " git_version VARCHAR(64) NOT NULL, docker_version VARCHAR(64) NOT NULL,"
    " src_cli_version VARCHAR(64) NOT NULL, qemu_version VARCHAR(64) NOT NULL, running_job_ids JSON NOT NULL,"
    " first_seen_at FLOAT NOT NULL, last_seen_at FLOAT NOT NULL, PRIMARY KEY (name)",
    "ix_jobs_dequeue": "CREATE INDEX ix_jobs_dequeue ON jobs (queue, state, priority, id)",
    "ix_jobs_state_heartbeat": "CREATE INDEX ix_jobs_state_heartbeat ON jobs (state, last_heartbeat_at)",
    "ix_log_chunks_entry": "CREATE INDEX ix_log_chunks_entry ON log_chunks (job_id, entry_id, id)",
}


def _migrated(url: str, revision: str) -> Engine:
    engine = create_engine(driver_url(url))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return engine


def _schema(engine: Engine) -> dict[str, Any]:
    insp = inspect(engine)
    return {
        t: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
            insp.get_pk_constraint(t)["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(t)),
            sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
        )
        for t in insp.get_table_names()
        if t != "alembic_version"
    }


def test_0001_is_frozen_on_sqlite(tmp_path: Path) -> None:
    engine = _migrated(f"sqlite:///{tmp_path / 'db'}", "0001")
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'alembic%' AND sql IS NOT NULL"
        ).all()
    engine.dispose()
    got = {}
    for name, sql in rows:
        flat = " ".join(sql.replace("\n", " ").replace("\t", " ").split())
        got[name] = flat.removeprefix(f"CREATE TABLE {name} ( ").removesuffix(" )")
    assert got == SQLITE_0001


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migrated_head_is_what_tables_py_describes(backend: str, tmp_path: Path) -> None:
    if backend == "postgres":
        migrated_url, created_url = fresh_database_url(), fresh_database_url()
    else:
        migrated_url, created_url = f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'c.db'}"
    migrated = _migrated(migrated_url, "head")
    created = create_engine(driver_url(created_url))
    metadata.create_all(created)
    try:
        assert _schema(migrated) == _schema(created)
    finally:
        migrated.dispose()
        created.dispose()
