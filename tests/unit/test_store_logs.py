"""Logs read by offset and range (in-memory SQLite: memory_store), and the pure mark rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.errors import NotFound
from corral.server.store import JobState, MarkOutcome, SqlStore, after_mark, memory_store

SPEC = {"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}]}
CAP = 1 << 20


@pytest.fixture
def store() -> Iterator[SqlStore]:
    s = memory_store()
    yield s
    s.close()


def _running(store: SqlStore) -> tuple[int, int]:
    job_id = store.enqueue("batches", dict(SPEC)).id
    assert store.dequeue(["batches"], "exec-1", "tok") is not None
    entry = store.add_log_entry(job_id, 1, "exec-1", {"key": "step.0", "out": "ab"})
    return job_id, entry


def test_memory_store_is_migrated_and_typed(store: SqlStore) -> None:
    row = store.enqueue("batches", dict(SPEC))
    assert row.state is JobState.QUEUED and row.state == "queued"
    assert store.inline and not store.shared
    assert {q.name for q in store.list_queues()} >= {"batches", "codeintel"}


def test_reads_from_an_offset_and_a_range_across_chunks(store: SqlStore) -> None:
    job_id, entry = _running(store)
    offset = 2
    for part in (b"cd", b"efgh", b"i", b"jklmn"):
        offset = store.append_log(job_id, 1, "exec-1", entry, offset, part, max_bytes=CAP)
    full = b"abcdefghijklmn"
    assert store.get_logs(job_id)[0].out_bytes == full
    for start in range(len(full) + 2):
        (e,) = store.get_logs(job_id, offsets={entry: start})
        assert (e.out_bytes, e.offset, e.out_len) == (full[start:], start, len(full))
        for end in range(start, len(full) + 2):
            assert store.read_log(job_id, entry, start, end) == full[start:end]
    assert store.read_log(job_id, entry, 5) == full[5:]


def test_entries_seen_to_their_end_read_no_chunks(store: SqlStore) -> None:
    job_id, entry = _running(store)
    second = store.add_log_entry(job_id, 1, "exec-1", {"key": "step.1", "out": "xyz"})
    a, b = store.get_logs(job_id, offsets={entry: 2, second: 1})
    assert (a.out_bytes, b.out_bytes) == (b"", b"yz")


def test_update_replaces_the_chunks_and_reads_follow(store: SqlStore) -> None:
    job_id, entry = _running(store)
    store.append_log(job_id, 1, "exec-1", entry, 2, b"cd", max_bytes=CAP)
    store.update_log_entry(job_id, 1, "exec-1", entry, {"out": "0123456"})
    assert store.read_log(job_id, entry, 3) == b"3456"
    assert store.get_logs(job_id, offsets={entry: 4})[0].out_bytes == b"456"


def test_logs_of_an_unknown_job(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.get_logs(404)
    assert store.read_log(404, 1) == b""


@pytest.mark.parametrize(
    ("outcome", "cancel", "failures", "expected"),
    [
        (MarkOutcome.COMPLETE, True, 0, JobState.COMPLETED),
        (MarkOutcome.ERRORED, True, 0, JobState.CANCELED),
        (MarkOutcome.ERRORED, False, 0, JobState.ERRORED),
        (MarkOutcome.ERRORED, False, 2, JobState.FAILED),
        (MarkOutcome.FAILED, False, 0, JobState.FAILED),
    ],
)
def test_after_mark(outcome: MarkOutcome, cancel: bool, failures: int, expected: JobState) -> None:
    t = after_mark(
        outcome, "m", cancel=cancel, num_failures=failures, max_attempts=3, now=100.0, retry_backoff=10.0
    )
    assert t.state is expected
    if expected is JobState.ERRORED:
        assert t.process_after == 100.0 + 10.0 * 2**failures and t.finished_at is None
    else:
        assert t.finished_at == 100.0 and t.process_after is None
