"""EXECUTOR_DOCKER_RUNTIME=runsc end to end: a real server and a real `corral executor run`; a job
without network runs in gVisor with loopback only (runtime runsc), a job with network (EXECUTOR_NETWORK
=open, the docker bridge) in gVisor with its interface (runtime runsc-hostnet). Nothing is sent over
the network: the jobs only list their interfaces."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.runtimes.docker import gvisor
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, run_server, start_executor, stop_executor, wait_job

pytestmark = pytest.mark.docker

IFACES = "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sed 's/^/iface=/'"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    require(shutil.which("runsc") is not None, "runsc is not installed (scripts/setup.sh installs it)")
    with run_server(tmp_path) as s:
        yield s


def _ifaces(text: str) -> set[str]:
    return {line.split("=", 1)[1] for line in text.splitlines() if line.startswith("iface=")}


def test_jobs_run_under_gvisor_with_and_without_network(server: Server, tmp_path: Path) -> None:
    executor = start_executor(
        server, tmp_path, "docker", EXECUTOR_DOCKER_RUNTIME="runsc", EXECUTOR_NETWORK="open"
    )
    try:
        plain = server.client.submit(
            "batches",
            docker_job("uname -r", "dmesg | head -n 1", "echo kept > out.txt", "cat out.txt", IFACES),
        )
        networked = server.client.submit("batches", docker_job("uname -r", IFACES, network=True))
        for job in (plain, networked):
            state = wait_job(server, job["id"], timeout=120)
            assert state["state"] == "completed", (state, logs_text(server, job["id"]))
        text = logs_text(server, plain["id"])
        assert "4.4.0" in text.split() and "Starting gVisor" in text and "kept" in text.split(), text
        assert _ifaces(text) == {"lo"}, text
        text = logs_text(server, networked["id"])
        assert "4.4.0" in text.split(), text
        assert {"lo", "eth0"} <= _ifaces(text), text
    finally:
        stop_executor(executor)
    # nothing of this executor is left: no container, no gVisor process of its jobs
    prefix = f"t{os.getpid()}-{server.url.rsplit(':', 1)[-1].strip('/')}"  # as kit.executor_env
    names = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=20
    ).stdout.split()
    assert [n for n in names if n.startswith(prefix + "-")] == [], names
    left = [p for p in gvisor.find() if (gvisor.bundle_job(p.bundle) or ("", ""))[0] == prefix]
    assert left == [], left
