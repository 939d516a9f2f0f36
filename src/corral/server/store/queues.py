"""Queues: created on first use (or by migrate, the defaults), never deleted."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from corral.errors import Invalid
from corral.protocol import QUEUE_NAME_RE
from corral.server.store.engine import Clock, Database
from corral.server.store.rows import QueueInfo
from corral.server.store.tables import jobs, queues

DEFAULT_QUEUES = ("batches", "codeintel")


class Queues:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock
        self.known: set[str] = set()  # queues known to exist (never deleted): no look-up per enqueue

    def ensure(self, conn: Connection, name: str) -> None:
        """Create queue `name` unless it exists (within the caller's write transaction)."""
        if name in self.known:
            return
        if not QUEUE_NAME_RE.match(name):
            raise Invalid(f"invalid queue name {name!r}: use 1-64 characters of [a-z0-9_-]")
        self.db.insert_new(conn, queues, name=name, created_at=self.clock())

    def ensure_defaults(self) -> None:
        with self.db.write() as conn:
            for q in DEFAULT_QUEUES:
                self.ensure(conn, q)

    def exists(self, name: str) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(queues.c.name).where(queues.c.name == name)).first() is not None

    def list(self) -> list[QueueInfo]:
        with self.db.read() as conn:
            names = [r.name for r in conn.execute(select(queues.c.name).order_by(queues.c.name))]
            counts = conn.execute(
                select(jobs.c.queue, jobs.c.state, func.count()).group_by(jobs.c.queue, jobs.c.state)
            ).all()
        out: dict[str, dict[str, int]] = {n: {} for n in names}
        for q, state, n in counts:
            out.setdefault(q, {})[state] = n
        return [QueueInfo(name, c) for name, c in out.items()]
