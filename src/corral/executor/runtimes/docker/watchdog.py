"""The disk watchdog: bounds a step container's writable layer where StorageOpt size cannot.

It polls the layer's size while the step runs and kills the container past the limit (see
`disk_watchdog` for the interval and what a fast writer gets past it). The layer is measured by
allocated blocks through an O_NOFOLLOW descriptor walk of overlay2's upper dir (`layer_usage`), plus
files the step unlinked but holds open (`deleted_open_bytes`); SizeRw for other storage drivers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Sequence
from typing import Any

from corral.errors import DockerAPIError
from corral.executor.runtimes.docker.api import DockerAPI

__all__ = ["WATCHDOG_KILL_EXIT", "deleted_open_bytes", "disk_watchdog", "layer_usage", "upper_dir"]

log = logging.getLogger("corral.executor.runtimes.docker")

# The disk watchdog polls a running step's writable-layer size this often, or 20x as long as the poll
# itself took (the daemon walks the layer's files: 0.4 ms for a few files, ~3.5 us per file, 0.2 s for
# 60,000 files on this machine), so that it costs the daemon at most ~5% of a core per step.
DISK_POLL_INTERVAL_S = 0.1
DISK_POLL_COST_FACTOR = 20.0
WATCHDOG_KILL_EXIT = 137  # exit code reported for a step the watchdog killed (SIGKILL)
INODE_BYTES = 256  # bytes charged per file of the writable layer on top of its blocks (an ext4 inode)
LAYER_MAX_DEPTH = 256  # directory levels of the writable layer the watchdog follows; deeper = over limit


def deleted_open_bytes(init_pid: int, not_counted: Sequence[str]) -> int:
    """Bytes on disk of files that the container's processes hold open but have unlinked: they use the
    writable layer's disk but no longer appear in it, so SizeRw misses them (`exec 3>/f; rm /f; dd >&3`).

    The processes are those of the pids cgroup of `init_pid`; a file counts unless its path (as the
    container sees it, in /proc/PID/fd) is under one of `not_counted` (the workspace, tmpfs mounts).
    Only /proc and /sys are read: the magic links are stat()ed, which reaches the open file itself.
    """
    try:
        with open(f"/proc/{init_pid}/cgroup") as f:
            path = next((ln.split(":", 2)[2].strip() for ln in f if ln.split(":", 2)[1:2] == ["pids"]), None)
        pids = [init_pid]
        if path:
            with open(f"/sys/fs/cgroup/pids{path}/cgroup.procs") as f:
                pids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(link)
                if not target.endswith(" (deleted)") or not target.startswith("/"):
                    continue
                if any(target == p or target.startswith(p.rstrip("/") + "/") for p in not_counted):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def layer_usage(upper: str, cap: int) -> int:
    """Disk the writable layer (overlay2's upper dir, on the host) really takes: every entry's allocated
    blocks plus INODE_BYTES. dockerd's SizeRw sums apparent sizes and skips directories, so 60,000
    one-byte files (240 MiB of 4 KiB blocks) counted as 60 KB. The walk is iterative, through directory
    descriptors opened with O_NOFOLLOW (nothing is followed, read or written: only lstat), stops as soon
    as `cap` is passed, and a tree deeper than LAYER_MAX_DEPTH counts as over the cap (it cannot hide
    data where the walk does not reach). Returns the bytes counted (> cap when over)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        root = os.open(upper, flags)
    except OSError:
        return 0
    total = 0
    stack: list[tuple[int, int]] = [(root, 0)]  # (directory fd, depth)
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512 + INODE_BYTES
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 > LAYER_MAX_DEPTH:
                            return cap + 1
                        try:
                            stack.append((os.open(entry.name, flags, dir_fd=fd), depth + 1))
                        except OSError:
                            continue
                    if total > cap:
                        return total
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def upper_dir(state: dict[str, Any] | None) -> str | None:
    """overlay2's upper dir of a container (GraphDriver.Data.UpperDir), when the daemon says it."""
    driver = (state or {}).get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir") if driver.get("Name") == "overlay2" else None
    return upper if isinstance(upper, str) and upper.startswith("/") else None


async def disk_watchdog(
    api: DockerAPI, cid: str, limit: int, seen: list[int], not_counted: Sequence[str] = ()
) -> None:
    """Kill the container once its writable layer holds more than `limit` bytes.

    Measures the layer's allocated blocks (`layer_usage`, overlay2; SizeRw for other drivers) every
    DISK_POLL_INTERVAL_S, or DISK_POLL_COST_FACTOR times the last poll's own
    duration when that is longer (the daemon walks every file of the layer). A writer gets past the
    limit by what it writes in one interval plus the kill's latency: measured with dd from
    /dev/zero (~2 GB/s here) and a 50 MiB limit, it had 250-330 MiB when killed at a 0.1 s interval
    (570-590 MiB at 0.25 s, 0.6-1.2 GiB at 0.5 s). Files the step unlinked but holds open count
    too (see `deleted_open_bytes`; under gVisor the sandbox holds them, so they are not seen).
    For a hard bound, use overlay2 on xfs with pquota (then StorageOpt size is used).
    """
    interval = DISK_POLL_INTERVAL_S
    upper: str | None = None  # overlay2's upper dir, measured by blocks (see layer_usage)
    while True:
        await asyncio.sleep(interval)
        began = time.monotonic()
        try:
            if upper is None:
                state = await api.container_inspect(cid)
                upper = upper_dir(state) or ""
            if not upper:
                state = await api.container_inspect(cid, size=True)
            else:
                state = await api.container_inspect(cid)
        except DockerAPIError as exc:
            log.warning("docker: disk watchdog of %s: %s", cid[:12], exc.message)
            continue
        if state is None or not (state.get("State") or {}).get("Running"):
            return
        if upper:
            size = await asyncio.to_thread(layer_usage, upper, limit)
        else:
            size = int(state.get("SizeRw") or 0)
        interval = max(DISK_POLL_INTERVAL_S, (time.monotonic() - began) * DISK_POLL_COST_FACTOR)
        pid = int((state.get("State") or {}).get("Pid") or 0)
        if pid > 0 and size <= limit:
            size += await asyncio.to_thread(deleted_open_bytes, pid, not_counted)
        if size > limit:
            seen.append(size)
            try:
                await api.container_kill(cid)
            except DockerAPIError as exc:
                log.warning("docker: disk watchdog cannot kill %s: %s", cid[:12], exc.message)
            return
