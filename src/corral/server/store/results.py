"""What a job produced (exit codes, diff, files), uploaded by its live attempt before the mark."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select, update

from corral.server.store.engine import Clock, Database
from corral.server.store.jobs import Jobs
from corral.server.store.rows import Result
from corral.server.store.tables import jobs, results

OUTCOME_MAX = 32  # characters of a job's outcome reason


class Results:
    def __init__(self, db: Database, clock: Clock, jobs: Jobs) -> None:
        self.db, self.clock, self.jobs = db, clock, jobs

    def put(self, job_id: int, attempt: int | None, executor_name: str, result: Mapping[str, Any]) -> None:
        now = self.clock()
        with self.db.write() as conn:
            job = self.jobs.fence(conn, job_id, attempt, executor_name)
            conn.execute(results.delete().where(results.c.job_id == job_id))
            conn.execute(
                insert(results).values(
                    job_id=job_id,
                    attempt=job.attempt,
                    exit_codes=result.get("exit_codes", []),
                    diff=result.get("diff", ""),
                    files=result.get("files", {}),
                    created_at=now,
                )
            )
            if result.get("outcome"):
                outcome = str(result["outcome"])[:OUTCOME_MAX]
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(outcome=outcome))

    def get(self, job_id: int) -> Result | None:
        with self.db.read() as conn:
            r = conn.execute(select(results).where(results.c.job_id == job_id)).first()
        return Result(**r._mapping) if r is not None else None
