"""End-to-end kit: a real server (uvicorn on 127.0.0.1, SQLite in tmp) and real executors
(`corral executor run` subprocesses), plus small helpers to make repositories and wait for jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.client import ProducerClient
from corral.embedded import free_port, serve_in_thread
from corral.server.settings import ServerSettings

SECRET = "e2e-executor-secret-0123456789"
ADMIN = "e2e-admin-token"
CORRAL = str(Path(sys.executable).with_name("corral"))
TERMINAL = ("completed", "failed", "errored", "canceled")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
}


@dataclass
class Server:
    url: str
    client: ProducerClient
    settings: ServerSettings
    executors: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextmanager
def run_server(tmp: Path, **overrides: Any) -> Iterator[Server]:
    port = free_port()
    settings = ServerSettings(
        host="127.0.0.1",
        port=port,
        data_dir=tmp / "server",
        executors_access_token=SECRET,
        admin_token=ADMIN,
        **overrides,
    )
    srv, t = serve_in_thread(settings)
    url = f"http://127.0.0.1:{port}"
    server = Server(url=url, client=ProducerClient(url, ADMIN), settings=settings)
    try:
        yield server
    finally:
        for p in server.executors:
            stop_executor(p)
        server.client.close()
        srv.should_exit = True
        t.join(10)


def executor_env(server: Server, tmp: Path, runtime: str, **env: str) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXECUTOR_FRONTEND_URL": server.url,
        "EXECUTOR_FRONTEND_PASSWORD": SECRET,
        "EXECUTOR_QUEUE_NAME": "batches",
        "EXECUTOR_RUNTIME": runtime,
        "EXECUTOR_WORKSPACE_ROOT": str(tmp / "ws"),
        "EXECUTOR_JOB_MEMORY": "512M",
        "EXECUTOR_JOB_NUM_CPUS": "1",
        "EXECUTOR_HEARTBEAT_INTERVAL": "1s",
        "EXECUTOR_KILL_GRACE": "2s",
        "EXECUTOR_CLI_PATH": CORRAL,
        # A prefix of this test process and server (its port): an executor's janitor sweeps what
        # carries its prefix, so executors of another test run (or a real one) are never touched.
        "EXECUTOR_VM_PREFIX": f"t{os.getpid()}-{server.url.rsplit(':', 1)[-1].strip('/')}",
    }
    base.update(env)
    if "EXECUTOR_QUEUE_NAMES" in env:
        base.pop("EXECUTOR_QUEUE_NAME")
    return base


def start_executor(server: Server, tmp: Path, runtime: str, **env: str) -> subprocess.Popen[bytes]:
    log = open(tmp / f"executor-{len(server.executors)}.log", "wb")
    p = subprocess.Popen(
        [CORRAL, "executor", "run"],
        env=executor_env(server, tmp, runtime, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server.executors.append(p)
    return p


def stop_executor(p: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)  # the second stop cancels running jobs
            try:
                return p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                return p.wait()
    return p.returncode


def make_repo(root: Path, files: dict[str, str], *, tag: str | None = None, commits: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=root, env=GIT_ENV, check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    for i in range(commits):
        for path, text in files.items():
            p = root / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text if i == commits - 1 else f"{text} (v{i})")
        git("add", ".")
        git("commit", "-qm", f"commit {i}")
    if tag:
        git("tag", tag)
    return root


def docker_job(*commands: str, image: str = "corral/busybox:1", **extra: Any) -> dict[str, Any]:
    return {"dockerSteps": [{"image": image, "commands": list(commands)}], **extra}


def wait_job(
    server: Server, job_id: int, states: tuple[str, ...] = TERMINAL, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = server.client.get(job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout}s"
        time.sleep(0.1)


def logs_text(server: Server, job_id: int) -> str:
    return "".join(f"== {e['key']}\n{e['out']}" for e in server.client.logs(job_id)["entries"])


def wait_log(server: Server, job_id: int, needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in logs_text(server, job_id):
        assert time.monotonic() < deadline, f"{needle!r} never appeared in the log of job {job_id}"
        time.sleep(0.1)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until `corral server` at url answers /healthz (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
        time.sleep(0.05)
