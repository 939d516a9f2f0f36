"""What the store hands out: the job states and one frozen, typed row per aggregate.

Rows are values: the store builds them, nobody patches them. Reading a field by name
(`row["state"]`) works as well as by attribute, for callers that treat rows as records
(tests, scripts); server code uses attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from corral.protocol.states import DEQUEUEABLE, TERMINAL, JobState

__all__ = [
    "DEQUEUEABLE",
    "TERMINAL",
    "AttemptEnd",
    "AttemptRow",
    "Executor",
    "JobAuth",
    "JobRow",
    "JobState",
    "Lease",
    "LogEntry",
    "MarkOutcome",
    "QueueInfo",
    "Repo",
    "Result",
]


class MarkOutcome(StrEnum):
    """How an executor ends an attempt (markComplete, markErrored, markFailed)."""

    COMPLETE = "complete"
    ERRORED = "errored"
    FAILED = "failed"


class AttemptEnd(StrEnum):
    """How an attempt ended, besides the job state its mark set."""

    RELEASED = "released"  # handed to a client that had gone; the job was queued again
    STALLED = "stalled"  # its executor went silent


class _Record:
    """Read-only access by field name, for callers that read rows as records."""

    __slots__ = ()

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class JobRow(_Record):
    id: int
    queue: str
    state: JobState
    spec: dict[str, Any]  # the Job's producer fields (wire names)
    priority: int
    repository_name: str
    commit: str
    created_at: float
    process_after: float | None
    started_at: float | None
    finished_at: float | None
    last_heartbeat_at: float | None
    executor_name: str | None
    attempt: int
    num_resets: int
    num_failures: int
    max_attempts: int
    cancel: bool
    failure_message: str | None
    outcome: str | None
    exit_codes: list[int] = field(default_factory=list)  # of the stored result (get_job only)

    @classmethod
    def of(cls, m: Any, exit_codes: list[int] | None = None) -> JobRow:
        """From a row mapping of the jobs table."""
        return cls(
            id=m["id"],
            queue=m["queue"],
            state=JobState(m["state"]),
            spec=m["spec"],
            priority=m["priority"],
            repository_name=m["repository_name"],
            commit=m["commit"],
            created_at=m["created_at"],
            process_after=m["process_after"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            last_heartbeat_at=m["last_heartbeat_at"],
            executor_name=m["executor_name"],
            attempt=m["attempt"],
            num_resets=m["num_resets"],
            num_failures=m["num_failures"],
            max_attempts=m["max_attempts"],
            cancel=bool(m["cancel"]),
            failure_message=m["failure_message"],
            outcome=m["outcome"],
            exit_codes=exit_codes if exit_codes is not None else [],
        )


@dataclass(frozen=True, slots=True)
class AttemptRow(_Record):
    """One attempt of a job: who ran it, when, how it ended and why."""

    job_id: int
    attempt: int
    executor_name: str
    started_at: float
    finished_at: float | None
    state: str | None  # a job state its mark set, or an AttemptEnd; None while it runs
    reason: str | None  # why it ended, in words (a mark's message, "executor X stopped heartbeating")

    @classmethod
    def of(cls, m: Any) -> AttemptRow:
        """From a row mapping of the attempts table."""
        return cls(
            job_id=m["job_id"],
            attempt=m["attempt"],
            executor_name=m["executor_name"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            state=m["state"],
            reason=m["reason"],
        )


@dataclass(frozen=True, slots=True)
class JobAuth(_Record):
    """Who a job token belongs to."""

    job_id: int
    attempt: int
    executor_name: str
    queue: str
    repository_name: str


@dataclass(frozen=True, slots=True)
class Lease(_Record):
    """A job an executor's heartbeat renewed."""

    id: int
    queue: str
    cancel: bool


@dataclass(frozen=True, slots=True)
class QueueInfo(_Record):
    name: str
    counts: dict[str, int]  # state -> jobs


@dataclass(frozen=True, slots=True)
class Repo(_Record):
    name: str
    path: str  # of the bare repository, relative to the server's repos directory
    source: str  # where it was added from
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Executor(_Record):
    name: str
    hostname: str
    queues: list[str]
    os: str
    architecture: str
    executor_version: str
    git_version: str
    docker_version: str
    src_cli_version: str
    qemu_version: str
    running_job_ids: list[int]
    first_seen_at: float
    last_seen_at: float
    kubernetes_version: str


@dataclass(frozen=True, slots=True)
class LogEntry(_Record):
    """A log entry and the part of its output asked for: `out_bytes` starts at byte `offset`."""

    job_id: int
    entry_id: int  # 1-based per job
    attempt: int
    key: str
    command: list[str]
    start_time: str
    exit_code: int | None
    duration_ms: int | None
    out_len: int  # bytes stored in all
    out_bytes: bytes = b""
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Result(_Record):
    job_id: int
    attempt: int
    exit_codes: list[int]
    diff: str
    files: dict[str, str]  # path -> base64
    created_at: float
