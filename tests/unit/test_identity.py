"""UidPool: distinct uids for concurrent jobs, rotation (a released uid is not the next one handed out),
accounts skipped, exhaustion reported, and per-uid locks shared between executors of one host."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from corral.executor import identity
from corral.executor.identity import FixedIdentity, IdentityExhausted, UidPool, taken_ids
from corral.executor.settings import ExecutorSettings


def test_concurrent_jobs_get_distinct_uids() -> None:
    pool = UidPool(200_000, 200_099, start=200_000)
    got = [pool.acquire() for _ in range(100)]
    assert len({uid for uid, _ in got}) == 100
    assert all(uid == gid for uid, gid in got)
    assert all(200_000 <= uid <= 200_099 for uid, _ in got)
    with pytest.raises(IdentityExhausted, match="EXECUTOR_JOB_UID_RANGE"):
        pool.acquire()
    pool.release(200_042)
    assert pool.acquire() == (200_042, 200_042)  # the only free one


def test_rotation_does_not_reuse_the_uid_just_released() -> None:
    pool = UidPool(200_000, 200_009, start=200_000)
    seen = []
    for _ in range(25):  # one job at a time, as on an executor with EXECUTOR_MAXIMUM_NUM_JOBS=1
        uid, _gid = pool.acquire()
        seen.append(uid)
        pool.release(uid)
    assert all(a != b for a, b in itertools.pairwise(seen))
    assert seen[:10] == list(range(200_000, 200_010))  # round-robin through the whole range
    assert seen[10] == 200_000


def test_accounts_are_skipped() -> None:
    pool = UidPool(1000, 1003, exclude={1000, 1002}, start=1000)
    assert [pool.acquire()[0] for _ in range(2)] == [1001, 1003]
    with pytest.raises(IdentityExhausted):
        pool.acquire()


def test_taken_ids_include_passwd_and_group() -> None:
    ids = taken_ids()
    assert 0 in ids
    text = Path("/etc/passwd").read_text()
    assert {int(line.split(":")[2]) for line in text.splitlines() if line.count(":") >= 3} <= ids


def test_default_range_collides_with_no_account() -> None:
    first, last = identity.DEFAULT_UID_RANGE
    assert not {i for i in taken_ids() if first <= i <= last}
    assert first > 65_535  # above 16-bit ids, systemd's dynamic users and Debian's UID_MAX


def test_invalid_range_refused() -> None:
    with pytest.raises(ValueError):
        UidPool(0, 10)
    with pytest.raises(ValueError):
        UidPool(10, 9)


def test_release_of_unknown_uid_is_harmless() -> None:
    pool = UidPool(200_000, 200_001, start=200_000)
    pool.release(123)
    assert pool.acquire()[0] == 200_000


def test_lock_dir_keeps_two_executors_apart(tmp_path: Path) -> None:
    """A uid locked by another process (another executor on the host) is skipped, then reusable."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / "200000"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        pool = UidPool(200_000, 200_001, lock_dir=tmp_path, start=200_000)
        assert pool.acquire()[0] == 200_001
        with pytest.raises(IdentityExhausted):
            pool.acquire()
    finally:
        holder.communicate(b"")
    pool.release(200_001)
    assert {pool.acquire()[0], pool.acquire()[0]} == {200_000, 200_001}  # the other executor is gone
    other = UidPool(200_000, 200_001, lock_dir=tmp_path, start=200_000)
    with pytest.raises(IdentityExhausted):  # both held by the first pool
        other.acquire()


def test_pool_for_settings(tmp_path: Path) -> None:
    base = {
        "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
        "EXECUTOR_FRONTEND_PASSWORD": "p" * 20,
        "EXECUTOR_QUEUE_NAME": "batches",
    }
    fixed = ExecutorSettings.from_env({**base, "EXECUTOR_JOB_USER": "2000:3000"})
    assert identity.pool_for(fixed) == FixedIdentity(2000, 3000)
    assert identity.acquire(fixed) == identity.acquire(fixed) == (2000, 3000)  # the operator's choice
    ranged = ExecutorSettings.from_env(
        {**base, "EXECUTOR_JOB_UID_RANGE": "310000-310002", "EXECUTOR_JOB_UID_LOCK_DIR": str(tmp_path)}
    )
    pool = identity.pool_for(ranged)
    assert pool is identity.pool_for(ranged)  # one pool per executor configuration
    a, b = identity.acquire(ranged), identity.acquire(ranged)
    assert a != b
    identity.release(ranged, a[0])
    identity.release(ranged, b[0])
    assert isinstance(pool, UidPool) and pool.in_use == frozenset()
