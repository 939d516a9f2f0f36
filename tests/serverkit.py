"""Helpers for testing the corral server over real HTTP.

`serve(settings)` runs the app under uvicorn in a background thread on 127.0.0.1 (a free port chosen
by the OS) and stops it afterwards. `Kit` wraps httpx clients for the three kinds of caller (admin,
executor, a job token) with small helpers for the calls the tests make again and again.
`make_git_repo` builds a small local repository with one commit. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from corral import __version__
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from corral.server.app import create_app
from corral.server.settings import ServerSettings
from corral.server.store import Store

EXECUTOR_SECRET = "executor-secret-0123456789"  # >= 20 characters
ADMIN_TOKEN = "admintoken-0123456789abcdef"
SERVER_VERSION = __version__
EXECUTOR = "test-host-3b0a6c1e"  # a default executor name
STARTUP_TIMEOUT = 15.0  # seconds
HTTP_TIMEOUT = 30.0  # seconds; every call in the tests returns far sooner
SIMPLE_STEPS = {"dockerSteps": [{"image": "alpine:3", "commands": ["echo hi"]}]}
# corral's own executor sends this User-Agent; the version-skew rule is about corral executors.
CORRAL_UA = f"corral-executor/{__version__}"


def settings_for(data_dir: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "executors_access_token": EXECUTOR_SECRET,
        "admin_token": ADMIN_TOKEN,
        "resetter_interval": 0.05,
    }
    values.update(overrides)
    return ServerSettings(**values)


@dataclass
class RunningServer:
    url: str
    settings: ServerSettings
    app: FastAPI
    server: uvicorn.Server

    @property
    def store(self) -> Store:
        store: Store = self.app.state.corral.store
        return store

    def waiting_on(self, key: str) -> bool:
        """True while some long-poll waits on `key` (a queue name, or "cancel:<executor>")."""
        return bool(self.app.state.corral.notifier._waiters.get(key))


_stopping: list[tuple[threading.Thread, FastAPI]] = []
_stopping_lock = threading.Lock()


def _finish(thread: threading.Thread, app: FastAPI, timeout: float) -> None:
    thread.join(timeout=timeout)
    assert not thread.is_alive(), "the test server did not stop"
    app.state.corral.store.close()


def reap_servers(timeout: float = 15.0) -> None:
    """Wait for servers stopped with `background_stop=True` to finish, and close their stores."""
    with _stopping_lock:
        pending = list(_stopping)
        _stopping.clear()
    for thread, app in pending:
        _finish(thread, app, timeout)


@contextlib.contextmanager
def serve(
    settings: ServerSettings, store: Store | None = None, *, background_stop: bool = False
) -> Iterator[RunningServer]:
    """Run the server app in a thread on 127.0.0.1 with a free port; stop it on exit.

    uvicorn's shutdown pauses about 0.2 s; with `background_stop` the caller does not wait for it
    (the server stops accepting at once) and `reap_servers()` later joins the thread.
    """
    app = create_app(settings, store)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="corral-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server exited during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the test server did not start within {STARTUP_TIMEOUT}s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", settings=settings, app=app, server=server)
    finally:
        server.should_exit = True
        if background_stop:
            with _stopping_lock:
                _stopping.append((thread, app))
        else:
            _finish(thread, app, timeout=15)


def job_headers(job: dict[str, Any], executor: str = EXECUTOR) -> dict[str, str]:
    """The headers of a job-scoped call made with the job's token."""
    return {
        "Authorization": f"Bearer {job['token']}",
        JOB_ID_HEADER: str(job["id"]),
        EXECUTOR_NAME_HEADER: executor,
    }


async def dequeue_async(
    client: httpx.AsyncClient, executor: str, queue: str = "batches"
) -> dict[str, Any] | None:
    """One dequeue by `executor` over an async client: the job, or None when the queue is empty (204)."""
    r = await client.post(
        f"/.executors/queue/{queue}/dequeue", json={"executorName": executor, "version": SERVER_VERSION}
    )
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Kit:
    """httpx clients for one running server: `admin`, `executor` and `anon` (no credentials)."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.url = srv.url
        common: dict[str, Any] = {"base_url": srv.url, "timeout": HTTP_TIMEOUT, "trust_env": False}
        self.admin = httpx.Client(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **common)
        self.executor = httpx.Client(
            headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": CORRAL_UA},
            **common,
        )
        self.anon = httpx.Client(**common)

    def close(self) -> None:
        for c in (self.admin, self.executor, self.anon):
            c.close()

    # -- producer -----------------------------------------------------------------------------
    def submit(self, queue: str = "batches", **fields: Any) -> dict[str, Any]:
        body = {**SIMPLE_STEPS, **fields}
        r = self.admin.post(f"/api/v1/queues/{queue}/jobs", json=body)
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    def get_job(self, job_id: int) -> dict[str, Any]:
        r = self.admin.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    def wait_state(self, job_id: int, state: str, timeout: float = 10.0) -> dict[str, Any]:
        job: dict[str, Any] = wait_until(
            lambda: (j := self.get_job(job_id))["state"] == state and j,
            timeout,
            f"job {job_id} to become {state}",
        )
        return job

    def add_repo(self, name: str, path: Path | str) -> httpx.Response:
        return self.admin.post("/api/v1/repos", json={"name": name, "path": str(path)})

    # -- executor -----------------------------------------------------------------------------
    def dequeue(
        self, queue: str = "batches", executor: str = EXECUTOR, version: str = SERVER_VERSION, **extra: Any
    ) -> httpx.Response:
        return self.executor.post(
            f"/.executors/queue/{queue}/dequeue",
            json={"executorName": executor, "version": version, **extra},
        )

    def take(self, queue: str = "batches", executor: str = EXECUTOR, **extra: Any) -> dict[str, Any]:
        """Dequeue and insist on getting a job."""
        r = self.dequeue(queue, executor, **extra)
        assert r.status_code == 200, (r.status_code, r.text)
        job: dict[str, Any] = r.json()
        return job

    def heartbeat(
        self, queue: str, job_ids: list[Any], executor: str = EXECUTOR, **extra: Any
    ) -> dict[str, Any]:
        r = self.executor.post(
            f"/.executors/queue/{queue}/heartbeat",
            json={"executorName": executor, "jobIds": job_ids, **extra},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def job_call(
        self,
        queue: str,
        op: str,
        job: dict[str, Any],
        executor: str = EXECUTOR,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> httpx.Response:
        """A job-scoped queue call (addExecutionLogEntry, markComplete, ...) with the job's token."""
        return self.anon.post(
            f"/.executors/queue/{queue}/{op}",
            json={"executorName": executor, "jobId": job["id"], **body},
            headers=headers if headers is not None else job_headers(job, executor),
        )


# -- git ----------------------------------------------------------------------------------------
def git_env(home: Path) -> dict[str, str]:
    """An environment for git in tests: no user or system config, no prompts, no proxies."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "LC_ALL": "C",
    }


def git(cwd: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(cwd), capture_output=True, text=True, timeout=timeout
    )
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def make_git_repo(path: Path, files: dict[str, str] | None = None) -> str:
    """`git init` a repository at `path` with one commit of `files`; returns the commit id."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    for name, content in (files or {"README.md": "hello\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "initial")
    return git(path, "rev-parse", "HEAD").stdout.strip()


def commit_file(repo: Path, name: str, content: str, message: str = "change") -> str:
    (repo / name).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD").stdout.strip()
