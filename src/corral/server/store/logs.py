"""Execution logs: entries numbered per job, their output stored as append-only chunks.

A reader (a follower, a UI paging through a big log, a spool resync) asks for output from a byte
offset: SQL works out where each chunk ends (a running sum of chunk lengths, which neither SQLite
nor PostgreSQL computes by reading the bytes) and returns only the chunks past that offset, instead
of the whole log being read and sliced. Every write announces `log:<job id>`,
which wakes followers on every replica (PostgreSQL NOTIFY; on SQLite the server wakes its own).

Besides the executors' entries, the store writes one of its own when an attempt ends without
finishing the job and the job goes on (`add_marker`, called by jobs.py in the same transaction): an
entry keyed MARKER_KEY, of the ended attempt, whose output says what happened, e.g.
"[corral] attempt 1 lost (executor gone); attempt 2 next: executor exec-a stopped heartbeating;
requeued". Producers read it with the rest of the log; it never has an exit code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, func, insert, select, text, update

from corral.errors import Conflict, NotFound, TooLarge
from corral.server.store.engine import Database
from corral.server.store.rows import LogEntry
from corral.server.store.tables import log_chunks, log_entries

if TYPE_CHECKING:
    from corral.server.store.jobs import Jobs

MARKER_KEY = "corral.attempt"  # the key of the store's own entries (an attempt ended, the job goes on)


def log_key(job_id: int) -> str:
    """The wake-up key of a job's log (and of its end)."""
    return f"log:{job_id}"


def add_marker(conn: Connection, job_id: int, attempt: int, text: str, now: float) -> int:
    """Within a write transaction: the store's own entry `text` (one or more whole lines) at the end
    of the job's log, as part of attempt `attempt`; returns its number. The caller announces it."""
    last = conn.execute(
        select(func.max(log_entries.c.entry_id)).where(log_entries.c.job_id == job_id)
    ).scalar()
    entry_id = int(last or 0) + 1
    out = text.encode()
    conn.execute(
        insert(log_entries).values(
            job_id=job_id,
            entry_id=entry_id,
            attempt=attempt,
            key=MARKER_KEY,
            command=[],
            start_time=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            exit_code=None,
            duration_ms=None,
            out_len=len(out),
        )
    )
    conn.execute(insert(log_chunks).values(job_id=job_id, entry_id=entry_id, data=out))
    return entry_id


class Logs:
    def __init__(self, db: Database, jobs: Jobs) -> None:
        self.db, self.jobs = db, jobs

    def add(self, job_id: int, attempt: int | None, executor_name: str, entry: Mapping[str, Any]) -> int:
        """A new entry of the live attempt (Sourcegraph's addExecutionLogEntry); returns its number."""
        with self.db.write() as conn:
            job = self.jobs.fence(conn, job_id, attempt, executor_name)
            last = conn.execute(
                select(func.max(log_entries.c.entry_id)).where(log_entries.c.job_id == job_id)
            ).scalar()
            entry_id = int(last or 0) + 1
            out = (entry.get("out") or "").encode()
            conn.execute(
                insert(log_entries).values(
                    job_id=job_id,
                    entry_id=entry_id,
                    attempt=job.attempt,
                    key=entry.get("key", ""),
                    command=entry.get("command") or [],
                    start_time=entry.get("start_time", ""),
                    exit_code=entry.get("exit_code"),
                    duration_ms=entry.get("duration_ms"),
                    out_len=len(out),
                )
            )
            if out:
                self._chunk(conn, job_id, entry_id, out)
            self.db.announce(conn, log_key(job_id))
            return entry_id

    def update(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        entry_id: int,
        entry: Mapping[str, Any],
    ) -> None:
        """Sourcegraph's update: the whole output so far replaces what was stored."""
        out = (entry.get("out") or "").encode()
        with self.db.write() as conn:
            job = self.jobs.fence(conn, job_id, attempt, executor_name)
            self._entry(conn, job_id, entry_id, job.attempt)
            conn.execute(
                log_chunks.delete().where(log_chunks.c.job_id == job_id, log_chunks.c.entry_id == entry_id)
            )
            if out:
                self._chunk(conn, job_id, entry_id, out)
            conn.execute(
                update(log_entries)
                .where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
                .values(
                    out_len=len(out), exit_code=entry.get("exit_code"), duration_ms=entry.get("duration_ms")
                )
            )
            self.db.announce(conn, log_key(job_id))

    def append(
        self,
        job_id: int,
        attempt: int | None,
        executor_name: str,
        entry_id: int,
        offset: int,
        data: bytes,
        *,
        exit_code: int | None = None,
        duration_ms: int | None = None,
        max_bytes: int,
    ) -> int:
        """corral's append: `data` goes at byte `offset`; a mismatch is a Conflict carrying ours."""
        with self.db.write() as conn:
            job = self.jobs.fence(conn, job_id, attempt, executor_name)
            e = self._entry(conn, job_id, entry_id, job.attempt)
            if offset != e.out_len:
                raise Conflict(f"log offset {offset} does not match the stored {e.out_len}", offset=e.out_len)
            if e.out_len + len(data) > max_bytes:
                # 413, never a plain 400: "too big" is not a malformed request, and the executor
                # (which caps within the cap it was told, X-Corral-Log-Max-Bytes) keeps the job going.
                raise TooLarge(
                    f"log entry {entry_id} would exceed the server's cap of {max_bytes} bytes",
                    maxBytes=max_bytes,
                    offset=int(e.out_len),
                )
            end = int(e.out_len) + len(data)
            if data:
                self._chunk(conn, job_id, entry_id, data)
            values: dict[str, Any] = {"out_len": end}
            if exit_code is not None:
                values["exit_code"] = exit_code
            if duration_ms is not None:
                values["duration_ms"] = duration_ms
            conn.execute(
                update(log_entries)
                .where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
                .values(**values)
            )
            self.db.announce(conn, log_key(job_id))
            return end

    def get(self, job_id: int, *, offsets: Mapping[int, int] | None = None) -> list[LogEntry]:
        """Every log entry of the job with its output; with `offsets` (entry -> bytes already seen)
        only the rest. Reads only the chunks that hold bytes past those offsets."""
        seen = offsets or {}
        with self.db.read() as conn:
            if not self.jobs.exists(conn, job_id):
                raise NotFound(f"unknown job {job_id}")
            entries = conn.execute(
                select(log_entries).where(log_entries.c.job_id == job_id).order_by(log_entries.c.entry_id)
            ).all()
            wanted = [
                (e.entry_id, seen.get(e.entry_id, 0)) for e in entries if e.out_len > seen.get(e.entry_id, 0)
            ]
            data = self._read(conn, job_id, wanted)
        return [
            _entry(e, out_bytes=data.get(e.entry_id, b""), offset=seen.get(e.entry_id, 0)) for e in entries
        ]

    def heads(self, job_id: int, attempt: int) -> list[LogEntry]:
        """The entries of one attempt without their output (out_len says how much is stored), in
        order: where a reattached executor's writes resume. The store's own markers are left out."""
        with self.db.read() as conn:
            entries = conn.execute(
                select(log_entries)
                .where(
                    log_entries.c.job_id == job_id,
                    log_entries.c.attempt == attempt,
                    log_entries.c.key != MARKER_KEY,
                )
                .order_by(log_entries.c.entry_id)
            ).all()
        return [_entry(e) for e in entries]

    def read(self, job_id: int, entry_id: int, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of one entry's output (end: all there is)."""
        with self.db.read() as conn:
            got = self._read(conn, job_id, [(entry_id, start)], end=end)
        return got.get(entry_id, b"")

    # -- internals ------------------------------------------------------------------------------
    def _chunk(self, conn: Connection, job_id: int, entry_id: int, data: bytes) -> None:
        conn.execute(insert(log_chunks).values(job_id=job_id, entry_id=entry_id, data=data))

    def _entry(self, conn: Connection, job_id: int, entry_id: int, attempt: int) -> Row[Any]:
        r = conn.execute(
            select(log_entries).where(log_entries.c.job_id == job_id, log_entries.c.entry_id == entry_id)
        ).first()
        if r is None or r.attempt != attempt:
            raise NotFound(f"unknown log entry {entry_id} of job {job_id}")
        return r

    def _read(
        self, conn: Connection, job_id: int, wanted: list[tuple[int, int]], *, end: int | None = None
    ) -> dict[int, bytes]:
        """Output of each (entry, start) from byte `start` (to `end`), from the chunks that hold it."""
        out: dict[int, bytes] = {}
        for entry_id, start in wanted:
            params = {"job": job_id, "entry": entry_id, "start": start, "end": end}
            rows = conn.execute(_SQL_CHUNKS_FROM if end is None else _SQL_CHUNKS_RANGE, params).all()
            if not rows:
                continue
            first_start = int(rows[0].chunk_end) - len(rows[0].data)
            joined = b"".join(bytes(r.data) for r in rows)[max(start - first_start, 0) :]
            out[entry_id] = joined if end is None else joined[: max(end - start, 0)]
        return out


# The chunks of one entry that end past :start (and begin before :end), in order. The inner query
# reads only chunk ids and lengths; the bytes are read for the chunks returned.
_CHUNKS = (
    "SELECT c.data, w.chunk_end FROM log_chunks c JOIN ("
    "SELECT id, SUM(length(data)) OVER (ORDER BY id) AS chunk_end FROM log_chunks"
    " WHERE job_id = :job AND entry_id = :entry) w ON w.id = c.id WHERE w.chunk_end > :start"
)
_SQL_CHUNKS_FROM = text(_CHUNKS + " ORDER BY c.id")
_SQL_CHUNKS_RANGE = text(_CHUNKS + " AND w.chunk_end - length(c.data) < :end ORDER BY c.id")


def _entry(e: Any, *, out_bytes: bytes = b"", offset: int = 0) -> LogEntry:
    """A log_entries row as a LogEntry, with the output read for it (if any) from `offset`."""
    return LogEntry(
        job_id=e.job_id,
        entry_id=e.entry_id,
        attempt=e.attempt,
        key=e.key,
        command=e.command,
        start_time=e.start_time,
        exit_code=e.exit_code,
        duration_ms=e.duration_ms,
        out_len=e.out_len,
        out_bytes=out_bytes,
        offset=offset,
    )
