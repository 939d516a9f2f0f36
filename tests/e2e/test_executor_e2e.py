"""Real jobs through a real server and real executors, in both sandboxes (shell and docker)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import (
    SECRET,
    Server,
    docker_job,
    logs_text,
    make_repo,
    run_server,
    start_executor,
    stop_executor,
    wait_job,
    wait_log,
)


@pytest.fixture
def repo(server: Server, tmp_path: Path) -> str:
    make_repo(tmp_path / "src", {"README.md": "hello whitelist\n", "src/app.txt": "one\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    return "acme/app"


def test_job_runs_and_reports_diff_logs_and_exit_codes(
    server: Server, repo: str, runtime: str, tmp_path: Path
):
    start_executor(server, tmp_path, runtime)
    job = server.client.submit(
        "batches",
        {
            "repositoryName": repo,
            "commit": "HEAD",
            "dockerSteps": [
                {
                    "image": "corral/busybox:1",
                    "commands": ["sed -i s/whitelist/allowlist/ README.md", "echo step-one"],
                },
                {
                    "image": "corral/busybox:1",
                    "commands": ["cat extra/note.txt", 'echo "$GREETING"'],
                    "env": ["GREETING=hi there"],
                },
            ],
            "files": {"extra/note.txt": {"content": "a note from the producer"}},
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "completed", done
    assert done["exitCodes"] == [0, 0]
    text = logs_text(server, job["id"])
    assert "step-one" in text and "a note from the producer" in text and "hi there" in text
    keys = [e["key"] for e in server.client.logs(job["id"])["entries"]]
    assert keys[:2] == ["setup.git.init", "setup.git.add-remote"]
    assert keys[-2:] == ["step.docker.0", "step.docker.1"]
    diff = server.client.result(job["id"])["diff"]
    assert "-hello whitelist" in diff and "+hello allowlist" in diff
    assert ".corral" not in diff  # our step scripts never show up in the diff


def test_failing_step_stops_the_job(server: Server, repo: str, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime)
    job = server.client.submit(
        "batches",
        {
            "repositoryName": repo,
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": ["echo before", "exit 3"]},
                {"image": "corral/busybox:1", "commands": ["echo never-runs"]},
            ],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "failed"
    assert done["error"] == "step.docker.0 failed with exit code 3"
    assert done["exitCodes"] == [3]
    assert "never-runs" not in logs_text(server, job["id"])


def test_a_failing_command_fails_the_step_unless_fail_fast_is_off(
    server: Server, repo: str, runtime: str, tmp_path: Path
):
    """corral's producer API fails a docker step at its first failing command (the default), per
    job or per step `failFast: false` runs every command as Sourcegraph's `set +e` scripts do."""
    start_executor(server, tmp_path, runtime)
    commands = ["echo before", "false", "echo after-the-failure"]
    step = {"image": "corral/busybox:1", "commands": commands}
    fast = server.client.submit("batches", {"repositoryName": repo, "dockerSteps": [step]})
    slow = server.client.submit(
        "batches", {"repositoryName": repo, "dockerSteps": [step], "failFast": False}
    )
    mixed = server.client.submit(
        "batches",
        {"repositoryName": repo, "failFast": False, "dockerSteps": [{**step, "failFast": True}]},
    )
    done = {name: wait_job(server, j["id"]) for name, j in (("fast", fast), ("slow", slow), ("mixed", mixed))}
    assert done["fast"]["state"] == "failed" and done["fast"]["exitCodes"] == [1], done["fast"]
    assert "after-the-failure" not in logs_text(server, fast["id"])  # neither traced nor printed
    assert done["slow"]["state"] == "completed" and done["slow"]["exitCodes"] == [0], done["slow"]
    assert logs_text(server, slow["id"]).count("after-the-failure") >= 2  # traced and printed
    assert done["mixed"]["state"] == "failed", done["mixed"]
    # the job view shows what runs: the server wrote `set -e` first
    assert done["fast"]["spec"]["dockerSteps"][0]["commands"] == ["set -e", *commands]


def test_dot_is_the_workspace_for_the_repository_and_step_dirs(
    server: Server, repo: str, runtime: str, tmp_path: Path
):
    """Sourcegraph's batch changes give every pre/post step `dir: "."`; `.` is the workspace."""
    start_executor(server, tmp_path, runtime)
    job = server.client.submit(
        "batches",
        {
            "repositoryName": repo,
            "repositoryDirectory": ".",
            "dockerSteps": [{"image": "corral/busybox:1", "dir": ".", "commands": ["cat README.md"]}],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "completed", done
    assert "hello whitelist" in logs_text(server, job["id"])


def test_memory_hog_is_oom_killed(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime, EXECUTOR_JOB_MEMORY="64M")
    job = server.client.submit(
        "batches", docker_job("x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}")
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "failed"
    assert "out of memory (limit 64 MiB)" in done["error"]
    assert done["outcome"] == "oom"


def test_timeout_fails_the_job(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime)
    job = server.client.submit("batches", docker_job("echo started", "sleep 120", timeoutSeconds=2))
    done = wait_job(server, job["id"], timeout=40)
    assert done["state"] == "failed"
    assert done["error"] == "job exceeded maximum execution time of 2s"
    assert "started" in logs_text(server, job["id"])


def test_cancel_mid_step(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime)
    job = server.client.submit("batches", docker_job("echo running", "sleep 120"))
    wait_log(server, job["id"], "running")
    t0 = time.monotonic()
    server.client.cancel(job["id"])
    done = wait_job(server, job["id"], timeout=30)
    assert done["state"] == "canceled"
    assert time.monotonic() - t0 < 15  # kill grace is 2 s; this only guards against "never"


def test_two_jobs_run_concurrently(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime, EXECUTOR_MAXIMUM_NUM_JOBS="2")
    # a long enough sleep that job a is still running when b has started, also when the second
    # container takes seconds to start on a loaded machine (3 s was too short in CI once)
    a = server.client.submit("batches", docker_job("echo a", "sleep 12"))
    b = server.client.submit("batches", docker_job("echo b", "sleep 12"))
    wait_log(server, a["id"], "echo a", timeout=90)
    wait_log(server, b["id"], "echo b", timeout=90)
    # Both are processing at the same time.
    assert {server.client.get(a["id"])["state"], server.client.get(b["id"])["state"]} == {"processing"}
    assert wait_job(server, a["id"])["state"] == "completed"
    assert wait_job(server, b["id"])["state"] == "completed"


def test_many_small_jobs(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime, EXECUTOR_MAXIMUM_NUM_JOBS="2")
    ids = [server.client.submit("batches", docker_job(f"echo job-{i}"))["id"] for i in range(12)]
    for i, job_id in enumerate(ids):
        done = wait_job(server, job_id, timeout=90)
        assert done["state"] == "completed", done
        assert f"job-{i}" in logs_text(server, job_id)


def test_secrets_are_redacted_across_chunks_and_encodings(server: Server, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime)
    secret = "hunter2-very-secret-value"
    b64 = base64.b64encode(secret.encode()).decode()
    job = server.client.submit(
        "batches",
        docker_job(
            # split across two writes (and two log flushes); no shell trace between the halves
            "set +x",
            "sleep 0.3",
            f"printf '{secret[:9]}'; sleep 0.7; printf '{secret[9:]}\\n'",
            f"echo {b64}",
            "env",
            redactedValues={secret: "[SECRET]"},
        ),
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "completed"
    text = logs_text(server, job["id"])
    assert "[SECRET]" in text
    assert secret not in text and secret[9:] not in text and b64[:20] not in text
    assert SECRET not in text  # the executor's token never reaches a job or a log
    assert secret not in server.client.get(job["id"])["spec"]["redactedValues"]  # never handed back


def test_bad_image_fails_with_a_clear_reason(server: Server, tmp_path: Path):
    require(docker_ok(), "Docker Engine is not reachable")
    # A registry on loopback where nothing listens: a Docker Hub name would make dockerd ask DNS.
    # It cannot be reached: not the job's fault, so errored (and retried), saying why (issue 15).
    start_executor(server, tmp_path, "docker", EXECUTOR_DOCKER_ALLOWED_REGISTRIES="127.0.0.1:9")
    image = "127.0.0.1:9/corral/does-not-exist:1"
    job = server.client.submit("batches", docker_job("true", image=image))
    done = wait_job(server, job["id"])
    assert done["state"] == "errored", done
    assert "cannot be reached" in done["error"] and image in done["error"]


def test_clone_options_shallow_sparse_tags(server: Server, tmp_path: Path):
    require(bwrap_ok(), "bubblewrap is needed for the shell runtime (git runs on host tools)")
    make_repo(tmp_path / "deep", {"keep/a.txt": "a\n", "drop/b.txt": "b\n"}, tag="v1.0", commits=3)
    server.client.add_repo("deep", str(tmp_path / "deep"))
    start_executor(server, tmp_path, "shell")
    shallow = server.client.submit(
        "batches",
        {
            "repositoryName": "deep",
            "shallowClone": True,
            "dockerSteps": [{"image": "x", "commands": ["git rev-list --count HEAD", "git tag"]}],
        },
    )
    sparse = server.client.submit(
        "batches",
        {
            "repositoryName": "deep",
            "sparseCheckout": ["keep/*"],
            "dockerSteps": [{"image": "x", "commands": ["ls keep drop 2>&1 || true"]}],
        },
    )
    tags = server.client.submit(
        "batches",
        {
            "repositoryName": "deep",
            "fetchTags": True,
            "dockerSteps": [{"image": "x", "commands": ["git tag", "git rev-list --count HEAD"]}],
        },
    )
    for j in (shallow, sparse, tags):
        assert wait_job(server, j["id"])["state"] == "completed"
    out = server.client.logs(shallow["id"])["entries"][-1]["out"]
    assert "\n1\n" in out and "v1.0" not in out
    out = server.client.logs(sparse["id"])["entries"][-1]["out"]
    assert "a.txt" in out and "b.txt" not in out
    out = server.client.logs(tags["id"])["entries"][-1]["out"]
    assert "v1.0" in out and "\n3\n" in out
    fetch = next(e for e in server.client.logs(shallow["id"])["entries"] if e["key"] == "setup.git.fetch")
    assert "--depth=1" in fetch["command"]


def test_plain_sourcegraph_protocol_without_extensions(tmp_path: Path):
    require(bwrap_ok(), "bubblewrap is needed for the shell runtime")
    with run_server(tmp_path, extensions=False) as server:
        start_executor(server, tmp_path, "shell", EXECUTOR_QUEUE_POLL_INTERVAL="200ms")
        job = server.client.submit("batches", docker_job("echo line-1", "sleep 1.2", "echo line-2"))
        done = wait_job(server, job["id"])
        assert done["state"] == "completed"
        text = logs_text(server, job["id"])
        assert "line-1" in text and "line-2" in text
        assert text.count("line-1") == 2  # "+ echo line-1" and its output, once each: no duplicated resend


def test_sigterm_lets_the_running_job_finish(server: Server, tmp_path: Path):
    require(bwrap_ok(), "bubblewrap is needed for the shell runtime")
    p = start_executor(server, tmp_path, "shell")
    job = server.client.submit("batches", docker_job("echo started", "sleep 2", "echo finished"))
    wait_log(server, job["id"], "started")
    rc = stop_executor(p)
    assert rc == 0
    done = server.client.get(job["id"])
    assert done["state"] == "completed"
    assert "finished" in logs_text(server, job["id"])


def test_cli_step_and_declared_outputs(server: Server, repo: str, runtime: str, tmp_path: Path):
    start_executor(server, tmp_path, runtime)
    job = server.client.submit(
        "batches",
        {
            "repositoryName": repo,
            "dockerSteps": [{"image": "corral/busybox:1", "commands": ["echo 'a report' > report.txt"]}],
            "cliSteps": [{"key": "ver", "command": ["version"]}],
            "outputs": ["report.txt", "missing.txt"],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "completed", done
    assert done["exitCodes"] == [0, 0]
    entries = server.client.logs(job["id"])["entries"]
    cli = next(e for e in entries if e["key"] == "step.src.ver")
    assert "0.1.0" in cli["out"]  # the corral CLI ran inside the sandbox, as Sourcegraph runs `src`
    files = server.client.result(job["id"])["files"]
    assert base64.b64decode(files["report.txt"]) == b"a report\n"
    assert "missing.txt" not in files
