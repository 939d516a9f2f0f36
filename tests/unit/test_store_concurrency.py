"""Concurrent store calls on SQLite and PostgreSQL: every job is handed out exactly once, and racing
writers neither fail nor undo each other.

Threads share one Store (one process), and two Store objects share one database (as two server
processes would): no job is handed out twice and none is lost. PostgreSQL gets an emptied database
per test (tests/postgreskit.py); off CI it is skipped when no server runs.
"""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.errors import Conflict
from corral.server.store import SqlStore, Store
from corral.server.store.tables import attempts
from tests.postgreskit import fresh_database_url

SPEC = {"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}]}
THREADS = 8
JOIN_TIMEOUT = 60.0  # seconds; a hung worker fails the test instead of hanging the run


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return fresh_database_url()
    return f"sqlite:///{tmp_path / 'corral.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = SqlStore(db_url)
    s.migrate()
    yield s
    s.close()


def _run(workers: list[threading.Thread]) -> None:
    for w in workers:
        w.start()
    for w in workers:
        w.join(JOIN_TIMEOUT)
        assert not w.is_alive(), f"{w.name} did not finish"


def _drain(stores: list[Store], queues: list[str], got: dict[str, list[int]], errors: list[BaseException]):
    def worker(i: int) -> None:
        name = f"exec-{i}"
        s = stores[i % len(stores)]
        try:
            while True:
                row = s.dequeue(queues, name, secrets.token_urlsafe(16))
                if row is None:
                    return
                assert row["executor_name"] == name and row["state"] == "processing"
                got[name].append(row["id"])
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    return worker


def _check_exactly_once(store: Store, expected: list[int], got: dict[str, list[int]]) -> None:
    handed = [i for ids in got.values() for i in ids]
    dupes = [i for i, n in Counter(handed).items() if n > 1]
    assert dupes == [], f"jobs handed out more than once: {dupes}"
    assert sorted(handed) == sorted(expected), "some jobs were lost"
    for name, ids in got.items():
        for job_id in ids:
            job = store.get_job(job_id)
            assert job["state"] == "processing" and job["attempt"] == 1 and job["executor_name"] == name


def test_threads_sharing_a_store_dequeue_each_job_once(store: Store) -> None:
    expected = [int(store.enqueue("batches" if i % 2 else "codeintel", SPEC)["id"]) for i in range(240)]
    got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(THREADS)}
    errors: list[BaseException] = []
    worker = _drain([store], ["batches", "codeintel"], got, errors)
    _run([threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(THREADS)])
    assert errors == []
    _check_exactly_once(store, expected, got)


def test_two_stores_on_one_database_dequeue_each_job_once(store: Store, db_url: str) -> None:
    other = SqlStore(db_url)
    try:
        expected = [int(store.enqueue("batches", SPEC)["id"]) for _ in range(160)]
        got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(THREADS)}
        errors: list[BaseException] = []
        worker = _drain([store, other], ["batches"], got, errors)
        _run([threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(THREADS)])
        assert errors == []
        _check_exactly_once(store, expected, got)
    finally:
        other.close()


def test_dequeues_racing_enqueues_lose_nothing(store: Store) -> None:
    total = 200
    produced: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []
    got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(THREADS)}

    def producer() -> None:
        try:
            for _ in range(total):
                produced.append(int(store.enqueue("batches", SPEC)["id"]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def consumer(i: int) -> None:
        name = f"exec-{i}"
        try:
            while True:
                finished = done.is_set()  # read before the dequeue: an empty answer after it is final
                row = store.dequeue(["batches"], name, secrets.token_urlsafe(16))
                if row is not None:
                    got[name].append(row["id"])
                elif finished:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, name="producer")]
    threads += [threading.Thread(target=consumer, args=(i,), name=f"c{i}") for i in range(THREADS)]
    _run(threads)
    assert errors == []
    assert len(produced) == total
    _check_exactly_once(store, produced, got)


def _together(n: int, call: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run `call(i)` in n threads released at once; returns (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            results.append(call(i))
        except BaseException as exc:
            errors.append(exc)

    _run([threading.Thread(target=run, args=(i,), name=f"t{i}") for i in range(n)])
    return results, errors


def test_concurrent_migrations_of_a_new_database(db_url: str) -> None:
    """Server replicas starting at once on an empty database: one migrates, the others find it done."""
    stores = [SqlStore(db_url) for _ in range(4)]
    try:
        _, errors = _together(len(stores), lambda i: stores[i].migrate())
        assert errors == []
        assert {"batches", "codeintel"} <= {q["name"] for q in stores[0].list_queues()}
        assert stores[1].enqueue("batches", SPEC)["state"] == "queued"
    finally:
        for s in stores:
            s.close()


_MIGRATE = """
import pathlib, sys, time
from corral.server.store import SqlStore
store = SqlStore(sys.argv[1])
print("ready", flush=True)
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.002)
store.migrate()
store.close()
"""


def test_server_processes_migrating_a_new_database_at_once(db_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, db_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        outcomes = [(p.wait(JOIN_TIMEOUT), p.stderr.read() if p.stderr else "") for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert [rc for rc, _ in outcomes] == [0, 0, 0], [
        [ln for ln in err.splitlines() if "Error" in ln][-1:] for _, err in outcomes
    ]
    s = SqlStore(db_url)
    try:
        assert {"batches", "codeintel"} <= {q["name"] for q in s.list_queues()}
    finally:
        s.close()


def test_a_server_opening_a_database_another_process_holds_waits_for_wal_mode(tmp_path: Path) -> None:
    """Switching a new database to WAL needs an exclusive lock and SQLite answers SQLITE_BUSY at
    once, without the busy handler: a server starting beside another one's open transaction
    failed with "database is locked" (CI: 1 of 3 processes migrating at once). It now waits."""
    path = tmp_path / "db.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a rollback-journal writer's RESERVED lock, held 0.5 s
    threading.Timer(0.5, other.rollback).start()
    store = SqlStore(f"sqlite:///{path}")
    try:
        store.migrate()
        assert {"batches", "codeintel"} <= {q["name"] for q in store.list_queues()}
    finally:
        store.close()
        other.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_concurrent_first_use_of_a_queue_repo_and_executor(store: Store) -> None:
    """Enqueues into a new queue, re-adds of one repository and first heartbeats of one executor race."""
    for rnd in range(5):
        queue, repo, executor = f"new-{rnd}", f"github.com/x/r{rnd}", f"exec-new-{rnd}"

        def enqueue(i: int, q: str = queue) -> int:
            return int(store.enqueue(q, SPEC)["id"])

        def add_repo(i: int, r: str = repo) -> bool:
            return store.upsert_repo(r, f"{r}.git", f"/src/{i}")

        def heartbeat(i: int, e: str = executor, q: str = queue) -> object:
            return store.heartbeat(e, {"os": f"os{i}"}, [], [q])

        ids, errors = _together(THREADS, enqueue)
        assert errors == [] and len(set(ids)) == THREADS
        added, errors = _together(THREADS, add_repo)
        assert errors == [] and sorted(added) == [False] * (THREADS - 1) + [True]
        _, errors = _together(THREADS, heartbeat)
        assert errors == []
    assert len(store.list_executors()) == 5
    assert {q["name"]: q["counts"] for q in store.list_queues()}["new-4"] == {"queued": THREADS}


def test_concurrent_log_entries_of_one_attempt_get_distinct_numbers(store: Store) -> None:
    job_id = int(store.enqueue("batches", SPEC)["id"])
    assert store.dequeue(["batches"], "exec-1", "t") is not None
    results, errors = _together(
        THREADS, lambda i: [store.add_log_entry(job_id, 1, "exec-1", {"key": f"k{i}"}) for _ in range(10)]
    )
    assert errors == []
    numbers = sorted(n for ns in results for n in ns)
    assert numbers == list(range(1, THREADS * 10 + 1))


class _Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _mark_all(s: Store, rows: list[dict[str, Any]], marked: dict[int, str]) -> None:
    for r in rows:
        try:
            marked[r["id"]] = s.mark(r["id"], r["attempt"], r["executor_name"], "complete")
        except Conflict:
            marked[r["id"]] = "conflict"


def _attempt_state(s: Store, job_id: int, attempt: int) -> str | None:
    with s.engine.connect() as conn:
        q = select(attempts.c.state).where(attempts.c.job_id == job_id, attempts.c.attempt == attempt)
        return conn.execute(q).scalar()


def test_marks_racing_the_stalled_job_reset_stay_consistent(db_url: str) -> None:
    """The executor marks its jobs while the resetter finds them silent: each job ends up either
    completed (and its attempt too) or requeued (and the late mark refused), never half of each."""
    clock = _Clock()
    s = SqlStore(db_url, clock=clock)
    try:
        s.migrate()
        for _ in range(3):
            ids = [int(s.enqueue("batches", SPEC)["id"]) for _ in range(40)]
            rows = [s.dequeue(["batches"], "exec-1", secrets.token_urlsafe(16)) for _ in ids]
            clock.t += 100  # every lease has run out
            marked: dict[int, str] = {}
            reset: list[tuple[list[int], list[int]]] = []
            workers = [
                threading.Thread(target=_mark_all, args=(s, [r for r in rows[i::4] if r], marked))
                for i in range(4)
            ]
            workers.append(threading.Thread(target=lambda out=reset: out.append(s.reset_stalled(15.0, 3))))
            _run(workers)
            requeued = set(reset[0][0])
            for job_id in ids:
                got = (marked[job_id], s.get_job(job_id)["state"], _attempt_state(s, job_id, 1))
                if job_id in requeued:
                    assert got == ("conflict", "queued", "stalled")
                else:
                    assert got == ("completed", "completed", "completed")
            while (r := s.dequeue(["batches"], "exec-2", secrets.token_urlsafe(16))) is not None:
                s.mark(r["id"], r["attempt"], "exec-2", "complete")
    finally:
        s.close()
