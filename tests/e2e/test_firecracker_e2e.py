"""The firecracker runtime end to end: a real server, a real executor process (EXECUTOR_RUNTIME=
firecracker, its own EXECUTOR_VM_PREFIX), a job of two docker steps in two images, each step in its
own image's filesystem inside one microVM (qemu, TCG here), with env, working dir, logs and exit
codes; a failing step stops the job with its exit code; nothing of the VM remains afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, run_server, start_executor, wait_job, wait_log


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


def test_two_steps_in_two_images_run_in_one_microvm(server: Server, tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    start_executor(server, tmp_path, "firecracker", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_MEMORY="256M")
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
    assert not _qemu_left(prefix)


def test_a_failing_step_stops_the_job_with_its_exit_code(server: Server, tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    start_executor(server, tmp_path, "firecracker", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_MEMORY="256M")
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
    assert not _qemu_left(prefix)


def test_cancel_kills_the_vm_at_once_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    start_executor(server, tmp_path, "firecracker", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_MEMORY="256M")
    job = server.client.submit("batches", docker_job("echo running", "sleep 600"))
    wait_log(server, job["id"], "running", timeout=120)
    assert _qemu_left(prefix)  # the job's VM is running
    t0 = time.monotonic()
    server.client.cancel(job["id"])
    done = wait_job(server, job["id"], timeout=60)
    assert done["state"] == "canceled", done
    assert time.monotonic() - t0 < 15  # kill grace 2 s; guards against "never"
    deadline = time.monotonic() + 10
    while _qemu_left(prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _qemu_left(prefix)
    assert not list((tmp_path / "ws").glob("*/vm")), "the VM's directory (scratch disk, control) remains"


def test_a_step_out_of_the_vms_memory_fails_the_job_as_oom(server: Server, tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}-fc"
    start_executor(server, tmp_path, "firecracker", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_MEMORY="192M")
    # in a child shell: the step script's `set -x` would print every doubled string to the log
    job = server.client.submit("batches", docker_job("sh -c 'x=0123456789; while :; do x=$x$x; done'"))
    done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=240)
    assert done["state"] == "failed", (done, logs_text(server, job["id"]))
    assert "out of memory" in done["error"] and "192 MiB" in done["error"], done
    assert not _qemu_left(prefix)


def _qemu_left(prefix: str) -> dict[int, str]:
    from corral.executor.runtimes.firecracker.vm import qemu_processes

    return qemu_processes(f"corral-fc.{prefix}.")
