"""The firecracker runtime end to end: a real server, a real executor process (EXECUTOR_RUNTIME=
firecracker, its own EXECUTOR_VM_PREFIX), a job of two docker steps in two images, each step in its
own image's filesystem inside one microVM (qemu, TCG here), with env, working dir, logs and exit
codes; a failing step stops the job with its exit code; the warm pool serves jobs with VMs booted
before they were dequeued, a fresh one each; nothing of a job's VM remains after it, nothing of the
pool after the executor stops.

The executors' workspace roots are outside pytest's temporary root: every pytest session on the
host unmounts everything below that root at its start and end (tests/conftest.py), which would take
a running job's workspace filesystem away under its VM."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.runtimes.firecracker.assets import DEFAULT_ASSETS_DIR
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import (
    Server,
    docker_job,
    logs_text,
    run_server,
    start_executor,
    stop_executor,
    wait_job,
    wait_log,
)
from tests.e2e.microvmkit import mounts_below, qemu_left

VMS = DEFAULT_ASSETS_DIR / "vms"  # <owner>/<VM name>/: every VM's directory (runtime.py)
RUNS_IN = re.compile(r"job (\d+): runs in (warm|pooled|cold) VM (\S+)")
WARM_READY = re.compile(r"warm VM (\S+) ready in")


@pytest.fixture
def roots() -> Iterator[Path]:
    """A directory for the executors' workspace roots, outside pytest's temporary root."""
    root = Path(tempfile.mkdtemp(prefix="corral-fc-e2e-", dir="/var/tmp"))
    yield root
    for point in mounts_below(root)[::-1]:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _start(server: Server, tmp: Path, roots: Path, prefix: str, **env: str) -> subprocess.Popen[bytes]:
    env.setdefault("EXECUTOR_JOB_MEMORY", "256M")
    ws = roots / prefix / "ws"
    env.update(EXECUTOR_VM_PREFIX=prefix, EXECUTOR_WORKSPACE_ROOT=str(ws))
    return start_executor(server, tmp, "firecracker", **env)


def _log(tmp: Path, n: int = 0) -> str:
    return (tmp / f"executor-{n}.log").read_text(errors="replace")


def _job_vm(tmp: Path, job_id: int) -> tuple[str, str]:
    """(warm | pooled | cold, VM name) of the job, from the executor's log."""
    for m in RUNS_IN.finditer(_log(tmp)):
        if int(m[1]) == job_id:
            return m[2], m[3]
    raise AssertionError(f"the executor's log names no VM for job {job_id}:\n{_log(tmp)[-3000:]}")


def _assert_vm_gone(name: str, prefix: str) -> None:
    """Nothing of the VM remains: no qemu, no directory, no mount below it."""
    deadline = time.monotonic() + 15
    while name in qemu_left(prefix).values() and time.monotonic() < deadline:
        time.sleep(0.1)
    owner = name.split(".")[1]
    assert name not in qemu_left(prefix).values()
    assert not (VMS / owner / name).exists()
    assert mounts_below(VMS / owner / name) == []


def _stop_and_assert_drained(server: Server, p: subprocess.Popen[bytes], prefix: str) -> None:
    """The executor stops (SIGTERM): its warm VMs are killed, their directories and mounts gone."""
    assert stop_executor(p) == 0
    assert qemu_left(prefix) == {}
    assert not (VMS / prefix).exists() or list((VMS / prefix).iterdir()) == []
    assert mounts_below(VMS / prefix) == []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the diff's shell sandbox)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    require(
        os.path.exists("/var/lib/corral/firecracker/manifest.json"),
        "the microVM assets are not installed (corral executor install firecracker; scripts/setup.sh)",
    )
    with run_server(tmp_path, max_attempts=1) as s:
        yield s


def test_two_steps_in_two_images_run_in_one_microvm(server: Server, tmp_path: Path, roots: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    executor = _start(server, tmp_path, roots, prefix)  # with the default warm pool of 1
    job = server.client.submit(
        "batches",
        {
            "dockerSteps": [
                {
                    "image": "corral/busybox:1",
                    "commands": [
                        'uname -r; id -u; pwd; echo "greeting=$GREETING"',
                        "test -e /bin/corral-fmt && echo has-fmt || echo no-fmt",
                        "mkdir -p sub && echo from-step-1 > sub/note.txt",
                    ],
                    "env": ["GREETING=hello vm"],
                },
                {
                    "image": "corral/tools:1",
                    "commands": ["test -x /bin/corral-fmt && echo has-fmt; cat note.txt; pwd; exit 0"],
                    "dir": "sub",
                },
            ]
        },
    )
    done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=240)
    text = logs_text(server, job["id"])
    assert done["state"] == "completed", (done, text)
    entries = {e["key"]: e for e in server.client.logs(job["id"])["entries"]}
    first, second = entries["step.docker.0"], entries["step.docker.1"]
    assert first["exitCode"] == 0 and second["exitCode"] == 0, entries
    kernel = next(line for line in first["out"].split("\n") if line.endswith("-amd64"))  # after + uname -r
    assert kernel != os.uname().release, first["out"]  # the guest's own kernel
    assert "greeting=hello vm" in first["out"] and "/data" in first["out"]
    assert "no-fmt" in first["out"]  # step 1 ran in busybox's filesystem, step 2 in tools'
    assert "has-fmt" in second["out"] and "from-step-1" in second["out"] and "/data/sub" in second["out"]
    _assert_vm_gone(_job_vm(tmp_path, job["id"])[1], prefix)
    _stop_and_assert_drained(server, executor, prefix)


def test_a_failing_step_stops_the_job_with_its_exit_code(server: Server, tmp_path: Path, roots: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    _start(server, tmp_path, roots, prefix, EXECUTOR_FIRECRACKER_WARM_POOL="0")
    job = server.client.submit(
        "batches",
        {
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": ["echo before; exit 7"]},
                {"image": "corral/busybox:1", "commands": ["echo never-runs"]},
            ]
        },
    )
    done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=240)
    text = logs_text(server, job["id"])
    assert done["state"] == "failed", (done, text)
    assert "exit code 7" in done["error"], done
    entries = {e["key"]: e for e in server.client.logs(job["id"])["entries"]}
    assert entries["step.docker.0"]["exitCode"] == 7 and "before" in entries["step.docker.0"]["out"]
    assert "step.docker.1" not in entries and "never-runs" not in text
    assert _job_vm(tmp_path, job["id"])[0] == "cold"  # no pool: booted for the job
    _assert_vm_gone(_job_vm(tmp_path, job["id"])[1], prefix)
    assert qemu_left(prefix) == {}


def test_cancel_kills_the_vm_at_once_and_leaves_nothing(
    server: Server, tmp_path: Path, roots: Path
) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    _start(server, tmp_path, roots, prefix, EXECUTOR_FIRECRACKER_WARM_POOL="0")
    job = server.client.submit("batches", docker_job("echo running", "sleep 600"))
    wait_log(server, job["id"], "running", timeout=120)
    name = _job_vm(tmp_path, job["id"])[1]
    assert name in qemu_left(prefix).values()  # the job's VM is running
    t0 = time.monotonic()
    server.client.cancel(job["id"])
    done = wait_job(server, job["id"], timeout=60)
    assert done["state"] == "canceled", done
    assert time.monotonic() - t0 < 15  # kill grace 2 s; guards against "never"
    _assert_vm_gone(name, prefix)
    assert qemu_left(prefix) == {}
    assert mounts_below(roots / prefix) == []  # the workspace's filesystem and its bind


def test_a_step_out_of_the_vms_memory_fails_the_job_as_oom(
    server: Server, tmp_path: Path, roots: Path
) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    _start(server, tmp_path, roots, prefix, EXECUTOR_JOB_MEMORY="192M", EXECUTOR_FIRECRACKER_WARM_POOL="0")
    # in a child shell: the step script's `set -x` would print every doubled string to the log
    job = server.client.submit("batches", docker_job("sh -c 'x=0123456789; while :; do x=$x$x; done'"))
    done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=240)
    assert done["state"] == "failed", (done, logs_text(server, job["id"]))
    assert "out of memory" in done["error"] and "192 MiB" in done["error"], done
    _assert_vm_gone(_job_vm(tmp_path, job["id"])[1], prefix)


def test_the_warm_pool_gives_each_job_a_vm_booted_before_it_and_drains_on_stop(
    server: Server, tmp_path: Path, roots: Path
) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    executor = _start(server, tmp_path, roots, prefix, EXECUTOR_FIRECRACKER_WARM_POOL="1")
    names: list[str] = []
    for n in range(2):
        # a VM is ready before the job is submitted (the pool boots one, and after each job the next)
        deadline = time.monotonic() + 180
        while len(WARM_READY.findall(_log(tmp_path))) <= n:
            assert time.monotonic() < deadline and executor.poll() is None, _log(tmp_path)[-3000:]
            time.sleep(0.2)
        ready = WARM_READY.findall(_log(tmp_path))[n]
        assert ready in qemu_left(prefix).values()
        job = server.client.submit("batches", docker_job(f"echo job-{n}"))
        done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=120)
        assert done["state"] == "completed", (done, logs_text(server, job["id"]))
        assert f"job-{n}" in logs_text(server, job["id"])
        assert _job_vm(tmp_path, job["id"]) == ("warm", ready)  # served by the VM booted before it
        _assert_vm_gone(ready, prefix)  # killed after its one job
        names.append(ready)
    assert names[0] != names[1]  # a VM is never given to a second job
    _stop_and_assert_drained(server, executor, prefix)
