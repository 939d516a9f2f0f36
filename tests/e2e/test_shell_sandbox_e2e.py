"""Shell executor, end to end: each job its own uid, the seccomp filter in place, and the kill grace.

Real server, real `corral executor run` with the shell runtime (needs bubblewrap, cgroup v1, root).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, start_executor, wait_job, wait_log


@pytest.fixture(autouse=True)
def _shell_sandbox() -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")


def uid_of(server: Server, job_id: int) -> int:
    m = re.search(r"^uid=(\d+)$", logs_text(server, job_id), re.MULTILINE)
    assert m, logs_text(server, job_id)
    return int(m[1])


def test_consecutive_and_concurrent_jobs_run_as_distinct_uids(server: Server, tmp_path: Path) -> None:
    start_executor(server, tmp_path, "shell", EXECUTOR_MAXIMUM_NUM_JOBS="2")
    # one after the other
    first = server.client.submit("batches", docker_job("echo uid=$(id -u)"))
    assert wait_job(server, first["id"])["state"] == "completed"
    second = server.client.submit("batches", docker_job("echo uid=$(id -u)"))
    assert wait_job(server, second["id"])["state"] == "completed"
    # at the same time
    a = server.client.submit("batches", docker_job("echo uid=$(id -u)", "sleep 2"))
    b = server.client.submit("batches", docker_job("echo uid=$(id -u)", "sleep 2"))
    wait_log(server, a["id"], "uid=")
    wait_log(server, b["id"], "uid=")
    assert {server.client.get(a["id"])["state"], server.client.get(b["id"])["state"]} == {"processing"}
    assert wait_job(server, a["id"])["state"] == "completed"
    assert wait_job(server, b["id"])["state"] == "completed"
    uids = [uid_of(server, j["id"]) for j in (first, second, a, b)]
    assert uids[0] != uids[1] and uids[2] != uids[3], uids
    assert all(200_000 <= u <= 265_535 for u in uids), uids


def test_sandbox_refuses_user_namespaces_and_the_keyring(server: Server, tmp_path: Path) -> None:
    start_executor(server, tmp_path, "shell")
    job = server.client.submit(
        "batches",
        docker_job("unshare -Ur true || echo unshare-refused", "echo done"),
    )
    assert wait_job(server, job["id"])["state"] == "completed"
    text = logs_text(server, job["id"])
    assert "unshare-refused" in text and "Operation not permitted" in text, text


def test_cancel_gives_the_step_its_kill_grace(server: Server, tmp_path: Path) -> None:
    """The executor's kill grace (2 s in the kit): the step's TERM trap runs and its output arrives."""
    start_executor(server, tmp_path, "shell")
    job = server.client.submit(
        "batches", docker_job("trap 'sleep 0.5; echo trapped; exit 3' TERM", "echo running", "sleep 100")
    )
    wait_log(server, job["id"], "running")
    t0 = time.monotonic()
    server.client.cancel(job["id"])
    assert wait_job(server, job["id"], timeout=30)["state"] == "canceled"
    assert time.monotonic() - t0 < 10
    assert "trapped" in logs_text(server, job["id"]), logs_text(server, job["id"])
