"""Jobs and their attempts: enqueue, dequeue (a new attempt with a lease), heartbeat leases,
cancel, the attempt fence of every job-scoped write, marks, and the stalled-job reset.

Every attempt that ends records why (attempts.reason): its mark's message, "executor X stopped
heartbeating; requeued" (the resetter), or that it was handed to an executor that had gone. When an
attempt ends and the job goes on (requeued after its executor went silent, retried after markErrored,
e.g. an executor that shut down), the job's log gets the store's marker entry saying so
(logs.add_marker): "[corral] attempt 1 lost (executor gone); attempt 2 next: ...".

The hot paths (dequeue, job auth, fence, mark) are prebuilt SQL: statement construction and cache
key work per call cost about a quarter of a cycle's server time (d2e3bda: 146 -> ~205 cycles/s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, TextualSelect, bindparam, insert, select, text, update

from corral.errors import Conflict, NotFound
from corral.server.store.engine import Clock, Database
from corral.server.store.logs import add_marker, log_key
from corral.server.store.queues import Queues
from corral.server.store.rows import (
    DEQUEUEABLE,
    TERMINAL,
    AttemptEnd,
    AttemptRow,
    JobAuth,
    JobRow,
    JobState,
    Lease,
    MarkOutcome,
)
from corral.server.store.tables import attempts, jobs, results

RESET_FAILURE = "job processor died while handling this message too many times"
CANCELED_MESSAGE = "canceled"
MAX_REASON = 2000  # characters of a message kept as an attempt's reason and in a marker


def _short(message: str) -> str:
    return message if len(message) <= MAX_REASON else message[: MAX_REASON - 1] + "…"


def stalled_reason(executor_name: str | None) -> str:
    """Why the resetter ended an attempt (the attempt's reason)."""
    return f"executor {executor_name or '(unknown)'} stopped heartbeating; requeued"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Transition:
    """What a mark does to a job (see `after_mark`)."""

    state: JobState
    message: str | None
    num_failures: int
    process_after: float | None
    finished_at: float | None


def after_mark(
    outcome: MarkOutcome,
    message: str,
    *,
    cancel: bool,
    num_failures: int,
    max_attempts: int,
    now: float,
    retry_backoff: float,
) -> Transition:
    """The rules of design.md: complete is final; a canceled job ends canceled whatever the
    executor says; errored is retried after a backoff that doubles (retry_backoff * 2^failures)
    until max_attempts, then the job fails; failed is final."""
    failures = num_failures + 1
    if outcome == MarkOutcome.COMPLETE:
        return Transition(JobState.COMPLETED, None, num_failures, None, now)
    if cancel:
        return Transition(JobState.CANCELED, message or CANCELED_MESSAGE, failures, None, now)
    if outcome == MarkOutcome.ERRORED and failures < max_attempts:
        backoff = retry_backoff * (2**num_failures)
        return Transition(JobState.ERRORED, message, failures, now + backoff, None)
    return Transition(JobState.FAILED, message, failures, None, now)


def _states(states: Iterable[JobState]) -> str:
    return ", ".join(f"'{s.value}'" for s in states)


# -- prebuilt statements --------------------------------------------------------------------------
_SQL_JOB_AUTH = text(
    "SELECT a.job_id, a.attempt, a.executor_name, j.queue, j.repository_name "
    "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.token_hash = :h"
)
_FENCE = (
    "SELECT id, attempt, state, executor_name, cancel, num_failures, max_attempts FROM jobs WHERE id = :id"
)
_SQL_MARK_JOB = text(
    "UPDATE jobs SET state = :state, finished_at = :finished_at, last_heartbeat_at = NULL, "
    "failure_message = :message, num_failures = :num_failures, process_after = :process_after WHERE id = :id"
).bindparams(bindparam("message", type_=jobs.c.failure_message.type))  # the column's NUL handling
_SQL_MARK_ATTEMPT = text(
    "UPDATE attempts SET finished_at = :now, state = :state, reason = :reason "
    "WHERE job_id = :id AND attempt = :attempt"
).bindparams(bindparam("reason", type_=attempts.c.reason.type))


def _dequeue_sql(db: Database) -> TextualSelect:
    waiting = _states(DEQUEUEABLE)
    return (
        text(
            f"UPDATE jobs SET state = '{JobState.PROCESSING.value}', attempt = attempt + 1, "
            "executor_name = :executor, started_at = :now, last_heartbeat_at = :now, "
            "finished_at = NULL, process_after = NULL "
            f"WHERE id = (SELECT id FROM jobs WHERE queue IN :queues AND state IN ({waiting}) "
            "AND (process_after IS NULL OR process_after <= :now) ORDER BY priority DESC, id LIMIT 1"
            f"{db.skip_locked}) AND state IN ({waiting}) "
            "RETURNING " + ", ".join(f'"{c.name}"' for c in jobs.c)
        )
        .bindparams(bindparam("queues", expanding=True))
        .columns(*jobs.c)
    )


class Jobs:
    def __init__(self, db: Database, clock: Clock, queues: Queues) -> None:
        self.db, self.clock, self.queues = db, clock, queues
        self._sql_dequeue = _dequeue_sql(db)
        self._sql_fence = text(_FENCE + db.for_update)

    # -- producers ------------------------------------------------------------------------------
    def enqueue(self, queue: str, spec: dict[str, Any], *, priority: int, max_attempts: int) -> JobRow:
        now = self.clock()
        with self.db.write() as conn:
            self.queues.ensure(conn, queue)
            row = conn.execute(
                insert(jobs)
                .values(
                    queue=queue,
                    state=JobState.QUEUED.value,
                    spec=spec,
                    priority=priority,
                    repository_name=spec.get("repositoryName", ""),
                    commit=spec.get("commit", ""),
                    created_at=now,
                    attempt=0,
                    num_resets=0,
                    num_failures=0,
                    max_attempts=max_attempts,
                    cancel=False,
                )
                .returning(*jobs.c)
            ).one()
        self.queues.known.add(queue)  # after the commit: the queue row exists for good
        return JobRow.of(row._mapping)

    def get(self, job_id: int) -> JobRow:
        with self.db.read() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if r is None:
                raise NotFound(f"unknown job {job_id}")
            res = conn.execute(select(results.c.exit_codes).where(results.c.job_id == job_id)).first()
        return JobRow.of(r._mapping, list(res.exit_codes) if res is not None else [])

    def state(self, job_id: int) -> tuple[JobState, str | None]:
        """The job's state and failure message (a cheap look for followers of its log)."""
        with self.db.read() as conn:
            q = select(jobs.c.state, jobs.c.failure_message).where(jobs.c.id == job_id)
            r = conn.execute(q).first()
        if r is None:
            raise NotFound(f"unknown job {job_id}")
        return JobState(r.state), r.failure_message

    def exists(self, conn: Connection, job_id: int) -> bool:
        return conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None

    def find(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        repository: str | None = None,
    ) -> list[JobRow]:
        q = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if queue:
            q = q.where(jobs.c.queue == queue)
        if repository:
            q = q.where(jobs.c.repository_name == repository)
        if state:
            q = q.where(jobs.c.state == state)
        if before_id:
            q = q.where(jobs.c.id < before_id)
        with self.db.read() as conn:
            return [JobRow.of(r._mapping) for r in conn.execute(q)]

    def request_cancel(self, job_id: int) -> JobRow:
        """Cancel a job: at once when it waits; through its executor when it runs."""
        now = self.clock()
        with self.db.write() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
            if r is None:
                raise NotFound(f"unknown job {job_id}")
            if r.state in TERMINAL:
                raise Conflict(f"job {job_id} is already {r.state}")
            values: dict[str, Any] = {"cancel": True}
            if r.state in DEQUEUEABLE:
                values.update(
                    state=JobState.CANCELED.value, finished_at=now, failure_message=CANCELED_MESSAGE
                )
                self.db.announce(conn, f"log:{job_id}")
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            return JobRow.of(conn.execute(select(jobs).where(jobs.c.id == job_id)).one()._mapping)

    # -- executors ------------------------------------------------------------------------------
    def dequeue(self, queue_names: list[str], executor_name: str, token: str) -> JobRow | None:
        """Hand the best waiting job of these queues to the executor, as a new attempt."""
        now = self.clock()
        with self.db.write() as conn:
            # One statement picks and takes the job (the subquery's row lock skips rows that another
            # replica is taking on PostgreSQL; SQLite's writer lock serializes).
            params = {"queues": queue_names, "now": now, "executor": executor_name}
            row = conn.execute(self._sql_dequeue, params).first()
            if row is None:
                return None
            conn.execute(
                insert(attempts).values(
                    job_id=row.id,
                    attempt=row.attempt,
                    executor_name=executor_name,
                    token_hash=hash_token(token),
                    started_at=now,
                )
            )
            return JobRow.of(row._mapping)

    def release(self, job_id: int, attempt: int) -> bool:
        """Give back a job that was handed to an executor that had already gone (its long-poll
        ended before the answer): queued again, without counting a reset. The attempt stays used,
        so its token is stale from now on."""
        now = self.clock()
        with self.db.write() as conn:
            n = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.state == JobState.PROCESSING.value
                )
                .values(
                    state=JobState.QUEUED.value, executor_name=None, started_at=None, last_heartbeat_at=None
                )
            ).rowcount
            if n:
                conn.execute(
                    update(attempts)
                    .where(attempts.c.job_id == job_id, attempts.c.attempt == attempt)
                    .values(
                        finished_at=now,
                        state=AttemptEnd.RELEASED.value,
                        reason="handed to an executor that had gone (its request ended first); queued again",
                    )
                )
            return bool(n)

    def renew(self, conn: Connection, executor_name: str, job_ids: list[int], now: float) -> list[Lease]:
        """Renew the leases of the executor's jobs among `job_ids` (in the caller's transaction)."""
        if not job_ids:
            return []
        owned = (
            jobs.c.id.in_(job_ids),
            jobs.c.state == JobState.PROCESSING.value,
            jobs.c.executor_name == executor_name,
        )
        conn.execute(update(jobs).where(*owned).values(last_heartbeat_at=now))
        q = select(jobs.c.id, jobs.c.queue, jobs.c.cancel).where(*owned)
        return [Lease(r.id, r.queue, bool(r.cancel)) for r in conn.execute(q)]

    def reattach(
        self, job_id: int, attempt: int, executor_name: str, token: str, stalled_after: float
    ) -> JobRow:
        """An executor that restarted takes back attempt `attempt` of the job it held (corral's
        reattach): only while that attempt is still leased to `executor_name`, i.e. the job is
        processing on that attempt for that executor, not canceled, and its last heartbeat is within
        `stalled_after` (else Conflict; NotFound for an unknown job). The attempt gets the fresh job
        token `token` (the old one, lost with the executor's memory, stops working) and its lease is
        renewed, all in one transaction with the row locked, so the resetter cannot take it meanwhile."""
        now = self.clock()
        with self.db.write() as conn:
            job = self.fence(conn, job_id, attempt, executor_name)
            if job.cancel:
                raise Conflict(f"job {job_id} is being canceled: its attempt {attempt} cannot be reattached")
            beat = conn.execute(select(jobs.c.last_heartbeat_at).where(jobs.c.id == job_id)).scalar()
            if beat is None or beat < now - stalled_after:
                raise Conflict(f"the lease of attempt {attempt} of job {job_id} has expired")
            conn.execute(
                update(attempts)
                .where(attempts.c.job_id == job_id, attempts.c.attempt == attempt)
                .values(token_hash=hash_token(token))
            )
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(last_heartbeat_at=now))
            return JobRow.of(conn.execute(select(jobs).where(jobs.c.id == job_id)).one()._mapping)

    def cancel_requested(self, executor_name: str, job_ids: list[int]) -> list[int]:
        if not job_ids:
            return []
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.id.in_(job_ids),
                    jobs.c.executor_name == executor_name,
                    jobs.c.state == JobState.PROCESSING.value,
                    jobs.c.cancel.is_(True),
                )
            )
            return [r.id for r in rows]

    # -- job-scoped calls (fenced by attempt) ---------------------------------------------------
    def auth(self, token: str) -> JobAuth | None:
        with self.db.read() as conn:
            r = conn.execute(_SQL_JOB_AUTH, {"h": hash_token(token)}).first()
        if r is None:
            return None
        return JobAuth(r.job_id, r.attempt, r.executor_name, r.queue, r.repository_name)

    def fence(self, conn: Connection, job_id: int, attempt: int | None, executor_name: str) -> Row[Any]:
        """The job row, locked until the transaction ends, if this executor's attempt is the live one;
        else Conflict/NotFound."""
        r = conn.execute(self._sql_fence, {"id": job_id}).first()
        if r is None:
            raise NotFound(f"unknown job {job_id}")
        if attempt is not None and attempt != r.attempt:
            raise Conflict(f"stale attempt {attempt} of job {job_id}: the job is on attempt {r.attempt}")
        if r.state != JobState.PROCESSING or r.executor_name != executor_name:
            raise Conflict(f"job {job_id} is not processing for executor {executor_name!r} (state {r.state})")
        return r

    def mark(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        outcome: MarkOutcome,
        message: str = "",
        *,
        retry_backoff: float = 10.0,
    ) -> JobState:
        """End the live attempt: outcome is complete, errored or failed. Returns the job's new state."""
        now = self.clock()
        with self.db.write() as conn:
            job = self.fence(conn, job_id, attempt, executor_name)
            t = after_mark(
                MarkOutcome(outcome),
                message,
                cancel=bool(job.cancel),
                num_failures=job.num_failures,
                max_attempts=job.max_attempts,
                now=now,
                retry_backoff=retry_backoff,
            )
            v = {
                "id": job_id,
                "attempt": job.attempt,
                "now": now,
                "state": t.state.value,
                "finished_at": t.finished_at,
                "num_failures": t.num_failures,
                "message": t.message,
                "process_after": t.process_after,
                "reason": _short(message) if message else None,
            }
            conn.execute(_SQL_MARK_JOB, v)
            conn.execute(_SQL_MARK_ATTEMPT, v)
            if t.state == JobState.ERRORED:  # retried: the log says so (an executor's shutdown, too)
                after = f" (in {t.process_after - now:g}s)" if t.process_after is not None else ""
                why = _short(message or "no reason given")
                line = (
                    f"[corral] attempt {job.attempt} errored; attempt {job.attempt + 1} next{after}: {why}\n"
                )
                add_marker(conn, job_id, job.attempt, line, now)
            if t.state in TERMINAL or t.state == JobState.ERRORED:
                self.db.announce(conn, log_key(job_id))
            return t.state

    # -- maintenance ----------------------------------------------------------------------------
    def reset_stalled(self, stalled_after: float, max_resets: int) -> tuple[list[int], list[int]]:
        """Requeue jobs whose executor went silent; fail those reset too often. Returns (requeued, failed)."""
        now = self.clock()
        requeued: list[int] = []
        failed: list[int] = []
        with self.db.write() as conn:
            # A job being written to right now is locked (and so alive): the next sweep sees it again.
            stalled = conn.execute(
                select(jobs.c.id, jobs.c.num_resets, jobs.c.attempt, jobs.c.cancel, jobs.c.executor_name)
                .where(
                    jobs.c.state == JobState.PROCESSING.value, jobs.c.last_heartbeat_at < now - stalled_after
                )
                .with_for_update(skip_locked=True)
            ).all()
            for r in stalled:
                values: dict[str, Any]
                lost = f"[corral] attempt {r.attempt} lost (executor gone)"
                reason = stalled_reason(r.executor_name)
                if r.cancel:
                    values = {"state": JobState.CANCELED.value, "finished_at": now}
                    values["failure_message"] = CANCELED_MESSAGE
                    reason = reason.replace("; requeued", "; the job was canceled")
                    line = f"{lost}: {reason}\n"
                    failed.append(r.id)
                elif r.num_resets + 1 > max_resets:
                    values = {"state": JobState.FAILED.value, "finished_at": now}
                    values["failure_message"] = RESET_FAILURE
                    reason = reason.replace("; requeued", f"; failed: {RESET_FAILURE}")
                    line = f"{lost}: {reason}\n"
                    failed.append(r.id)
                else:
                    values = {"state": JobState.QUEUED.value, "executor_name": None, "process_after": None}
                    line = f"{lost}; attempt {r.attempt + 1} next: {reason}\n"
                    requeued.append(r.id)
                values["num_resets"] = r.num_resets + 1
                values["last_heartbeat_at"] = None
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == r.id, jobs.c.state == JobState.PROCESSING.value)
                    .values(**values)
                )
                conn.execute(
                    update(attempts)
                    .where(attempts.c.job_id == r.id, attempts.c.attempt == r.attempt)
                    .values(finished_at=now, state=AttemptEnd.STALLED.value, reason=reason)
                )
                add_marker(conn, r.id, r.attempt, line, now)
            for job_id in (*requeued, *failed):
                self.db.announce(conn, log_key(job_id))
        return requeued, failed

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """The job's attempts, oldest first: who ran each, how and why it ended."""
        with self.db.read() as conn:
            if not self.exists(conn, job_id):
                raise NotFound(f"unknown job {job_id}")
            q = select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.attempt)
            return [AttemptRow.of(r._mapping) for r in conn.execute(q)]
