"""What a firecracker job leaves when things go wrong, with real executors (tests/e2e/kit.py):

- the executor is killed with SIGKILL mid-job: its qemu (in a session of its own) survives it, with
  the VM's directory (scratch disk, shares and their mounts) and the job's directory (its
  loop-mounted workspace); a new executor with the same EXECUTOR_VM_PREFIX removes them all at start
  (qemu found by name in /proc) and logs each removal;
- a job past EXECUTOR_MAXIMUM_RUNTIME_PER_JOB fails with the timeout reason promptly, and nothing of
  its VM remains;
- (no VM) the image cache's janitor removes only half-made disks of executors that are gone.

The executors keep their warm pool (default 1 VM), so "nothing remains" is about the job's VM and
directories, found while the job ran, not about every VM of the owner."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.runtimes.firecracker.images import ImageDisks
from corral.executor.runtimes.firecracker.vm import qemu_processes
from tests.e2e.kit import Server, docker_job, run_server, start_executor, wait_job, wait_log
from tests.e2e.microvmkit import mounts_below, pid_alive, qemu_left, require_microvms, vm_dir_of, vm_dirs

CLEANUP_WAIT_S = 60.0  # the new executor's first sweep runs at its start


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require_microvms()
    # max_resets=0: the killed executor's job fails when its lease lapses, it is never run again
    with run_server(tmp_path, max_attempts=1, max_resets=0) as s:
        yield s


def _traces(prefix: str, ws: Path) -> tuple[dict[int, str], set[Path], Path]:
    """The running job's qemu processes, their VM directories and the job's directory."""
    vms = qemu_left(prefix)
    dirs = {d for d in map(vm_dir_of, vms) if d is not None}
    [root] = vm_dirs(ws)
    assert vms and dirs and all((d / "scratch.ext4").exists() for d in dirs), (vms, dirs)
    return vms, dirs, root


def _left(vms: dict[int, str], dirs: set[Path], root: Path) -> list[str]:
    left = [f"qemu {pid}" for pid in vms if pid_alive(pid)]
    running = set(qemu_processes("").values())  # every qemu's -name
    left += [name for name in vms.values() if name in running]
    left += [str(p) for p in (*dirs, root) if p.exists()]
    return left + [f"mount {m}" for m in mounts_below(*dirs, root)]


def _wait_gone(vms: dict[int, str], dirs: set[Path], root: Path) -> list[str]:
    deadline = time.monotonic() + CLEANUP_WAIT_S
    while (left := _left(vms, dirs, root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_new_executor_removes_what_a_killed_one_left(server: Server, tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fcjan"
    ws = tmp_path / "ws"
    env = {"EXECUTOR_VM_PREFIX": prefix, "EXECUTOR_JOB_MEMORY": "256M"}
    first = start_executor(server, tmp_path, "firecracker", **env)
    job = server.client.submit("batches", docker_job("echo running", "sleep 600"))
    wait_log(server, job["id"], "running", timeout=180)
    vms, dirs, root = _traces(prefix, ws)
    assert mounts_below(root), "the job's workspace filesystem is mounted"

    first.kill()  # SIGKILL: no cleanup of any kind
    first.wait(10)
    time.sleep(1)
    assert all(pid_alive(pid) for pid in vms), "qemu died with its executor: nothing to clean up"
    assert root.exists() and all(d.exists() for d in dirs)

    start_executor(server, tmp_path, "firecracker", **env)
    assert _wait_gone(vms, dirs, root) == []
    log = (tmp_path / "executor-1.log").read_text()
    removals = [line for line in log.splitlines() if f"janitor (owner {prefix}): removed" in line]
    for pid in vms:  # each removal is logged
        assert any(f"qemu {pid}" in line for line in removals), log
    assert any(f"workspace {root.name}" in line for line in removals), log
    assert "microVMs use " in log.split("connected to")[0], log  # the accelerator, said at start


def test_a_job_past_its_maximum_runtime_fails_as_a_timeout_and_leaves_nothing(
    server: Server, tmp_path: Path
) -> None:
    prefix = f"t{secrets.token_hex(4)}-fcto"
    start_executor(
        server,
        tmp_path,
        "firecracker",
        EXECUTOR_VM_PREFIX=prefix,
        EXECUTOR_JOB_MEMORY="256M",
        EXECUTOR_MAXIMUM_RUNTIME_PER_JOB="45s",  # a cold boot under TCG on a busy host: well below
    )
    job = server.client.submit("batches", docker_job("echo started", "sleep 600"))
    wait_log(server, job["id"], "started", timeout=45)
    vms, dirs, root = _traces(prefix, tmp_path / "ws")
    done = wait_job(server, job["id"], timeout=60)  # 45 s from the job's start, with a margin
    assert done["state"] == "failed", done
    assert "job exceeded maximum execution time of 45s" in done["error"], done
    assert _wait_gone(vms, dirs, root) == []


def test_the_image_cache_janitor_spares_conversions_under_way(tmp_path: Path) -> None:
    cache = tmp_path / "images"
    cache.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = cache / f".make-{gone.pid}-abc"
    ours = cache / f".make-{os.getpid()}-def"
    other = cache / f".make-{os.getppid()}-ghi"  # another live process (an executor)
    for d in (dead, ours, other):
        (d / "root").mkdir(parents=True)
    disks = ImageDisks(None, cache)  # type: ignore[arg-type]  # no Docker needed to clear
    disks.clear_leftovers()
    assert not dead.exists() and ours.exists() and other.exists()
