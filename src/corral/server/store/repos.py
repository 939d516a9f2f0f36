"""Repositories the server mirrors (bare repositories under its repos directory)."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from corral.errors import NotFound
from corral.server.store.engine import Clock, Database
from corral.server.store.rows import Repo
from corral.server.store.tables import repos


class Repos:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def upsert(self, name: str, path: str, source: str) -> bool:
        """Record a repository; True when it is new."""
        now = self.clock()
        with self.db.write() as conn:
            if self.db.insert_new(
                conn, repos, name=name, path=path, source=source, created_at=now, updated_at=now
            ):
                return True
            conn.execute(
                update(repos).where(repos.c.name == name).values(path=path, source=source, updated_at=now)
            )
            return False

    def get(self, name: str) -> Repo:
        with self.db.read() as conn:
            r = conn.execute(select(repos).where(repos.c.name == name)).first()
        if r is None:
            raise NotFound(f"unknown repository {name!r}: add it first (corral repo add)")
        return Repo(**r._mapping)

    def list(self) -> list[Repo]:
        with self.db.read() as conn:
            return [Repo(**r._mapping) for r in conn.execute(select(repos).order_by(repos.c.name))]

    def remove(self, name: str) -> Repo:
        """Forget a repository; returns its row (the caller removes the mirror)."""
        with self.db.write() as conn:
            r = conn.execute(select(repos).where(repos.c.name == name)).first()
            if r is None:
                raise NotFound(f"unknown repository {name!r}")
            conn.execute(delete(repos).where(repos.c.name == name))
        return Repo(**r._mapping)
