"""Unit tests of the job store with an injected clock, on SQLite (a file in tmp_path) and PostgreSQL
(an emptied database per test: tests/postgreskit.py; skipped off CI when no server runs).

They pin down the job lifecycle of design.md: dequeue order and attempts, leases and heartbeats,
mark transitions, retries with backoff, stalled resets, cancel, fencing of stale attempts, and logs.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.errors import Conflict, Invalid, NotFound, TooLarge
from corral.server.statuses import status_for
from corral.server.store import DEFAULT_QUEUES, RESET_FAILURE, JobAuth, SqlStore, Store, hash_token
from corral.server.store.logs import MARKER_KEY
from corral.server.store.tables import attempts, jobs
from tests.postgreskit import fresh_database_url

T0 = 1_700_000_000.0
SPEC: dict[str, Any] = {"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}]}
STALLED = 15.0
MAX_RESETS = 3
CAP = 1024


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return fresh_database_url()
    return f"sqlite:///{tmp_path / 'corral.db'}"


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    s = SqlStore(db_url, clock=clock)
    s.migrate()
    yield s
    s.close()


def enqueue(store: Store, queue: str = "batches", **kw: Any) -> int:
    return int(store.enqueue(queue, dict(SPEC), **kw)["id"])


def take(store: Store, executor: str = "exec-1", queues: tuple[str, ...] = ("batches",)) -> dict[str, Any]:
    token = secrets.token_urlsafe(16)
    row = store.dequeue(list(queues), executor, token)
    assert row is not None, "expected a job"
    return {**asdict(row), "token": token}


def stall(store: Store, clock: Clock) -> tuple[list[int], list[int]]:
    clock.advance(STALLED + 1)
    return store.reset_stalled(STALLED, MAX_RESETS)


# -- queues, enqueue, dequeue ------------------------------------------------------------------
def test_migrate_creates_default_queues_and_is_idempotent(store: Store) -> None:
    store.migrate()
    names = [q["name"] for q in store.list_queues()]
    assert set(DEFAULT_QUEUES) <= set(names)
    assert store.queue_exists("batches") and store.queue_exists("codeintel")
    assert not store.queue_exists("nope")


def test_enqueue_creates_a_queued_job_and_a_new_queue(store: Store, clock: Clock) -> None:
    row = store.enqueue("my-queue_1", {**SPEC, "repositoryName": "r", "commit": "abc"}, priority=2)
    assert row["state"] == "queued"
    assert row["queue"] == "my-queue_1"
    assert row["repository_name"] == "r" and row["commit"] == "abc"
    assert row["priority"] == 2 and row["attempt"] == 0 and row["created_at"] == T0
    assert store.queue_exists("my-queue_1")
    counts = {q["name"]: q["counts"] for q in store.list_queues()}
    assert counts["my-queue_1"] == {"queued": 1}
    assert counts["batches"] == {}


@pytest.mark.parametrize("name", ["", "Upper", "has space", "a/b", "x" * 65, "dot.ted", "batches\n"])
def test_enqueue_refuses_invalid_queue_names(store: Store, name: str) -> None:
    with pytest.raises(Invalid, match="invalid queue name"):
        store.enqueue(name, dict(SPEC))
    assert store.list_jobs() == []


def test_dequeue_orders_by_priority_desc_then_id(store: Store) -> None:
    low1 = enqueue(store, priority=0)
    high1 = enqueue(store, priority=5)
    low2 = enqueue(store, priority=0)
    high2 = enqueue(store, priority=5)
    neg = enqueue(store, priority=-1)
    mid = enqueue(store, priority=1)
    order = [take(store)["id"] for _ in range(6)]
    assert order == [high1, high2, mid, low1, low2, neg]
    assert store.dequeue(["batches"], "exec-1", "t-none") is None


def test_dequeue_takes_only_from_the_named_queues(store: Store) -> None:
    b = enqueue(store, "batches")
    c = enqueue(store, "codeintel")
    assert store.dequeue(["other"], "e", "t0") is None
    assert take(store, queues=("codeintel",))["id"] == c
    assert store.dequeue(["codeintel"], "e", "t1") is None
    assert take(store, queues=("codeintel", "batches"))["id"] == b


def test_dequeue_across_queues_uses_one_order(store: Store) -> None:
    c = enqueue(store, "codeintel", priority=0)
    b = enqueue(store, "batches", priority=3)
    first = take(store, queues=("batches", "codeintel"))
    second = take(store, queues=("batches", "codeintel"))
    assert (first["id"], first["queue"]) == (b, "batches")
    assert (second["id"], second["queue"]) == (c, "codeintel")


def test_dequeue_sets_processing_and_creates_an_attempt_with_a_token(store: Store, clock: Clock) -> None:
    job_id = enqueue(store, "codeintel")
    clock.advance(3)
    row = take(store, "exec-1", ("codeintel",))
    assert row["id"] == job_id
    assert row["state"] == "processing"
    assert row["attempt"] == 1
    assert row["executor_name"] == "exec-1"
    assert row["started_at"] == T0 + 3 and row["last_heartbeat_at"] == T0 + 3
    assert store.job_auth(row["token"]) == JobAuth(job_id, 1, "exec-1", "codeintel", "")
    assert store.job_auth("not-a-token") is None
    # Only the hash of the token is stored.
    with store.engine.connect() as conn:
        stored = conn.execute(select(attempts.c.token_hash).where(attempts.c.job_id == job_id)).scalar()
    assert stored == hash_token(row["token"]) and stored != row["token"]


def test_each_dequeue_of_the_same_job_is_a_new_attempt_with_its_own_token(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    first = take(store, "exec-1")
    assert stall(store, clock) == ([job_id], [])
    second = take(store, "exec-2")
    assert second["id"] == job_id and second["attempt"] == 2
    assert second["token"] != first["token"]
    assert store.job_auth(first["token"]) == JobAuth(job_id, 1, "exec-1", "batches", "")
    assert store.job_auth(second["token"]) == JobAuth(job_id, 2, "exec-2", "batches", "")


# -- heartbeats and leases ---------------------------------------------------------------------
def test_heartbeat_renews_the_lease(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    take(store, "exec-1")
    for _ in range(3):
        clock.advance(STALLED - 1)  # never silent for longer than the threshold
        rows, cancel = store.heartbeat("exec-1", {}, [job_id], ["batches"])
        assert [r["id"] for r in rows] == [job_id] and cancel == []
        assert store.reset_stalled(STALLED, MAX_RESETS) == ([], [])
    job = store.get_job(job_id)
    assert job["state"] == "processing" and job["last_heartbeat_at"] == clock.t
    # Silence past the threshold: the lease is lost.
    assert stall(store, clock) == ([job_id], [])


def test_heartbeat_only_knows_jobs_processing_for_that_executor(store: Store) -> None:
    mine = enqueue(store)
    theirs = enqueue(store)
    queued = enqueue(store)
    take(store, "exec-1")
    take(store, "exec-2")
    rows, cancel = store.heartbeat("exec-1", {}, [mine, theirs, queued, 9999], ["batches"])
    assert [r["id"] for r in rows] == [mine]
    assert cancel == []


def test_heartbeat_returns_cancel_ids(store: Store) -> None:
    a = enqueue(store)
    b = enqueue(store)
    take(store)
    take(store)
    store.request_cancel(b)
    rows, cancel = store.heartbeat("exec-1", {}, [a, b], ["batches"])
    assert sorted(r["id"] for r in rows) == [a, b]
    assert cancel == [b]
    assert store.cancel_requested("exec-1", [a, b]) == [b]
    assert store.cancel_requested("exec-2", [a, b]) == []


def test_heartbeat_records_the_executor(store: Store, clock: Clock) -> None:
    info = {"os": "linux", "architecture": "amd64", "executor_version": "0.1.0", "git_version": "2.39"}
    store.heartbeat("exec-1", info, [], ["batches", "codeintel"])
    assert store.executor_known("exec-1") and not store.executor_known("exec-2")
    clock.advance(5)
    store.heartbeat("exec-1", info | {"executor_version": "0.1.1"}, [], ["batches"])
    (ex,) = store.list_executors()
    assert ex["name"] == "exec-1" and ex["os"] == "linux" and ex["architecture"] == "amd64"
    assert ex["executor_version"] == "0.1.1" and ex["git_version"] == "2.39"
    assert ex["queues"] == ["batches"]
    assert ex["first_seen_at"] == T0 and ex["last_seen_at"] == T0 + 5


# -- marks -------------------------------------------------------------------------------------
def test_mark_complete(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    row = take(store)
    clock.advance(7)
    assert store.mark(job_id, row["attempt"], "exec-1", "complete") == "completed"
    job = store.get_job(job_id)
    assert job["state"] == "completed" and job["finished_at"] == T0 + 7
    assert job["failure_message"] is None
    # Completed exactly once.
    with pytest.raises(Conflict):
        store.mark(job_id, row["attempt"], "exec-1", "complete")
    with pytest.raises(Conflict):
        store.mark(job_id, row["attempt"], "exec-1", "failed", "late")
    assert store.get_job(job_id)["state"] == "completed"


def test_mark_failed_is_final(store: Store) -> None:
    job_id = enqueue(store)
    row = take(store)
    assert store.mark(job_id, row["attempt"], "exec-1", "failed", "boom") == "failed"
    job = store.get_job(job_id)
    assert job["state"] == "failed" and job["failure_message"] == "boom" and job["num_failures"] == 1
    assert store.dequeue(["batches"], "exec-1", "again") is None


def test_mark_by_another_executor_or_unknown_job(store: Store) -> None:
    job_id = enqueue(store)
    take(store, "exec-1")
    with pytest.raises(Conflict, match="not processing for executor"):
        store.mark(job_id, 1, "exec-2", "complete")
    with pytest.raises(NotFound):
        store.mark(9999, 1, "exec-1", "complete")
    assert store.get_job(job_id)["state"] == "processing"


def test_mark_without_attempt_is_the_sourcegraph_form(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    assert store.mark(job_id, None, "exec-1", "complete") == "completed"


def test_errored_retries_with_backoff_then_fails(store: Store, clock: Clock) -> None:
    job_id = enqueue(store, max_attempts=3)
    row = take(store)
    assert store.mark(job_id, row["attempt"], "exec-1", "errored", "flaky 1", retry_backoff=10) == "errored"
    job = store.get_job(job_id)
    assert job["state"] == "errored" and job["num_failures"] == 1
    assert job["failure_message"] == "flaky 1" and job["process_after"] == clock.t + 10
    clock.advance(9.9)
    assert store.dequeue(["batches"], "exec-1", "too-early-1") is None
    clock.advance(0.1)
    row = take(store)
    assert row["attempt"] == 2 and row["process_after"] is None

    # The backoff doubles.
    assert store.mark(job_id, 2, "exec-1", "errored", "flaky 2", retry_backoff=10) == "errored"
    assert store.get_job(job_id)["process_after"] == clock.t + 20
    clock.advance(19.9)
    assert store.dequeue(["batches"], "exec-1", "too-early-2") is None
    clock.advance(0.1)
    row = take(store)
    assert row["attempt"] == 3

    # The last allowed attempt errs: the job fails.
    assert store.mark(job_id, 3, "exec-1", "errored", "flaky 3", retry_backoff=10) == "failed"
    job = store.get_job(job_id)
    assert job["state"] == "failed" and job["num_failures"] == 3 and job["failure_message"] == "flaky 3"
    clock.advance(3600)
    assert store.dequeue(["batches"], "exec-1", "never") is None


def test_waiting_retry_does_not_block_other_jobs(store: Store, clock: Clock) -> None:
    first = enqueue(store, priority=9)
    second = enqueue(store)
    take(store)
    store.mark(first, 1, "exec-1", "errored", "x", retry_backoff=60)
    assert take(store)["id"] == second


# -- stalled jobs ------------------------------------------------------------------------------
def test_reset_stalled_requeues_then_fails_after_max_resets(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    for n in range(1, MAX_RESETS + 1):
        row = take(store, f"exec-{n}")
        assert row["attempt"] == n
        assert stall(store, clock) == ([job_id], [])
        job = store.get_job(job_id)
        assert job["state"] == "queued" and job["num_resets"] == n and job["executor_name"] is None
    take(store, "exec-last")
    assert stall(store, clock) == ([], [job_id])
    job = store.get_job(job_id)
    assert job["state"] == "failed"
    assert job["failure_message"] == "job processor died while handling this message too many times"
    assert RESET_FAILURE == job["failure_message"]
    assert store.dequeue(["batches"], "exec-1", "never") is None


def test_reset_stalled_leaves_fresh_jobs_alone(store: Store, clock: Clock) -> None:
    old = enqueue(store)
    take(store)
    clock.advance(STALLED - 1)
    fresh = enqueue(store)
    take(store)
    clock.advance(2)  # `old` is now silent for STALLED + 1, `fresh` for 2 seconds
    assert store.reset_stalled(STALLED, MAX_RESETS) == ([old], [])
    assert store.get_job(fresh)["state"] == "processing"


def test_reset_stalled_of_a_canceled_job_cancels_it(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    take(store)
    store.request_cancel(job_id)
    assert stall(store, clock) == ([], [job_id])
    assert store.get_job(job_id)["state"] == "canceled"


def markers(store: Store, job_id: int) -> list[tuple[int, str]]:
    """(attempt, output) of the store's own log entries of the job."""
    return [(e.attempt, e.out_bytes.decode()) for e in store.get_logs(job_id) if e.key == MARKER_KEY]


def test_a_requeued_attempt_records_why_and_the_log_says_so(store: Store, clock: Clock) -> None:
    """Issue 15: after kill -9 of its executor, the job's first attempt records a reason, and its log
    shows a marker ("attempt 1 lost (executor gone); attempt 2") that the producers' API returns."""
    job_id = enqueue(store)
    take(store, "exec-a")
    store.add_log_entry(job_id, 1, "exec-a", {"key": "step.0", "out": "working\n"})
    assert stall(store, clock) == ([job_id], [])
    first, *_ = store.jobs.attempts(job_id)  # type: ignore[attr-defined]
    assert (first.state, first.reason) == ("stalled", "executor exec-a stopped heartbeating; requeued")
    assert first.finished_at == clock.t
    line = (
        "[corral] attempt 1 lost (executor gone); attempt 2 next: "
        "executor exec-a stopped heartbeating; requeued\n"
    )
    assert markers(store, job_id) == [(1, line)]
    entries = store.get_logs(job_id)
    assert [(e.entry_id, e.key, e.exit_code) for e in entries] == [(1, "step.0", None), (2, MARKER_KEY, None)]
    # attempt 2's own entries come after it, numbered on
    take(store, "exec-b")
    assert store.add_log_entry(job_id, 2, "exec-b", {"key": "step.0", "out": "again\n"}) == 3
    assert store.mark(job_id, 2, "exec-b", "complete") == "completed"
    second = store.jobs.attempts(job_id)[1]  # type: ignore[attr-defined]
    assert (second.attempt, second.executor_name, second.state, second.reason) == (
        2,
        "exec-b",
        "completed",
        None,
    )


def test_the_last_reset_and_a_canceled_stall_say_how_the_job_ended(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    for n in range(1, MAX_RESETS + 2):
        take(store, f"exec-{n}")
        stall(store, clock)
    assert store.get_job(job_id)["state"] == "failed"
    last = store.jobs.attempts(job_id)[-1]  # type: ignore[attr-defined]
    assert last.reason == f"executor exec-{MAX_RESETS + 1} stopped heartbeating; failed: {RESET_FAILURE}"
    assert markers(store, job_id)[-1] == (
        MAX_RESETS + 1,
        f"[corral] attempt {MAX_RESETS + 1} lost (executor gone): {last.reason}\n",
    )
    assert len(markers(store, job_id)) == MAX_RESETS + 1

    other = enqueue(store)
    take(store, "exec-c")
    store.request_cancel(other)
    stall(store, clock)
    (attempt,) = store.jobs.attempts(other)  # type: ignore[attr-defined]
    assert attempt.reason == "executor exec-c stopped heartbeating; the job was canceled"


def test_an_errored_attempt_records_its_message_and_the_retry_is_marked(store: Store, clock: Clock) -> None:
    """An executor that shuts down marks its job errored: the job is retried, and its log says so."""
    job_id = enqueue(store, max_attempts=2)
    take(store)
    message = "the executor shut down before the job finished"
    assert store.mark(job_id, 1, "exec-1", "errored", message, retry_backoff=10) == "errored"
    (first,) = store.jobs.attempts(job_id)  # type: ignore[attr-defined]
    assert (first.state, first.reason) == ("errored", message)
    assert markers(store, job_id) == [
        (1, f"[corral] attempt 1 errored; attempt 2 next (in 10s): {message}\n")
    ]
    clock.advance(10)
    take(store)
    assert store.mark(job_id, 2, "exec-1", "failed", "step.docker.0 failed with exit code 2") == "failed"
    assert store.jobs.attempts(job_id)[1].reason == "step.docker.0 failed with exit code 2"  # type: ignore[attr-defined]
    assert len(markers(store, job_id)) == 1  # a final failure needs no marker: the job says it


def test_a_released_attempt_records_why(store: Store) -> None:
    job_id = enqueue(store)
    row = take(store)
    assert store.release(job_id, row["attempt"])
    (attempt,) = store.jobs.attempts(job_id)  # type: ignore[attr-defined]
    assert attempt.state == "released" and "had gone" in (attempt.reason or "")
    assert markers(store, job_id) == []
    with pytest.raises(NotFound):
        store.jobs.attempts(job_id + 1000)  # type: ignore[attr-defined]


# -- cancel ------------------------------------------------------------------------------------
def test_cancel_of_a_queued_job_is_immediate(store: Store, clock: Clock) -> None:
    job_id = enqueue(store)
    row = store.request_cancel(job_id)
    assert row["state"] == "canceled" and row["finished_at"] == clock.t
    assert store.dequeue(["batches"], "exec-1", "t") is None
    with pytest.raises(Conflict, match="already canceled"):
        store.request_cancel(job_id)


def test_cancel_of_an_errored_job_waiting_for_retry(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    store.mark(job_id, 1, "exec-1", "errored", "x")
    assert store.request_cancel(job_id)["state"] == "canceled"


@pytest.mark.parametrize("outcome", ["failed", "errored"])
def test_cancel_of_a_processing_job_flags_it_until_the_executor_marks(store: Store, outcome: str) -> None:
    job_id = enqueue(store)
    take(store)
    row = store.request_cancel(job_id)
    assert row["state"] == "processing" and row["cancel"] is True
    assert store.mark(job_id, 1, "exec-1", outcome, "killed") == "canceled"
    job = store.get_job(job_id)
    assert job["state"] == "canceled" and job["failure_message"] == "killed"
    assert store.dequeue(["batches"], "exec-1", "t") is None


@pytest.mark.parametrize("final", ["complete", "failed"])
def test_cancel_of_a_finished_job_is_a_conflict(store: Store, final: str) -> None:
    job_id = enqueue(store)
    take(store)
    store.mark(job_id, 1, "exec-1", final, "x")
    before = store.get_job(job_id)
    with pytest.raises(Conflict):
        store.request_cancel(job_id)
    assert store.get_job(job_id) == before


def test_cancel_of_an_unknown_job(store: Store) -> None:
    with pytest.raises(NotFound):
        store.request_cancel(424242)


# -- fencing -----------------------------------------------------------------------------------
def _snapshot(store: Store, job_id: int) -> tuple[Any, ...]:
    return store.get_job(job_id), store.get_logs(job_id), store.get_result(job_id)


@pytest.mark.parametrize("second_executor", ["exec-1", "exec-2"])
def test_writes_from_a_stale_attempt_conflict_and_change_nothing(
    store: Store, clock: Clock, second_executor: str
) -> None:
    job_id = enqueue(store)
    take(store, "exec-1")
    assert store.add_log_entry(job_id, 1, "exec-1", {"key": "k", "out": "one"}) == 1
    stall(store, clock)
    take(store, second_executor)  # attempt 2 is the live one now
    entry = store.add_log_entry(job_id, 2, second_executor, {"key": "k2", "out": "two"})
    before = _snapshot(store, job_id)

    stale: list[Any] = [
        lambda: store.add_log_entry(job_id, 1, "exec-1", {"key": "x", "out": "stale"}),
        lambda: store.update_log_entry(job_id, 1, "exec-1", entry, {"out": "stale"}),
        lambda: store.append_log(job_id, 1, "exec-1", entry, 3, b"stale", max_bytes=CAP),
        lambda: store.put_result(job_id, 1, "exec-1", {"exit_codes": [1], "diff": "stale"}),
        lambda: store.mark(job_id, 1, "exec-1", "complete"),
        lambda: store.mark(job_id, 1, "exec-1", "errored", "stale"),
        lambda: store.mark(job_id, 1, "exec-1", "failed", "stale"),
    ]
    for write in stale:
        with pytest.raises(Conflict, match="stale attempt 1"):
            write()
        assert _snapshot(store, job_id) == before

    # The live attempt still works.
    assert store.mark(job_id, 2, second_executor, "complete") == "completed"


def test_a_finished_attempt_cannot_write_again(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    entry = store.add_log_entry(job_id, 1, "exec-1", {"key": "k", "out": "x"})
    store.mark(job_id, 1, "exec-1", "complete")
    before = _snapshot(store, job_id)
    with pytest.raises(Conflict):
        store.append_log(job_id, 1, "exec-1", entry, 1, b"more", max_bytes=CAP)
    with pytest.raises(Conflict):
        store.add_log_entry(job_id, 1, "exec-1", {"key": "k"})
    with pytest.raises(Conflict):
        store.put_result(job_id, 1, "exec-1", {"exit_codes": [0]})
    assert _snapshot(store, job_id) == before


# -- logs and results --------------------------------------------------------------------------
def test_log_entries_are_numbered_from_one_and_update_replaces_output(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    e1 = store.add_log_entry(
        job_id, 1, "exec-1", {"key": "setup.git.init", "command": ["git", "init"], "out": "a"}
    )
    e2 = store.add_log_entry(job_id, 1, "exec-1", {"key": "step.docker.0", "command": ["sh"]})
    assert (e1, e2) == (1, 2)
    store.update_log_entry(job_id, 1, "exec-1", e1, {"out": "abc", "exit_code": 0, "duration_ms": 12})
    logs = store.get_logs(job_id)
    assert [(e["entry_id"], e["key"], e["out_bytes"]) for e in logs] == [
        (1, "setup.git.init", b"abc"),
        (2, "step.docker.0", b""),
    ]
    assert logs[0]["exit_code"] == 0 and logs[0]["duration_ms"] == 12 and logs[0]["attempt"] == 1
    assert logs[0]["command"] == ["git", "init"]
    with pytest.raises(NotFound):
        store.update_log_entry(job_id, 1, "exec-1", 3, {"out": "x"})


def test_append_log_with_offsets(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    entry = store.add_log_entry(job_id, 1, "exec-1", {"key": "step.docker.0"})
    assert store.append_log(job_id, 1, "exec-1", entry, 0, b"hello ", max_bytes=CAP) == 6
    assert store.append_log(job_id, 1, "exec-1", entry, 6, "wörld".encode(), max_bytes=CAP) == 12
    # A resend of bytes the server already has: Conflict carrying the stored offset, nothing appended.
    with pytest.raises(Conflict) as exc:
        store.append_log(job_id, 1, "exec-1", entry, 6, "wörld".encode(), max_bytes=CAP)
    assert exc.value.offset == 12
    with pytest.raises(Conflict) as exc:
        store.append_log(job_id, 1, "exec-1", entry, 20, b"gap", max_bytes=CAP)
    assert exc.value.offset == 12
    assert (
        store.append_log(job_id, 1, "exec-1", entry, 12, b"", exit_code=3, duration_ms=40, max_bytes=CAP)
        == 12
    )
    (e,) = store.get_logs(job_id)
    assert e["out_bytes"] == "hello wörld".encode() and e["exit_code"] == 3 and e["duration_ms"] == 40
    (tail,) = store.get_logs(job_id, offsets={entry: 6})
    assert tail["out_bytes"] == "wörld".encode() and tail["offset"] == 6


def test_append_log_to_an_unknown_entry(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    with pytest.raises(NotFound):
        store.append_log(job_id, 1, "exec-1", 1, 0, b"x", max_bytes=CAP)


def test_log_cap(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    entry = store.add_log_entry(job_id, 1, "exec-1", {"key": "k"})
    assert store.append_log(job_id, 1, "exec-1", entry, 0, b"x" * 10, max_bytes=16) == 10
    # too big is a 413 that names the cap and what is stored, never a plain 400 (Invalid)
    with pytest.raises(TooLarge, match="cap of 16 bytes") as err:
        store.append_log(job_id, 1, "exec-1", entry, 10, b"y" * 7, max_bytes=16)
    assert status_for(err.value) == 413 and err.value.extra == {"maxBytes": 16, "offset": 10}
    assert store.get_logs(job_id)[0]["out_bytes"] == b"x" * 10
    assert store.append_log(job_id, 1, "exec-1", entry, 10, b"y" * 6, max_bytes=16) == 16


def test_logs_of_an_unknown_job(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_logs(31337)
    with pytest.raises(NotFound):
        store.get_job(31337)


def test_results(store: Store) -> None:
    job_id = enqueue(store)
    take(store)
    assert store.get_result(job_id) is None
    store.put_result(job_id, 1, "exec-1", {"exit_codes": [0, 1], "diff": "d1", "files": {}})
    store.put_result(
        job_id, 1, "exec-1", {"exit_codes": [0, 2], "diff": "d2", "files": {"a": "eA=="}, "outcome": "oom"}
    )
    res = store.get_result(job_id)
    assert res is not None
    assert res["exit_codes"] == [0, 2] and res["diff"] == "d2" and res["files"] == {"a": "eA=="}
    assert res["attempt"] == 1
    job = store.get_job(job_id)
    assert job["exit_codes"] == [0, 2] and job["outcome"] == "oom"


# -- listing, repositories ---------------------------------------------------------------------
def test_list_jobs_filters_and_pages(store: Store) -> None:
    ids = [enqueue(store, "batches") for _ in range(4)] + [enqueue(store, "codeintel")]
    take(store)  # ids[0] is processing
    assert [j["id"] for j in store.list_jobs()] == sorted(ids, reverse=True)
    assert [j["id"] for j in store.list_jobs(queue="codeintel")] == [ids[4]]
    assert [j["id"] for j in store.list_jobs(state="processing")] == [ids[0]]
    assert [j["id"] for j in store.list_jobs(queue="batches", limit=2)] == [ids[3], ids[2]]
    assert [j["id"] for j in store.list_jobs(queue="batches", before_id=ids[2])] == [ids[1], ids[0]]


def test_repos(store: Store, clock: Clock) -> None:
    assert store.upsert_repo("github.com/a/b", "github.com/a/b.git", "/src/b") is True
    clock.advance(1)
    assert store.upsert_repo("github.com/a/b", "github.com/a/b.git", "/src/b2") is False
    repo = store.get_repo("github.com/a/b")
    assert repo["source"] == "/src/b2" and repo["created_at"] == T0 and repo["updated_at"] == T0 + 1
    assert [r["name"] for r in store.list_repos()] == ["github.com/a/b"]
    with pytest.raises(NotFound, match="unknown repository"):
        store.get_repo("nope")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_database_is_a_wal_sqlite_file(store: Store, db_url: str) -> None:
    enqueue(store)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


# -- what SQLite holds, PostgreSQL holds too ---------------------------------------------------
def test_wide_values_are_stored_on_both_databases(store: Store, db_url: str) -> None:
    """64-bit integers and strings longer than their VARCHAR size (SQLite enforces neither limit)."""
    big = 2**40
    long_name = "x" * 300
    job_id = int(store.enqueue("batches", {**SPEC, "repositoryName": long_name}, priority=big)["id"])
    low = int(store.enqueue("batches", SPEC, priority=-big)["id"])
    row = take(store, long_name)
    assert (row["id"], row["priority"], row["repository_name"]) == (job_id, big, long_name)
    wide = {"key": long_name, "start_time": "t" * 50, "exit_code": big, "duration_ms": big}
    entry = store.add_log_entry(job_id, 1, long_name, wide)
    (e,) = store.get_logs(job_id)
    assert e["entry_id"] == entry and {k: e[k] for k in wide} == wide
    rows, _ = store.heartbeat(long_name, {"hostname": "h" * 300}, [job_id, big], ["batches"])
    assert [r["id"] for r in rows] == [job_id]
    assert store.cancel_requested(long_name, [big]) == []
    with pytest.raises(NotFound):
        store.get_job(big)
    with pytest.raises(NotFound):
        store.request_cancel(big)
    assert take(store)["id"] == low


def test_nul_characters_in_text(store: Store, db_url: str) -> None:
    """PostgreSQL text cannot hold NUL: there it becomes U+FFFD instead of failing the write."""
    nul = "\ufffd" if db_url.startswith("postgresql") else "\x00"
    job_id = int(store.enqueue("batches", {**SPEC, "note": "a\x00b"})["id"])
    take(store)
    store.add_log_entry(job_id, 1, "exec-1", {"key": "k\x00", "command": ["a\x00"], "out": "o\x00"})
    store.put_result(job_id, 1, "exec-1", {"exit_codes": [0], "diff": "d\x00", "files": {}})
    assert store.mark(job_id, 1, "exec-1", "failed", "boom\x00") == "failed"
    job = store.get_job(job_id)
    assert job["spec"]["note"] == "a\x00b" and job["failure_message"] == f"boom{nul}"
    (e,) = store.get_logs(job_id)
    assert (e["key"], e["command"], e["out_bytes"]) == (f"k{nul}", ["a\x00"], b"o\x00")
    assert (store.get_result(job_id) or {})["diff"] == f"d{nul}"


# -- PostgreSQL only ---------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_dequeue_skips_a_job_locked_by_another_transaction(store: Store) -> None:
    """Another replica holding the best job (FOR UPDATE) is passed by, not waited for."""
    first = enqueue(store, priority=1)
    second = enqueue(store)
    other = SqlStore(store.url)
    try:
        with other.engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            conn.execute(select(jobs.c.id).where(jobs.c.id == first).with_for_update())
            assert take(store)["id"] == second
            assert store.dequeue(["batches"], "exec-1", "none-free") is None
        assert take(store)["id"] == first
    finally:
        other.close()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_migration_widens_a_postgres_schema_made_by_0001(store: Store, db_url: str) -> None:
    """Databases migrated before 0002 had INTEGER and VARCHAR(n) columns: 0002 converts them, data kept."""
    job_id = enqueue(store)
    take(store)
    with store.engine.begin() as conn:
        for table, col, old in [
            ("jobs", "id", "integer"),
            ("attempts", "job_id", "integer"),
            ("jobs", "priority", "integer"),
            ("jobs", "executor_name", "varchar(255)"),
            ("log_entries", "key", "varchar(255)"),
            ("log_entries", "duration_ms", "integer"),
        ]:
            conn.exec_driver_sql(f'ALTER TABLE {table} ALTER COLUMN "{col}" TYPE {old}')
        conn.exec_driver_sql("ALTER SEQUENCE jobs_id_seq AS integer")
        conn.exec_driver_sql("DROP TABLE files")  # made by 0003, after 0001
        conn.exec_driver_sql("ALTER TABLE attempts DROP COLUMN reason")  # made by 0004
        conn.exec_driver_sql("DROP TABLE secrets")  # made by 0005
        conn.exec_driver_sql("DROP TABLE secret_accesses")  # made by 0005
        conn.exec_driver_sql("ALTER TABLE executors DROP COLUMN kubernetes_version")  # made by 0007
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    store.migrate()
    with store.engine.connect() as conn:
        types = dict(
            conn.exec_driver_sql(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name <> 'alembic_version'"
            ).all()
        )
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        seq = conn.exec_driver_sql("SELECT data_type FROM pg_sequences WHERE sequencename = 'jobs_id_seq'")
        assert seq.scalar() == "bigint"
    assert version == "0007"
    assert types["jobs.priority"] == "bigint" and types["log_entries.key"] == "text"
    assert [c for c, t in types.items() if t in ("integer", "character varying")] == []
    assert store.get_job(job_id)["state"] == "processing"
    assert enqueue(store, priority=2**40) > job_id


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_libpq_style_url_uses_psycopg(store: Store, db_url: str) -> None:
    plain = db_url.replace("postgresql+psycopg://", "postgresql://")
    for url in (plain, plain.replace("postgresql://", "postgres://")):
        other = SqlStore(url)
        try:
            assert other.engine.dialect.driver == "psycopg"
            assert other.queue_exists("batches")
        finally:
            other.close()
