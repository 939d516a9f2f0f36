"""The firecracker runtime's process limit (EXECUTOR_JOB_PIDS), end to end: each step runs in a pids
cgroup of its own in the guest, so a fork bomb meets the limit, not the VM, and ends; the step's log
says the limit refused forks and how many. A step ends when its main process does: a process it
left in the background (holding the output pipe) is killed, it does not keep the step open."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kit import Server, run_server, start_executor, wait_job
from tests.e2e.microvmkit import require_microvms

PIDS = 40
# 2^8 processes wanted, each level waiting for its two children: it ends once the forks it may make
# are made (the docker runtime's test of the same limit)
BOUNDED = "f() { [ $1 -lt 8 ] && { f $(($1+1)) & f $(($1+1)) & wait; }; }; f 0 || true; echo bounded-over"
# the classic one: nothing waits, every process starts two more for ever
CLASSIC = "bomb() { bomb | bomb & }; bomb; sleep 2; echo classic-over"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require_microvms()
    with run_server(tmp_path, max_attempts=1) as s:
        yield s


def test_a_fork_bomb_meets_the_process_limit_and_the_step_says_so(server: Server, tmp_path: Path) -> None:
    start_executor(
        server,
        tmp_path,
        "firecracker",
        EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-fcpid",
        EXECUTOR_JOB_MEMORY="256M",
        EXECUTOR_JOB_PIDS=str(PIDS),
        EXECUTOR_MAXIMUM_RUNTIME_PER_JOB="4m",  # a hang would end here, as a timeout
    )
    job = server.client.submit(
        "batches",
        {
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": ["cat /proc/self/cgroup", BOUNDED]},
                {"image": "corral/busybox:1", "commands": ["sleep 600 &", "echo left-running"]},
                {"image": "corral/busybox:1", "commands": [CLASSIC]},
            ]
        },
    )
    t0 = time.monotonic()
    done = wait_job(server, job["id"], timeout=300)
    took = time.monotonic() - t0
    entries = {e["key"]: e for e in server.client.logs(job["id"])["entries"]}
    bounded, background, classic = (entries.get(f"step.docker.{i}", {}) for i in range(3))
    assert "timeout" not in (done.get("error") or ""), (done, entries)
    # the bounded bomb: forks refused, the step's log says by what; it went on and ended
    assert "0::/s0" in bounded["out"], bounded  # the step's own cgroup in the guest
    assert "can't fork" in bounded["out"] and "bounded-over" in bounded["out"], bounded["out"][-2000:]
    note = re.search(rf"step.docker.0 hit the job's process limit \({PIDS} processes, EXECUTOR_JOB_PIDS\): "
                     r"(\d+) forks refused", bounded["out"])
    assert note and int(note[1]) > 0, bounded["out"][-2000:]
    assert bounded["exitCode"] == 0
    # a background process does not keep its step open (it would have until the job's timeout)
    assert background["exitCode"] == 0 and "left-running" in background["out"], background
    assert "process limit" not in background["out"]
    # the classic bomb ends too, with the limit named; the job ends with it
    assert "step.docker.2 hit the job's process limit" in classic["out"], classic["out"][-2000:]
    assert done["state"] in ("completed", "failed"), done
    if done["state"] == "failed":  # the bomb left its main shell no fork for `sleep`
        assert "step.docker.2 failed with exit code" in done["error"], done
    assert took < 240
