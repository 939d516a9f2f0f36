"""Executors as their heartbeats describe them."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, select, update

from corral.server.store.engine import Database
from corral.server.store.rows import Executor
from corral.server.store.tables import executors

# Telemetry fields a heartbeat carries (all optional), with their column bound (characters).
TEXT_FIELDS = (
    "os",
    "architecture",
    "executor_version",
    "git_version",
    "docker_version",
    "src_cli_version",
    "qemu_version",
    "kubernetes_version",
)
TEXT_MAX = 64  # characters
HOSTNAME_MAX = 255  # characters


class Executors:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        conn: Connection,
        name: str,
        info: Mapping[str, str | None],
        job_ids: list[int],
        queue_names: list[str],
        now: float,
    ) -> None:
        """Create or renew the executor's row (within the caller's write transaction)."""
        values: dict[str, object] = {k: (info.get(k) or "")[:TEXT_MAX] for k in TEXT_FIELDS}
        values.update(
            hostname=(info.get("hostname") or "")[:HOSTNAME_MAX],
            queues=queue_names,
            running_job_ids=job_ids,
            last_seen_at=now,
        )
        renew = update(executors).where(executors.c.name == name).values(**values)
        if conn.execute(renew).rowcount == 0 and not self.db.insert_new(
            conn, executors, name=name, first_seen_at=now, **values
        ):
            conn.execute(renew)  # PostgreSQL: a concurrent first heartbeat inserted it

    def known(self, name: str) -> bool:
        with self.db.read() as conn:
            q = select(executors.c.name).where(executors.c.name == name)
            return conn.execute(q).first() is not None

    def list(self) -> list[Executor]:
        with self.db.read() as conn:
            q = select(executors).order_by(executors.c.last_seen_at.desc())
            return [Executor(**r._mapping) for r in conn.execute(q)]
