"""Helpers for the process tests of local runs (`corral batch run` without --server, `corral demo`):
what a run leaves behind (server processes, containers, job processes), a container that belongs to
another executor, and bounded waits on a subprocess."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corral.executor.runtimes.base import LABEL_JOB, LABEL_MANAGED, LABEL_OWNER
from corral.server.store import SqlStore

EXIT_BOUND = (
    45.0  # seconds a run may take to stop after a signal before the test fails (a bound, not a speed)
)


def cmdlines() -> dict[int, list[str]]:
    """Every process's argv (those that ended meanwhile are skipped)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if argv:
                found[int(entry)] = argv
    return found


def server_processes(data_dir: Path) -> list[int]:
    """`corral server` processes serving a data dir under `data_dir`."""
    root = str(data_dir.resolve())
    return [
        pid
        for pid, argv in cmdlines().items()
        if "server" in argv and any(a.startswith(root) for a in argv) and any("corral" in a for a in argv)
    ]


def processes_with(needle: str) -> list[int]:
    return [pid for pid, argv in cmdlines().items() if needle in " ".join(argv)]


def containers(label: str) -> list[str]:
    """Ids of the containers (running or not) carrying `label` (k=v)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.split()


def prefix_of(data_dir: Path) -> str:
    """The EXECUTOR_VM_PREFIX the local run in `data_dir` gave its executor."""
    return (data_dir / "executor-prefix").read_text().strip()


def job_state(db: Path, job_id: int) -> str:
    store = SqlStore(f"sqlite:///{db}")
    try:
        return store.get_job(job_id).state.value
    finally:
        store.close()


@contextmanager
def foreign_container(job: str = "batches-1", owner: str = "executor") -> Iterator[str]:
    """A running container labelled as job `job` of another executor (owner `owner`: the default
    EXECUTOR_VM_PREFIX of every production executor); removed afterwards."""
    name = f"corral-foreign-{secrets.token_hex(4)}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--label",
            f"{LABEL_MANAGED}=true",
            "--label",
            f"{LABEL_JOB}={job}",
            "--label",
            f"{LABEL_OWNER}={owner}",
            "corral/busybox:1",
            "sleep",
            "600",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def running(name: str) -> bool:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() == "true"


def wait_for_text(path: Path, needle: str, proc: subprocess.Popen[bytes], bound: float = 120) -> None:
    deadline = time.monotonic() + bound
    while needle not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}):\n{path.read_text()}"
        assert time.monotonic() < deadline, f"{needle!r} not printed within {bound}s:\n{path.read_text()}"
        time.sleep(0.1)


def wait_exit(proc: subprocess.Popen[bytes], bound: float = EXIT_BOUND) -> int | None:
    """The exit code, or None when it did not exit within `bound` (it is then killed with its group)."""
    try:
        return proc.wait(bound)
    except subprocess.TimeoutExpired:
        with_group_killed(proc)
        return None


def with_group_killed(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)
