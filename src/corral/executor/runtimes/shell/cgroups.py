"""cgroup v1 handling for the shell runtime: one directory per job, in every controller it needs.

Layout: ``/sys/fs/cgroup/<controller>/<parent>/<name>`` for each controller in `CONTROLLERS`, where
``name`` is ``JobSpace.name`` (``corral-<queue>-<job id>``). The directory name *is* the label: the
janitor recovers the job label (``JobSpace.labels[LABEL_JOB]``) by stripping `NAME_PREFIX`, because
cgroupfs cannot hold any other metadata.

Killing is race-free: the freezer group is frozen, every PID still in the group is sent SIGKILL (a
frozen process cannot exit, fork or be replaced by a recycled PID), then the group is thawed so the
signals are delivered. This also catches daemonised processes (``setsid cmd &``) that left the
step's session and process group.

Everything here is plain file I/O on cgroupfs (microseconds each); only the loops that wait for the
kernel (freezing, processes exiting) are async.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CgroupError
from corral.executor.runtimes.base import Limits

__all__ = [
    "CGROUP_ROOT",
    "CONTROLLERS",
    "NAME_PREFIX",
    "CgroupError",
    "JobCgroup",
    "job_cgroup_names",
    "missing_controllers",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "cpuacct", "pids", "freezer")
NAME_PREFIX = "corral-"  # JobSpace.name == NAME_PREFIX + JobSpace.labels[LABEL_JOB]

CFS_PERIOD_US = 100_000  # microseconds: CPU bandwidth accounting period (the kernel default)
CFS_MIN_QUOTA_US = 1_000  # microseconds: the smallest quota the kernel accepts
FREEZE_TIMEOUT_S = 2.0  # seconds to wait for freezer.state to reach FROZEN before killing anyway
POLL_S = 0.01  # seconds between polls of freezer.state / cgroup.procs
KILL_TIMEOUT_S = 10.0  # seconds kill_all keeps sweeping before giving up
REMOVE_TIMEOUT_S = 5.0  # seconds remove() retries rmdir on EBUSY (processes still exiting)

# Key files that show a controller hierarchy is mounted and usable (present in the root group).
_KEY_FILES = {
    "memory": "memory.limit_in_bytes",
    "cpu": "cpu.cfs_quota_us",
    "cpuacct": "cpuacct.usage",
    "pids": "cgroup.procs",
    "freezer": "cgroup.procs",
}


def _write(path: Path, value: str) -> None:
    # One write(2) per value: cgroupfs parses each write as a whole.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    return path.read_text()


def missing_controllers(root: Path = CGROUP_ROOT) -> list[str]:
    """Controllers of `CONTROLLERS` that are not mounted as cgroup v1 hierarchies under `root`."""
    return [c for c in CONTROLLERS if not (root / c / _KEY_FILES[c]).is_file()]


def job_cgroup_names(parent: str, root: Path = CGROUP_ROOT) -> list[str]:
    """Names of the job cgroups (``corral-*``) under `parent` in any controller, sorted."""
    names: set[str] = set()
    for controller in CONTROLLERS:
        try:
            entries = list((root / controller / parent).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        names.update(e.name for e in entries if e.name.startswith(NAME_PREFIX) and e.is_dir())
    return sorted(names)


@dataclass(frozen=True)
class JobCgroup:
    """One job's cgroups: ``<root>/<controller>/<parent>/<name>`` for each controller."""

    parent: str
    name: str
    root: Path = CGROUP_ROOT

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"invalid cgroup name {self.name!r}")

    def path(self, controller: str) -> Path:
        return self.root / controller / self.parent / self.name

    def paths(self) -> list[Path]:
        """One path per distinct hierarchy (co-mounted controllers such as cpu,cpuacct count once)."""
        seen: set[str] = set()
        out: list[Path] = []
        for controller in CONTROLLERS:
            hierarchy = os.path.realpath(self.root / controller)
            if hierarchy not in seen:
                seen.add(hierarchy)
                out.append(self.path(controller))
        return out

    def exists(self) -> bool:
        return any(p.is_dir() for p in self.paths())

    def create(self, limits: Limits) -> None:
        """Create the groups (and the parent) and apply `limits`; fine to call again on existing groups."""
        try:
            for path in self.paths():
                path.mkdir(parents=True, exist_ok=True)
            self._set_memory(limits.memory_bytes)
            self._set_cpu(limits.cpus)
            _write(self.path("pids") / "pids.max", str(limits.pids) if limits.pids > 0 else "max")
        except OSError as exc:
            raise CgroupError(f"cannot set up cgroup {self.parent}/{self.name}: {exc}") from exc

    def _set_memory(self, limit_bytes: int) -> None:
        group = self.path("memory")
        value = str(limit_bytes) if limit_bytes > 0 else "-1"
        mem = group / "memory.limit_in_bytes"
        memsw = group / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            # Swap accounting is off (no swapaccount=1): only RAM can be limited. check() reports it.
            log.warning("memory.memsw.* missing: swap of %s is not limited", self.name)
            _write(mem, value)
            return
        # The kernel keeps memsw >= mem: lower mem first when shrinking, raise memsw first when growing.
        try:
            _write(mem, value)
            _write(memsw, value)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _write(memsw, value)
            _write(mem, value)

    def _set_cpu(self, cpus: float) -> None:
        group = self.path("cpu")
        _write(group / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        quota = max(CFS_MIN_QUOTA_US, round(cpus * CFS_PERIOD_US)) if cpus > 0 else -1
        _write(group / "cpu.cfs_quota_us", str(quota))

    def procs_files(self) -> list[bytes]:
        """The ``cgroup.procs`` files a new process writes its PID to, to join every group."""
        return [os.fsencode(p / "cgroup.procs") for p in self.paths()]

    def pids(self) -> set[int]:
        """Host PIDs of all processes in any of the groups (empty when the groups are gone)."""
        found: set[int] = set()
        for path in self.paths():
            try:
                found.update(int(line) for line in _read(path / "cgroup.procs").split())
            except (FileNotFoundError, NotADirectoryError):
                continue
        return found

    def _stat(self, controller: str, filename: str, key: str) -> int:
        """`key`'s value in a flat ``key value`` stat file; 0 when missing."""
        try:
            text = _read(self.path(controller) / filename)
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this memory group so far."""
        return self._stat("memory", "memory.oom_control", "oom_kill")

    def pids_max_hits(self) -> int:
        """How many forks failed because pids.max was reached."""
        return self._stat("pids", "pids.events", "max")

    def cpu_usage_ns(self) -> int:
        """CPU time used by the group so far, in nanoseconds."""
        try:
            return int(_read(self.path("cpuacct") / "cpuacct.usage"))
        except FileNotFoundError:
            return 0

    def _set_frozen(self, frozen: bool) -> bool:
        try:
            _write(self.path("freezer") / "freezer.state", "FROZEN" if frozen else "THAWED")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    async def _freeze(self) -> bool:
        """Freeze the group; True once the kernel reports FROZEN (False: gone, or timed out)."""
        if not self._set_frozen(True):
            return False
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        state_file = self.path("freezer") / "freezer.state"
        while True:
            try:
                if _read(state_file).strip() == "FROZEN":
                    return True
            except FileNotFoundError:
                return False
            if time.monotonic() >= deadline:
                log.warning("cgroup %s did not freeze within %.1f s", self.name, FREEZE_TIMEOUT_S)
                return False
            await asyncio.sleep(POLL_S)

    async def signal_all(self, sig: int, exclude: Iterable[int] = ()) -> int:
        """Send `sig` to every process in the groups except `exclude`; return how many were signalled."""
        skip = set(exclude)
        await self._freeze()
        try:
            return _signal_pids(self.pids() - skip, sig)
        finally:
            self._set_frozen(False)

    async def kill_all(self, timeout: float = KILL_TIMEOUT_S) -> bool:
        """SIGKILL every process in the groups (freeze, kill, thaw) until they are empty.

        Returns True when the groups are empty (or gone), False if processes remain after `timeout`.
        """
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() >= deadline:
                log.warning("cgroup %s still has processes %s", self.name, sorted(self.pids()))
                return False
            await self._freeze()
            try:
                _signal_pids(self.pids(), signal.SIGKILL)
            finally:
                self._set_frozen(False)
            await asyncio.sleep(POLL_S)
        return True

    async def remove(self, timeout: float = REMOVE_TIMEOUT_S) -> None:
        """Remove the job groups (not the parent). Already-removed groups are fine.

        Raises CgroupError when a group stays busy for `timeout` seconds (call kill_all first).
        """
        deadline = time.monotonic() + timeout
        for path in self.paths():
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise CgroupError(f"cannot remove cgroup {path}: {exc}") from exc
                    await asyncio.sleep(POLL_S)


def _signal_pids(pids: Iterable[int], sig: int) -> int:
    count = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count
