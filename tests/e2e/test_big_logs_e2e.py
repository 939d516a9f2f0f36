"""A big log never fails a job (issue 15 item 14), end to end: the server's cap (CORRAL_MAX_LOG_BYTES,
1 MiB here) is below the executor's (EXECUTOR_LOG_MAX_BYTES, 8 MiB by default) and the step prints
5 MiB. The server announces its cap, the executor keeps head and tail within it and marks the cut;
the job completes. (Before: a 400 at the cap, read as lost contact: the job errored.)"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, require
from tests.e2e.kit import Server, docker_job, run_server, start_executor, wait_job

SERVER_CAP = 1024 * 1024
MARKER = re.compile(r"\n\[corral\] \.\.\. (\d+) bytes of output omitted \.\.\.\n")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    with run_server(tmp_path, max_log_bytes=SERVER_CAP) as s:
        yield s


def test_a_log_over_the_servers_cap_is_cut_and_the_job_completes(server: Server, tmp_path: Path) -> None:
    start_executor(server, tmp_path, "shell", EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-big")
    lines = 5 * 1024 * 1024 // 8  # "%07d\n" per line: 8 bytes
    job = server.client.submit("batches", docker_job(f"seq -f %07g 1 {lines}"))
    done = wait_job(server, job["id"], timeout=120)
    assert done["state"] == "completed", done
    (step,) = [e for e in server.client.logs(job["id"])["entries"] if e["key"] == "step.docker.0"]
    out: str = step["out"]
    assert step["exitCode"] == 0
    assert len(out.encode()) <= SERVER_CAP
    m = MARKER.search(out)
    assert m is not None, out[:200]
    head, tail = out[: m.start()], out[m.end() :]
    assert "0000001\n" in head and tail.endswith(f"{lines:07d}\n")
    # every line of the tail is whole and they run on to the last one
    numbers = [int(x) for x in tail.splitlines()[1:]]
    assert numbers == list(range(numbers[0], lines + 1))
