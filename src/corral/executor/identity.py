"""Each running job its own host identity: a uid/gid pair taken from a range, never shared while it runs.

Why: everything the kernel keeps per uid outlives a process and is shared by all processes of that uid:
the user keyring (job B read what job A stored with ``keyctl``), signals and ``ptrace`` between
processes, ``RLIMIT_NPROC``, files in world-writable places. With one fixed uid (the old default
1000, a real account on some hosts) jobs on one executor, and on every executor of a host, could reach
each other. So each job gets a uid/gid (gid = uid) of its own from `UidPool`:

- The default range, 200000-265535 (``EXECUTOR_JOB_UID_RANGE``), lies above ordinary accounts
  (Debian's UID_MAX is 60000, systemd's dynamic users 61184-65519) and above the usual subuid
  ranges start (100000 + 65536 per user). Ids that name an entry of ``/etc/passwd`` or
  ``/etc/group`` are skipped.
- **Rotation:** allocation moves a cursor through the range (starting at a random offset, so a
  restarted executor does not start where the last one did), so the uid a job just released is the
  last one handed out again: a process or kernel object a finished job left behind does not meet
  the next job under its uid.
- **Across executors on one host:** with ``lock_dir`` set, an id is held by an exclusive ``flock`` on
  ``lock_dir/<uid>`` for as long as the job runs. Executors sharing the directory (default
  ``/run/corral/job-uids``) never hand out the same id at the same time; a crashed executor's locks
  vanish with its process.
- ``EXECUTOR_JOB_USER=UID[:GID]`` set explicitly keeps the old behaviour: every job runs as that one
  fixed uid (the operator's choice, e.g. an account that must own the files). `pool_for` returns a
  `FixedIdentity` then.

The handler acquires in `JobHandler._space` and releases in `_finish` once the runtime's cleanup has
killed everything of the job; a job whose cleanup failed keeps its id (it is not reused while
something may still run as it).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from corral.executor.settings import ExecutorSettings

__all__ = [
    "DEFAULT_LOCK_DIR",
    "DEFAULT_UID_RANGE",
    "FixedIdentity",
    "IdentityExhausted",
    "UidPool",
    "acquire",
    "pool_for",
    "release",
    "taken_ids",
]

DEFAULT_UID_RANGE = (200_000, 265_535)  # inclusive
DEFAULT_LOCK_DIR = Path("/run/corral/job-uids")
_BUSY = -1  # UidPool._lock: another process holds this uid


class IdentityExhausted(RuntimeError):
    """Every id of the range is in use (or taken by an account)."""


class Identities(Protocol):
    def acquire(self) -> tuple[int, int]: ...
    def release(self, uid: int) -> None: ...


def taken_ids() -> set[int]:
    """Uids of /etc/passwd and gids of /etc/group: ids that belong to someone already."""
    ids = {entry.pw_uid for entry in pwd.getpwall()}
    ids |= {entry.gr_gid for entry in grp.getgrall()}
    return ids


@dataclass(frozen=True)
class FixedIdentity:
    """EXECUTOR_JOB_USER: every job runs as the same uid/gid (no isolation between jobs by uid)."""

    uid: int
    gid: int

    def acquire(self) -> tuple[int, int]:
        return self.uid, self.gid

    def release(self, uid: int) -> None:
        pass


class UidPool:
    """Hands out distinct uids (gid = uid) from ``first..last``, rotating; thread-safe."""

    def __init__(
        self,
        first: int,
        last: int,
        *,
        exclude: Iterable[int] = (),
        lock_dir: Path | None = None,
        start: int | None = None,
    ) -> None:
        """
        exclude: ids never handed out (by default the caller passes `taken_ids()`).
        lock_dir: directory of per-uid lock files shared with other executors; None = this process only.
        start: first candidate (default: a random id of the range).
        """
        if not 0 < first <= last:
            raise ValueError(f"uid range {first}-{last} is empty or includes root")
        self.first, self.last = first, last
        self.exclude = frozenset(exclude)
        self.lock_dir = lock_dir
        self._size = last - first + 1
        self._next = random.randrange(self._size) if start is None else (start - first) % self._size
        self._used: dict[int, int | None] = {}  # uid -> its lock file descriptor (None without lock_dir)
        self._mutex = threading.Lock()
        if lock_dir is not None:
            lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def in_use(self) -> frozenset[int]:
        with self._mutex:
            return frozenset(self._used)

    def acquire(self) -> tuple[int, int]:
        with self._mutex:
            for _ in range(self._size):
                uid = self.first + self._next
                self._next = (self._next + 1) % self._size
                if uid in self._used or uid in self.exclude:
                    continue
                fd = self._lock(uid)
                if fd == _BUSY:
                    continue  # another executor on this host runs a job as this uid
                self._used[uid] = fd
                return uid, uid
        raise IdentityExhausted(
            f"no free job uid in {self.first}-{self.last} ({len(self._used)} in use here): "
            "widen EXECUTOR_JOB_UID_RANGE"
        )

    def release(self, uid: int) -> None:
        with self._mutex:
            if uid not in self._used:
                return
            fd = self._used.pop(uid)
        if fd is not None:
            os.close(fd)  # drops the flock

    def _lock(self, uid: int) -> int | None:
        """The locked descriptor; None without lock_dir; _BUSY when another process holds the lock."""
        if self.lock_dir is None:
            return None
        path = self.lock_dir / str(uid)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _BUSY
            raise
        return fd


_pools: dict[tuple[int, int, Path], UidPool] = {}
_pools_mutex = threading.Lock()


def pool_for(settings: ExecutorSettings) -> Identities:
    """The identity source of an executor's settings (one per distinct configuration, per process)."""
    if settings.job_uid is not None:
        gid = settings.job_uid if settings.job_gid is None else settings.job_gid
        return FixedIdentity(settings.job_uid, gid)
    first, last = settings.job_uid_range
    key = (first, last, settings.job_uid_lock_dir)
    with _pools_mutex:
        pool = _pools.get(key)
        if pool is None:
            try:
                pool = UidPool(first, last, exclude=taken_ids(), lock_dir=settings.job_uid_lock_dir)
            except PermissionError:  # not root (unit tests with a FakeRuntime): this process only
                pool = UidPool(first, last, exclude=taken_ids())
            _pools[key] = pool
    return pool


def acquire(settings: ExecutorSettings) -> tuple[int, int]:
    """A uid/gid for one job of this executor; hand it back with `release`."""
    return pool_for(settings).acquire()


def release(settings: ExecutorSettings, uid: int) -> None:
    """Give a job's uid back (a no-op for a fixed EXECUTOR_JOB_USER)."""
    pool_for(settings).release(uid)
