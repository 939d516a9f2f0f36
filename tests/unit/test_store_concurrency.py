"""Concurrent dequeues on the SQLite store hand out every job exactly once.

Threads share one Store (one process), and two Store objects share one database file (as two server
processes would): no job is handed out twice and none is lost.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.server.store.store import Store

SPEC = {"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}]}
THREADS = 8
JOIN_TIMEOUT = 60.0  # seconds; a hung worker fails the test instead of hanging the run


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corral.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
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


def test_two_stores_on_one_file_dequeue_each_job_once(store: Store, db_url: str) -> None:
    other = Store(db_url)
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
