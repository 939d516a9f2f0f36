"""Cancel and timeout end to end (shell and docker runtimes): the job's log says what happened
("canceling: ...", "timeout after ...", and when SIGKILL follows), the step gets SIGTERM first, and
what it prints in its grace is kept. Server and executors on 127.0.0.1; the kit's grace is 2 s."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.e2e.kit import Server, docker_job, logs_text, start_executor, wait_job, wait_log

# printf spells its output differently from its command line, which the step's `set -x` trace shows
TRAP = "trap 'sleep 0.3; printf \"%s-%s\\n\" grace kept; exit 143' TERM"


def executor(server: Server, tmp_path: Path, runtime: str) -> None:
    # a prefix of its own: its janitor never touches another executor's sandboxes on this host
    start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-stop")


def test_a_canceled_job_says_so_and_keeps_the_output_of_its_grace(
    server: Server, tmp_path: Path, runtime: str
) -> None:
    executor(server, tmp_path, runtime)
    job = server.client.submit("batches", docker_job(TRAP, "echo running", "while :; do sleep 0.1; done"))
    wait_log(server, job["id"], "running")
    server.client.cancel(job["id"])
    done = wait_job(server, job["id"], timeout=30)
    text = logs_text(server, job["id"])
    assert done["state"] == "canceled", (done, text)
    note = "[corral] canceling: the server asked: sending SIGTERM, then SIGKILL after 2s\n"
    assert note in text, text
    assert "grace-kept\n" in text.split(note, 1)[1], text


def test_a_timeout_says_so_and_ends_the_job_failed(server: Server, tmp_path: Path, runtime: str) -> None:
    executor(server, tmp_path, runtime)
    job = server.client.submit(
        "batches", docker_job(TRAP, "echo running", "while :; do sleep 0.1; done", timeoutSeconds=3)
    )
    done = wait_job(server, job["id"], timeout=60)
    text = logs_text(server, job["id"])
    assert done["state"] == "failed", (done, text)
    assert done["error"] == "job exceeded maximum execution time of 3s", done
    note = "[corral] timeout after 3s: sending SIGTERM, then SIGKILL after 2s\n"
    assert note in text, text
    assert "grace-kept\n" in text.split(note, 1)[1], text
