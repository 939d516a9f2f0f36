"""Reliability end to end (shell runtime): the server restarting under a running job, an executor
killed mid-job, an executor whose job was taken away, and `corral executor validate`.

A small recording proxy (`Proxy`) can sit between one executor and the server: it keeps what the
executor sent and got (the job token of a dequeue, the status of every call) and can refuse its
heartbeats. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from corral.client import ProducerClient
from corral.embedded import free_port
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from corral.server.app import create_app
from corral.server.settings import ServerSettings
from corral.server.store import SqlStore
from corral.server.store.logs import MARKER_KEY
from tests.conftest import bwrap_ok, require
from tests.e2e.kit import (
    ADMIN,
    CORRAL,
    SECRET,
    Server,
    docker_job,
    executor_env,
    logs_text,
    wait_job,
    wait_log,
)

CGROUP_ROOT = "/sys/fs/cgroup"
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@pytest.fixture(autouse=True)
def _shell_sandbox() -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")


# -- a server on a chosen port -------------------------------------------------------------------
@contextmanager
def serve_at(data_dir: Path, port: int, **overrides: Any) -> Iterator[Server]:
    """Like kit.run_server, on a given port and data dir, so a test can restart "the same" server."""
    settings = ServerSettings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        executors_access_token=SECRET,
        admin_token=ADMIN,
        **overrides,
    )
    app = create_app(settings)
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    server = Server(url=url, client=ProducerClient(url, ADMIN), settings=settings)
    try:
        yield server
    finally:
        server.client.close()
        srv.should_exit = True
        t.join(15)
        assert not t.is_alive(), "the server did not stop"
        app.state.corral.store.close()


# -- executors -----------------------------------------------------------------------------------
@dataclass
class Executors:
    tmp: Path
    procs: list[subprocess.Popen[bytes]]
    prefixes: list[str]

    def start(self, url: str, name: str, prefix: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """`corral executor run` (shell runtime) with its own EXECUTOR_VM_PREFIX: the prefix scopes
        its cgroups and its janitor, so executors of other tests running on this host (job ids start
        at 1 on every test server) never touch this one's sandboxes, nor it theirs. `prefix`: that
        of an earlier executor (a restart of it)."""
        prefix = prefix or f"t{secrets.token_hex(4)}-{name}"
        self.prefixes.append(prefix)
        holder = Server(url=url, client=None, settings=None)  # type: ignore[arg-type]
        full = executor_env(holder, self.tmp, "shell", EXECUTOR_NAME=name, EXECUTOR_VM_PREFIX=prefix, **env)
        with open(self.tmp / f"executor-{name}.log", "wb") as log:
            p = subprocess.Popen([CORRAL, "executor", "run"], env=full, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"executor-{name}.log").read_text(errors="replace")

    def halt_all(self) -> None:
        for p in self.procs:
            halt(p)

    def remove_cgroup_parents(self) -> None:
        """The executors remove their job groups; their (empty) parent groups are left: remove them."""
        for prefix in self.prefixes:
            for parent in Path(CGROUP_ROOT).glob(f"*/corral-{prefix}"):
                for child in parent.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    parent.rmdir()

    @contextmanager
    def session(self) -> Iterator[Executors]:
        """Executors started inside stop on exit, while the server (and proxy) they talk to still run:
        a stopping executor reports to the server, and would otherwise retry for a minute."""
        try:
            yield self
        finally:
            self.halt_all()


def halt(p: subprocess.Popen[bytes]) -> None:
    """Stop an executor quickly: the second SIGTERM cancels its running jobs."""
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@pytest.fixture
def executors(tmp_path: Path) -> Iterator[Executors]:
    ex = Executors(tmp_path, [], [])
    try:
        yield ex
    finally:
        ex.halt_all()
        ex.remove_cgroup_parents()


# -- a recording proxy -----------------------------------------------------------------------------
@dataclass
class Seen:
    op: str  # last path segment: dequeue, heartbeat, appendExecutionLogEntry, markComplete, ...
    status: int
    body: dict[str, Any]
    at: float  # time.monotonic()


class Proxy:
    """An HTTP proxy in front of `upstream` for one executor: records every call and each dequeued
    job (with its token); refuses heartbeats with 503 while `block_heartbeats` is set."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.jobs: list[dict[str, Any]] = []
        self.block_heartbeats = False
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        op = request.url.path.rsplit("/", 1)[-1]
        if self.block_heartbeats and op == "heartbeat":
            response: Response = JSONResponse({"error": "heartbeats blocked by the test"}, status_code=503)
        else:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            async with httpx.AsyncClient(base_url=self.upstream, timeout=90, trust_env=False) as c:
                try:
                    r = await c.request(request.method, target, content=body, headers=headers)
                    response = Response(
                        r.content,
                        status_code=r.status_code,
                        headers={k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS},
                    )
                except httpx.HTTPError as exc:
                    response = JSONResponse({"error": f"proxy: {exc!r}"}, status_code=502)
            if op == "dequeue" and response.status_code == 200:
                with self._lock:
                    self.jobs.append(json.loads(response.body))
        try:
            sent = json.loads(body) if body else {}
        except ValueError:
            sent = {}
        with self._lock:
            self.seen.append(Seen(op, response.status_code, sent, time.monotonic()))
        await response(scope, receive, send)

    def calls(self, *ops: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.op in ops]


@contextmanager
def proxy_for(upstream: str) -> Iterator[tuple[Proxy, str]]:
    proxy = Proxy(upstream)
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            proxy,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "proxy did not start"
        time.sleep(0.02)
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(15)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return value


def job_call(url: str, op: str, job: dict[str, Any], executor: str, **body: Any) -> httpx.Response:
    """A job-scoped call with a job token, as an executor would make it."""
    headers = {
        "Authorization": f"Bearer {job['token']}",
        JOB_ID_HEADER: str(job["id"]),
        EXECUTOR_NAME_HEADER: executor,
    }
    payload = {"executorName": executor, "jobId": job["id"], "attempt": job["attempt"], **body}
    return httpx.post(
        f"{url}/.executors/queue/batches/{op}", json=payload, headers=headers, timeout=30, trust_env=False
    )


def entries(server: Server, job_id: int, attempt: int | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = server.client.logs(job_id)["entries"]
    return [e for e in found if attempt is None or e["attempt"] == attempt]


def step_lines(text: str, prefix: str) -> list[str]:
    """Output lines of the job (not the shell's `+ ...` trace) that start with `prefix`."""
    return [line for line in text.splitlines() if line.startswith(prefix)]


# -- 1. the server goes away and comes back ---------------------------------------------------------
def test_server_restart_mid_job_loses_and_duplicates_nothing(tmp_path: Path, executors: Executors):
    port, data = free_port(), tmp_path / "server"
    ticks = [f"tick-{i}" for i in range(1, 11)]
    with serve_at(data, port) as server:
        executors.start(server.url, "exec-a")  # it outlives this server: stopped by the fixture
        job = server.client.submit(
            "batches",
            docker_job(
                "echo before",
                # output keeps flowing while the server is away, so log sends must be retried
                "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 0.4; done",
                "echo after",
            ),
        )
        wait_log(server, job["id"], "tick-1")
    # The server is gone (its in-flight requests ended); the job keeps running on the executor.
    time.sleep(1.5)
    with serve_at(data, port) as server, executors.session():
        done = wait_job(server, job["id"], timeout=60)
        assert done["state"] == "completed", done
        assert done["exitCodes"] == [0]
        logs = entries(server, job["id"])
        assert {e["attempt"] for e in logs} == {1}  # never reset: the same attempt throughout
        step = next(e for e in logs if e["key"] == "step.docker.0")
        out = step["out"]
        assert step_lines(out, "tick-") == ticks  # all of them, in order, once each
        assert step_lines(out, "before") == ["before"] and step_lines(out, "after") == ["after"]
        assert out.count("+ echo before") == 1 and out.count("+ echo after") == 1
        assert step["exitCode"] == 0
    assert "cannot reach the server" in executors.log("exec-a")  # it noticed, said so, and carried on


# -- 2. the executor dies ---------------------------------------------------------------------------
def test_killed_executor_job_is_requeued_and_the_old_token_is_fenced(tmp_path: Path, executors: Executors):
    """kill -9 of exec-a mid-job: the job is requeued (its first attempt records why, and the log
    says so), exec-b runs it again, the old token is fenced; exec-a's sandbox (job directory,
    workspace filesystem and its image, cgroups) stays until exec-a starts again with the same
    EXECUTOR_VM_PREFIX, whose janitor removes it at once and says so (exec-b, another prefix,
    must not)."""
    prefix = f"t{secrets.token_hex(4)}-exec-a"
    with (
        serve_at(tmp_path / "server", free_port(), stalled_after=2, resetter_interval=0.5) as server,
        proxy_for(server.url) as (proxy, via_proxy),
        executors.session(),
    ):
        a = executors.start(via_proxy, "exec-a", prefix, EXECUTOR_JOB_USER="1000")
        # uid 1000 (exec-a) waits long; uid 2000 (exec-b, started later) finishes at once.
        job = server.client.submit(
            "batches",
            docker_job('echo "attempt as $(id -u)"', 'if [ "$(id -u)" = 1000 ]; then sleep 60; fi'),
        )
        wait_log(server, job["id"], "attempt as 1000")
        (first,) = proxy.jobs
        assert first["id"] == job["id"] and first["attempt"] == 1
        (left,) = [p for p in (tmp_path / "ws").iterdir() if p.name.startswith(f"{prefix}.")]
        cgroup = Path(CGROUP_ROOT) / "memory" / f"corral-{prefix}" / f"corral-batches-{job['id']}"
        a.kill()  # SIGKILL: no goodbye, no mark call
        a.wait(10)
        assert left.is_dir() and cgroup.is_dir()
        assert os.path.ismount(left / "workspace") and (left / "disk.img").is_file()  # the job's disk
        executors.start(server.url, "exec-b", EXECUTOR_JOB_USER="2000")
        done = wait_job(server, job["id"], timeout=40)
        assert done["state"] == "completed", done
        # the first attempt's reason, and the marker in the log the producers' API returns
        store = SqlStore(server.settings.db_url)
        try:
            attempts = store.jobs.attempts(job["id"])
        finally:
            store.close()
        assert (attempts[0].state, attempts[0].reason) == (
            "stalled",
            "executor exec-a stopped heartbeating; requeued",
        )
        (marker,) = [e for e in entries(server, job["id"]) if e["key"] == MARKER_KEY]
        assert marker["attempt"] == 1 and marker["out"] == (
            "[corral] attempt 1 lost (executor gone); attempt 2 next: "
            "executor exec-a stopped heartbeating; requeued\n"
        )
        assert left.is_dir() and cgroup.is_dir()  # exec-b's janitor left another prefix's alone
        second = entries(server, job["id"], attempt=2)
        assert second and "attempt as 2000" in "".join(e["out"] for e in second)
        assert "attempt as 2000" not in "".join(e["out"] for e in entries(server, job["id"], attempt=1))
        # The first attempt's token is fenced off now: every job call with it is a 409.
        r = job_call(server.url, "appendExecutionLogEntry", first, "exec-a", entryId=1, offset=0, data="x")
        assert r.status_code == 409, r.text
        r = job_call(server.url, "markComplete", first, "exec-a")
        assert r.status_code == 409, r.text
        r = job_call(server.url, "addExecutionLogEntry", first, "exec-a", key="k", command=[], out="late")
        assert r.status_code == 409, r.text
        assert server.client.get(job["id"])["state"] == "completed"
        assert "late" not in logs_text(server, job["id"])

        # exec-a starts again (same prefix): its start-up sweep removes what the killed one left
        executors.start(server.url, "exec-a2", prefix)
        wait_for(lambda: not left.exists() and not cgroup.exists(), "exec-a2's janitor", timeout=30)
        assert not any(str(left) in line for line in Path("/proc/self/mounts").read_text().splitlines())
        log = executors.log("exec-a2")
        assert f"janitor (owner {prefix}): removed workspace {left.name}" in log, log
        assert f"janitor (owner {prefix}): removed shell corral-batches-{job['id']}" in log, log


# -- 3. the job is taken away while the executor still runs it ---------------------------------------
def test_executor_stops_a_job_the_server_gave_to_someone_else(tmp_path: Path, executors: Executors):
    """exec-a heartbeats only every 30 s, the server gives up after 2 s and hands the job to exec-b.
    exec-a's next log call gets 409: it must stop the job, and nothing of it may reach attempt 2."""
    with (
        serve_at(tmp_path / "server", free_port(), stalled_after=2, resetter_interval=0.5) as server,
        proxy_for(server.url) as (proxy, via_proxy),
        executors.session(),
    ):
        executors.start(via_proxy, "exec-a", EXECUTOR_HEARTBEAT_INTERVAL="30s", EXECUTOR_JOB_USER="1000")
        job = server.client.submit(
            "batches",
            docker_job(
                'if [ "$(id -u)" = 1000 ]; then for i in $(seq 1 60); do echo a-tick-$i; sleep 0.5; done; fi',
                "echo finished-as-$(id -u)",
            ),
        )
        wait_log(server, job["id"], "a-tick-1")
        executors.start(server.url, "exec-b", EXECUTOR_JOB_USER="2000")
        done = wait_job(server, job["id"], timeout=40)
        assert done["state"] == "completed", done
        assert done["exitCodes"] == [0]
        # the completed attempt is exec-b's alone (2, unless exec-a, free again once refused, took the
        # requeued job first and lost that attempt the same way: then a later one)
        assert done["executorName"] == "exec-b" and done["attempt"] >= 2, done
        last = "".join(e["out"] for e in entries(server, job["id"], attempt=done["attempt"]))
        assert "finished-as-2000" in last and "a-tick" not in last
        # exec-a was told: its log calls for the job get 409 once the job moved on
        rejected = wait_for(
            lambda: [s for s in proxy.calls("appendExecutionLogEntry") if s.status == 409],
            "exec-a's log call to be refused",
            timeout=10,
        )
        # ... and it stops the job: no more output, a final (refused) mark, within a few seconds
        wait_for(
            lambda: proxy.calls("markComplete", "markErrored", "markFailed"),
            "exec-a to give the job up",
            timeout=8,
        )
        marks = proxy.calls("markComplete", "markErrored", "markFailed")
        assert all(m.status == 409 for m in marks), marks
        assert marks[0].at - rejected[0].at < 8
        first = "".join(e["out"] for e in entries(server, job["id"], attempt=1))
        assert "finished-as-1000" not in first  # the rest of the job never ran
        time.sleep(1.0)
        assert len(proxy.calls("appendExecutionLogEntry")) == len(
            [s for s in proxy.calls("appendExecutionLogEntry") if s.at <= marks[0].at]
        )  # quiet after giving up
        assert server.client.get(job["id"])["state"] == "completed"


def test_a_job_taken_back_by_the_same_executor_is_not_harmed_by_its_stale_attempt(
    tmp_path: Path, executors: Executors
):
    """BUG: exec-a (two slots) loses its heartbeats for a moment, the server requeues the job, and
    exec-a itself dequeues attempt 2 while attempt 1 still runs. Both attempts share the job label
    (`batches-<id>`: the same cgroup) and Worker.running is keyed by job id: when the stale attempt
    ends, its cleanup kills attempt 2's processes and its `running.pop` drops attempt 2's entry."""
    with (
        serve_at(tmp_path / "server", free_port(), stalled_after=2, resetter_interval=0.5) as server,
        proxy_for(server.url) as (proxy, via_proxy),
        executors.session(),
    ):
        executors.start(via_proxy, "exec-a", EXECUTOR_MAXIMUM_NUM_JOBS="2")
        job = server.client.submit("batches", docker_job("echo begin", "sleep 5", "echo end"))
        wait_log(server, job["id"], "begin")
        proxy.block_heartbeats = True
        wait_for(lambda: len(proxy.jobs) == 2, "exec-a to dequeue the job again", timeout=15)
        proxy.block_heartbeats = False
        assert [j["attempt"] for j in proxy.jobs] == [1, 2]
        done = wait_job(server, job["id"], timeout=40)
        assert done["state"] == "completed", done
        assert done["attempt"] == 2
        second = "".join(e["out"] for e in entries(server, job["id"], attempt=2))
        assert step_lines(second, "end") == ["end"]


# -- 4. corral executor validate ----------------------------------------------------------------------
def validate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORRAL, "executor", "validate"], env=env, capture_output=True, text=True, timeout=60
    )


def test_validate(tmp_path: Path):
    with serve_at(tmp_path / "server", free_port()) as server:
        good = executor_env(server, tmp_path, "shell")
        ok = validate(good)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "fine" in ok.stdout

        wrong = validate({**good, "EXECUTOR_FRONTEND_PASSWORD": "x" * 20 + "-not-the-secret"})
        assert wrong.returncode == 1, wrong.stdout + wrong.stderr
        assert "auth check failed: 401" in wrong.stdout and server.url in wrong.stdout
        assert "Traceback" not in wrong.stdout + wrong.stderr

        # validate asks only /.executors/test/auth (a heartbeat would register a ghost executor), so a
        # queue nothing was submitted to yet is no error; the summary names it
        other_queue = validate({**good, "EXECUTOR_QUEUE_NAME": "nosuchqueue"})
        assert other_queue.returncode == 0, other_queue.stdout + other_queue.stderr
        assert "nosuchqueue" in other_queue.stdout

        short = validate({**good, "EXECUTOR_FRONTEND_PASSWORD": "short"})
        assert short.returncode == 2
        assert "EXECUTOR_FRONTEND_PASSWORD" in short.stderr and "20 characters" in short.stderr
        assert "Traceback" not in short.stdout + short.stderr

    down = validate({**good, "EXECUTOR_FRONTEND_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 1
    assert "cannot reach the server" in down.stdout
    assert "Traceback" not in down.stdout + down.stderr
    assert os.environ.get("EXECUTOR_FRONTEND_PASSWORD") is None  # nothing leaked into our env
