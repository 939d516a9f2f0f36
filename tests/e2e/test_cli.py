"""The `corral` CLI as a new operator uses it, against a real `corral server` process: what each
command prints (and with --json), its exit codes, and `job logs -f` across a server restart.

The executor's side is played over the queue API (heartbeat, dequeue, log appends, marks), so each
job's log and result are exactly what the test wrote."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import __version__
from corral.embedded import free_port
from tests.e2e.kit import CORRAL, SECRET, make_repo, wait_healthy
from tests.e2e.localkit import wait_exit

ADMIN = "cli-test-admin-token"
EXECUTOR = "cli-test-executor"
STEP = {"dockerSteps": [{"image": "corral/busybox:1", "commands": ["true"]}]}


@dataclass
class Srv:
    url: str
    port: int
    data: Path
    proc: subprocess.Popen[bytes]

    def start(self) -> None:
        env = {
            **os.environ,
            "EXECUTORS_ACCESS_TOKEN": SECRET,
            "CORRAL_ADMIN_TOKEN": ADMIN,
            "CORRAL_STALLED_AFTER": "600",  # the test plays the executor and heartbeats rarely
        }
        with open(self.data.parent / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [CORRAL, "server", "--port", str(self.port), "--data-dir", str(self.data)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.url, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- the producer's side -------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(
            method, f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30, **kw
        )
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    # -- the executor's side -------------------------------------------------------------------------
    def queue(self, op: str, body: dict[str, Any], job: dict[str, Any] | None = None) -> httpx.Response:
        if job is None:
            headers = {"Authorization": f"token-executor {SECRET}"}
        else:
            headers = {
                "Authorization": f"Bearer {job['token']}",
                "X-Sourcegraph-Job-ID": str(job["id"]),
                "X-Sourcegraph-Executor-Name": EXECUTOR,
            }
            body = {"executorName": EXECUTOR, "jobId": job["id"], **body}
        r = httpx.post(f"{self.url}/.executors/queue/batches/{op}", json=body, headers=headers, timeout=30)
        assert r.status_code < 300, (op, r.text)
        return r

    def take(self) -> dict[str, Any]:
        self.queue("heartbeat", {"executorName": EXECUTOR, "jobIds": []})
        job: dict[str, Any] = self.queue("dequeue", {"executorName": EXECUTOR, "version": __version__}).json()
        return job

    def entry(self, job: dict[str, Any], key: str) -> int:
        entry: int = self.queue("addExecutionLogEntry", {"key": key, "command": ["sh"]}, job).json()
        return entry

    def append(self, job: dict[str, Any], entry: int, offset: int, data: str, **end: Any) -> None:
        self.queue("appendExecutionLogEntry", {"entryId": entry, "offset": offset, "data": data, **end}, job)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Srv]:
    port = free_port()
    s = Srv(url=f"http://127.0.0.1:{port}", port=port, data=tmp_path / "server", proc=None)  # type: ignore[arg-type]
    s.start()
    try:
        yield s
    finally:
        s.stop()


def corral(
    srv: Srv, *args: str, check: int | None = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_URL": srv.url, "CORRAL_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"}
    p = subprocess.run(
        [CORRAL, *args], env=env, capture_output=True, text=True, timeout=120, input=stdin, check=False
    )
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


# -- job logs -f ------------------------------------------------------------------------------------
def test_job_logs_follow_reconnects_across_a_server_restart(srv: Srv, tmp_path: Path) -> None:
    """The follower loses the server mid-line, reconnects from its offsets once the server is back,
    prints every line exactly once and whole (a line split across appends and the restart), and
    exits 1 because the job failed."""
    job_id = srv.api("POST", "/queues/batches/jobs", json=STEP)["id"]
    job = srv.take()
    entry = srv.entry(job, "step.docker.0")
    srv.append(job, entry, 0, "first line\nhal")
    out = tmp_path / "follow.out"
    env = {**os.environ, "CORRAL_URL": srv.url, "CORRAL_ADMIN_TOKEN": ADMIN}
    with open(out, "wb") as f:
        follower = subprocess.Popen([CORRAL, "job", "logs", "-f", str(job_id)], env=env, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 60
        while "first line" not in out.read_text():
            assert time.monotonic() < deadline and follower.poll() is None, out.read_text()
            time.sleep(0.05)
        srv.stop()
        deadline = time.monotonic() + 60
        while "reconnecting" not in out.read_text():
            assert time.monotonic() < deadline and follower.poll() is None, out.read_text()
            time.sleep(0.05)
        srv.start()
        srv.append(job, entry, 14, "f done\nlast line\n", exitCode=3, durationMs=42)
        srv.queue("markFailed", {"errorMessage": "step.docker.0 failed with exit code 3"}, job)
        code = wait_exit(follower, 90)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    text = out.read_text()
    assert code == 1, text
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert lines.count("  first line") == 1, text
    assert lines.count("  half done") == 1, text  # "hal" + "f done", across the restart, one line
    assert lines.count("  last line") == 1, text
    assert "  ⏹ exit 3 (42 ms)" in lines, text
    assert "● job failed: step.docker.0 failed with exit code 3" in lines, text


def test_job_logs_exit_codes_and_the_plain_view(srv: Srv) -> None:
    """-f exits 0 for a completed job and 1 for a canceled one (as `gh run watch --exit-status`);
    the plain view of an entry without an exit code says so instead of `(exit None, None ms)`."""
    done = srv.api("POST", "/queues/batches/jobs", json=STEP)["id"]
    job = srv.take()
    entry = srv.entry(job, "step.docker.0")
    srv.append(job, entry, 0, "ok\n", exitCode=0, durationMs=7)
    srv.queue("markComplete", {}, job)
    p = corral(srv, "job", "logs", "-f", str(done))
    assert "  ok" in p.stdout and "● job completed" in p.stdout
    assert corral(srv, "job", "logs", str(done)).stdout.startswith("== step.docker.0 (exit 0, 7 ms)\nok\n")

    running = srv.api("POST", "/queues/batches/jobs", json=STEP)["id"]
    job = srv.take()
    srv.entry(job, "step.docker.0")
    plain = corral(srv, "job", "logs", str(running)).stdout
    assert "None" not in plain and "== step.docker.0 (running)" in plain
    srv.api("POST", f"/jobs/{running}/cancel")
    srv.queue("markFailed", {"errorMessage": "canceled"}, job)
    p = corral(srv, "job", "logs", "-f", str(running), check=1)
    assert "● job canceled" in p.stdout
    plain = corral(srv, "job", "logs", str(running)).stdout
    assert "None" not in plain and "== step.docker.0 (ended without an exit code)" in plain
    lines = [
        json.loads(x)
        for x in corral(srv, "job", "logs", "-f", str(running), "--json", check=1).stdout.split("\n")
        if x
    ]
    assert lines[0]["type"] == "entry" and lines[-1] == {
        "type": "state",
        "state": "canceled",
        "error": "canceled",
    }


# -- repositories, jobs, results ----------------------------------------------------------------------
def test_repositories_and_jobs_as_a_new_operator_sees_them(srv: Srv, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "api", {"README.md": "hello\n"})
    assert corral(srv, "repo", "list").stdout.startswith("no repositories yet")
    p = corral(srv, "repo", "add", "acme/api", repo.as_uri())  # a file:// URL
    assert p.stdout == f"repository acme/api added (from {repo.as_uri()})\n"
    p = corral(srv, "repo", "add", "acme/api", str(repo))
    assert p.stdout == f"repository acme/api refreshed (from {repo})\n"
    listed = corral(srv, "repo", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "UPDATED", "SOURCE"] and listed[1].startswith("acme/api  ")
    assert json.loads(corral(srv, "repo", "list", "--json").stdout)[0]["name"] == "acme/api"

    assert corral(srv, "job", "list").stdout == "no jobs yet\n"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({**STEP, "repositoryName": "acme/api"}))
    p = corral(srv, "job", "submit", "batches", str(spec))
    assert p.stdout == "job 1 queued; follow with: corral job logs -f 1\n"
    assert (
        json.loads(corral(srv, "job", "submit", "batches", "-", "--json", stdin=spec.read_text()).stdout)[
            "id"
        ]
        == 2
    )
    rows = corral(srv, "job", "list").stdout.splitlines()
    assert rows[0].split() == ["ID", "QUEUE", "STATE", "CREATED", "TOOK", "REPOSITORY", "ERROR"]
    assert rows[1].split()[:3] == ["2", "batches", "queued"] and "acme/api" in rows[1]
    assert len(rows) == 3
    assert corral(srv, "job", "list", "--repo", "acme/none").stdout == "no jobs (repository acme/none)\n"
    assert corral(srv, "job", "list", "--state", "failed").stdout == "no jobs (state failed)\n"
    p = corral(srv, "job", "list", "--state", "bogus", check=2)
    assert "bogus" in p.stderr and "queued" in p.stderr
    p = corral(srv, "job", "submit", "batches", str(tmp_path / "nope.json"), check=2)
    assert p.stderr.startswith("error: cannot read")

    p = corral(srv, "repo", "remove", "acme/api", check=2)
    assert "cancel them first" in p.stderr
    assert corral(srv, "job", "cancel", "1").stdout == "job 1 canceled\n"
    corral(srv, "job", "cancel", "2")
    assert corral(srv, "repo", "remove", "acme/api").stdout == "repository acme/api removed\n"
    assert corral(srv, "repo", "list").stdout.startswith("no repositories yet")


def test_job_get_result_retry_and_executor_list(srv: Srv) -> None:
    secret = "hunter2-secret-value"
    body = {
        "dockerSteps": [{"image": "corral/busybox:1", "commands": ["echo hi"], "env": [f"PW={secret}"]}],
        "redactedValues": {secret + "\n": "[PW]"},  # read from a file: with its newline
        "outputs": ["report.bin"],
    }
    job_id = srv.api("POST", "/queues/batches/jobs", json=body)["id"]
    assert corral(srv, "executor", "list").stdout.startswith("no executor has connected yet")
    job = srv.take()
    rows = corral(srv, "executor", "list").stdout.splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "QUEUES", "VERSION", "RUNNING", "LAST", "SEEN"]
    assert rows[1].split()[:3] == [EXECUTOR, "active", "batches"]
    diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    blob = bytes(range(256))
    srv.queue(
        "uploadResult",
        {"exitCodes": [0], "diff": diff, "files": {"report.bin": base64.b64encode(blob).decode()}},
        job,
    )
    srv.queue("markComplete", {}, job)

    shown = corral(srv, "job", "get", str(job_id)).stdout
    assert shown.startswith(f"job {job_id}: completed\n") and "env PW=[PW]" in shown
    assert secret not in shown and "hunter2" not in corral(srv, "job", "get", str(job_id), "--json").stdout
    summary = corral(srv, "job", "result", str(job_id)).stdout
    assert f"job {job_id} (attempt 1): exit codes 0" in summary
    assert "diff: 1 file(s) changed, +1 -1" in summary and "file report.bin (256 bytes)" in summary
    assert corral(srv, "job", "result", str(job_id), "--diff").stdout == diff
    got = subprocess.run(
        [CORRAL, "job", "result", str(job_id), "--file", "report.bin"],
        env={**os.environ, "CORRAL_URL": srv.url, "CORRAL_ADMIN_TOKEN": ADMIN},
        capture_output=True,
        timeout=60,
    )
    assert got.returncode == 0 and got.stdout == blob
    p = corral(srv, "job", "result", str(job_id), "--file", "nope", check=2)
    assert "no output file 'nope' (its files: report.bin)" in p.stderr
    assert json.loads(corral(srv, "job", "result", str(job_id), "--json").stdout)["diff"] == diff

    p = corral(srv, "job", "retry", str(job_id))
    assert (
        p.stdout
        == f"job {job_id} submitted again as job {job_id + 1}; follow with: corral job logs -f {job_id + 1}\n"
    )
    p = corral(srv, "job", "retry", str(job_id + 1), check=2)
    assert "only a finished job can be retried" in p.stderr
    p = corral(srv, "job", "result", str(job_id + 1), check=2)
    assert "has no result yet" in p.stderr


def test_help_reads_as_words() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    for args in ([], ["job"], ["repo", "add"], ["job", "logs"], ["demo"], ["batch", "run"], ["job", "list"]):
        p = subprocess.run([CORRAL, *args, "--help"], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "<bool>" not in p.stdout and "{" not in p.stdout.splitlines()[1], p.stdout
    p = subprocess.run([CORRAL, "repo", "add", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert "Usage: corral repo add [OPTIONS] NAME SOURCE" in p.stdout
    p = subprocess.run(
        [CORRAL, "executor", "run", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    for name in (
        "EXECUTOR_FRONTEND_URL",
        "EXECUTOR_VM_PREFIX",
        "EXECUTOR_JOB_MEMORY",
        "EXECUTOR_DOCKER_RUNTIME",
    ):
        assert name in p.stdout, p.stdout
    assert json.loads(
        subprocess.run([CORRAL, "version", "--json"], capture_output=True, text=True, timeout=60).stdout
    ) == {"version": __version__}
