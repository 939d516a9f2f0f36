"""A server (child process) and an executor (a thread of this process), for `corral demo` and
`corral batch run` without --server. Everything listens on 127.0.0.1 only and stops when the
context exits. `serve_in_thread` runs a server inside the calling process (for tests).

Safety on a shared host (an executor host may run production executors beside a local run):
- The embedded executor owns a prefix of its own (EXECUTOR_VM_PREFIX `local-<random>`, kept in the
  data dir so that a later run there sweeps what a crashed one left), never `executor` (the default
  of every production executor) and never the caller's EXECUTOR_VM_PREFIX. Its janitor only touches
  resources carrying that owner label. One run at a time holds a data dir (a lock file).
- The server child runs in its own session, so a Ctrl-C on the terminal reaches only this process,
  which then cancels the jobs and stops the executor while the server still answers; the server is
  stopped last. It also dies with this process (PR_SET_PDEATHSIG), so no `corral server` is left.
- Teardown is bounded: stop the executor (canceling running jobs when the context ends with an
  exception, e.g. KeyboardInterrupt), sweep everything of our prefix (containers, cgroups,
  workspaces: nothing of ours may run after us), stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from corral.client import ProducerClient
from corral.errors import ConfigError, CorralError, ServerError
from corral.executor.janitor import sweep_once
from corral.executor.main import build_worker
from corral.executor.settings import ExecutorSettings
from corral.executor.worker import Worker
from corral.protocol.states import JobState
from corral.server.app import create_app
from corral.server.settings import ServerSettings

__all__ = ["PARENT_ENV", "Embedded", "embedded", "free_port", "serve_in_thread"]

START_TIMEOUT = 20.0  # seconds for the server to answer / the executor to connect
KILL_GRACE = "2s"  # a step's SIGTERM -> SIGKILL grace in a local run (Ctrl-C must end it quickly)
STOP_TIMEOUT = 15.0  # seconds the executor may take to stop after a cancel (grace + cleanup + marks)
FINISH_TIMEOUT = 30.0  # seconds the executor may take to stop after a normal end (no jobs left)
SWEEP_TIMEOUT = 20.0  # seconds for the final sweep of our own resources
SERVER_STOP_TIMEOUT = 8.0  # seconds between SIGTERM and SIGKILL of the server child
PREFIX_FILE = "executor-prefix"  # in the data dir: the embedded executor's EXECUTOR_VM_PREFIX
LOCK_FILE = "embedded.lock"
PREFIX_RE = re.compile(r"local-[0-9a-f]{8}\Z")
# `corral server` started with this variable set to our pid dies with us (see cli.server)
PARENT_ENV = "CORRAL_EXIT_WITH_PARENT"

log = logging.getLogger("corral.embedded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_in_thread(settings: ServerSettings) -> tuple[uvicorn.Server, threading.Thread]:
    """Start a server for `settings` (on settings.host:port) in a daemon thread; return once it listens.
    Stop it with `server.should_exit = True` and join the thread."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name="corral-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise CorralError("the embedded server did not start")
        time.sleep(0.02)
    return server, thread


def _start_server_process(data_dir: Path, port: int, secret: str, admin: str) -> subprocess.Popen[bytes]:
    """`corral server` as a child process in its own session (a terminal's Ctrl-C does not reach
    it), dying with this process; its log goes to <data_dir>/server.log. Returns once it answers."""
    env = {
        **os.environ,
        "EXECUTORS_ACCESS_TOKEN": secret,
        "CORRAL_ADMIN_TOKEN": admin,
        PARENT_ENV: str(os.getpid()),
    }
    argv = [
        sys.executable,
        "-m",
        "corral",  # corral/__main__.py: `-m corral.cli` would load corral.cli twice (as __main__ too)
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warning",
    ]
    with open(data_dir / "server.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_until_up(proc, port, data_dir)
    except BaseException:
        _stop_server(proc)
        raise
    return proc


def _wait_until_up(proc: subprocess.Popen[bytes], port: int, data_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise CorralError(f"the embedded server did not start:\n{tail}")
        time.sleep(0.05)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir` for this run: two local runs in one data dir would share a database and a
    prefix, and each one's janitor would remove the other's containers."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another local corral run (batch run or demo) is using {data_dir}; wait for it to end "
                "or choose another --data-dir"
            ) from None
        yield
    finally:
        os.close(fd)


def own_prefix(data_dir: Path) -> str:
    """The embedded executor's EXECUTOR_VM_PREFIX: `local-<8 hex>`, made once per data dir."""
    path = data_dir / PREFIX_FILE
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text().strip()
        if PREFIX_RE.match(kept):
            return kept
    prefix = f"local-{secrets.token_hex(4)}"
    path.write_text(prefix + "\n")
    return prefix


@dataclass
class Embedded:
    url: str
    admin_token: str
    data_dir: Path
    runtime: str
    prefix: str  # the executor's EXECUTOR_VM_PREFIX (owner label of everything it creates)


class _ExecutorThread:
    """The executor's worker on its own event loop in a daemon thread."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.worker: Worker | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="corral-executor", daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(START_TIMEOUT):
            raise CorralError("the embedded executor did not start")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        try:
            self.worker = await build_worker(self.settings)
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            await self.worker.run(install_signals=False)
        finally:
            await self.worker.client.aclose()

    def stop(self, *, cancel_running: bool) -> None:
        """Stop taking jobs (and cancel the running ones when `cancel_running`); wait, bounded."""
        worker = self.worker
        if worker is None or not self.thread.is_alive():
            return
        if cancel_running:
            self.loop.call_soon_threadsafe(_stop_now, worker)
            self.thread.join(STOP_TIMEOUT)
        else:
            self.loop.call_soon_threadsafe(worker.stop)
            self.thread.join(FINISH_TIMEOUT)
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(worker.stop)
                self.thread.join(STOP_TIMEOUT)
        if self.thread.is_alive():
            log.warning("the embedded executor did not stop in time; removing its resources")

    def sweep(self) -> None:
        """Remove everything of our prefix (containers, cgroups, workspaces): nothing runs after us."""
        worker = self.worker
        if worker is None:
            return
        s = self.settings
        job = sweep_once(
            worker.handler.runtimes.distinct(),
            set,
            workspace_root=s.workspace_root,
            owner=s.vm_prefix,
            keep_workspaces=False,
        )
        try:
            if self.thread.is_alive():  # stuck: sweep on its loop, which still runs
                asyncio.run_coroutine_threadsafe(job, self.loop).result(SWEEP_TIMEOUT)
            else:
                self.loop.run_until_complete(asyncio.wait_for(job, SWEEP_TIMEOUT))
                self.loop.close()
        except (FutureTimeout, TimeoutError):
            log.warning("the final sweep of %s's resources did not finish in time", s.vm_prefix)


def _cancel_leftovers(url: str, admin: str) -> None:
    """Cancel the jobs an earlier run in this data dir left unfinished (it was killed): a local
    server runs only the jobs of the run that started it, never a stale one later."""
    client = ProducerClient(url, admin)
    try:
        left = [
            j.id
            for state in (JobState.QUEUED, JobState.ERRORED, JobState.PROCESSING)
            for j in client.jobs(state=state.value, limit=500)
        ]
        for job_id in left:
            with contextlib.suppress(ServerError):  # it may have ended meanwhile
                client.cancel_job(job_id)
    finally:
        client.close()
    if left:
        log.warning(
            "canceled %d job(s) an earlier run left unfinished in this data dir: %s",
            len(left),
            ", ".join(map(str, sorted(left))),
        )


def _stop_now(worker: Worker) -> None:
    """Stop taking jobs and cancel the running ones (the worker's second stop), on its loop."""
    worker.stop()
    if worker.running:
        worker.stop()


@contextmanager
def _executor_logs(data_dir: Path) -> Iterator[None]:
    """The embedded executor logs everything to <data_dir>/executor.log and its warnings (a
    janitor's removals among them) to stderr, as does this module."""
    to_file = logging.FileHandler(data_dir / "executor.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_file.setLevel(logging.INFO)
    to_err = logging.StreamHandler(sys.stderr)
    to_err.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    to_err.setLevel(logging.WARNING)
    loggers = [logging.getLogger("corral.executor"), log]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(to_file)
        lg.addHandler(to_err)
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(to_file)
            lg.removeHandler(to_err)
            lg.setLevel(level)
            lg.propagate = propagate
        to_file.close()


@contextmanager
def embedded(
    data_dir: Path,
    *,
    runtime: str,
    queues: tuple[str, ...] = ("batches",),
    max_jobs: int = 2,
    env: dict[str, str] | None = None,
) -> Iterator[Embedded]:
    """A server and an executor for this process. When the block ends with an exception (a
    KeyboardInterrupt included) running jobs are canceled at once; otherwise they may finish."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _data_dir_lock(data_dir), _executor_logs(data_dir):
        prefix = own_prefix(data_dir)
        secret = secrets.token_urlsafe(24)
        admin = secrets.token_urlsafe(24)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        xenv = {
            "EXECUTOR_JOB_MEMORY": "1G",
            "EXECUTOR_JOB_NUM_CPUS": "1",
            "EXECUTOR_KILL_GRACE": KILL_GRACE,
            "EXECUTOR_CLEANUP_TASK_INTERVAL": "10m",
            **(env or {}),
            # ours alone, whatever `env` says: the janitor's safety and the server's address
            "EXECUTOR_FRONTEND_URL": url,
            "EXECUTOR_FRONTEND_PASSWORD": secret,
            "EXECUTOR_QUEUE_NAMES" if len(queues) > 1 else "EXECUTOR_QUEUE_NAME": ",".join(queues),
            "EXECUTOR_RUNTIME": runtime,
            "EXECUTOR_MAXIMUM_NUM_JOBS": str(max_jobs),
            "EXECUTOR_WORKSPACE_ROOT": str(data_dir / "workspaces"),
            "EXECUTOR_VM_PREFIX": prefix,
        }
        settings = ExecutorSettings.from_env(xenv)
        server = _start_server_process(data_dir, port, secret, admin)
        executor = _ExecutorThread(settings)
        failed = True
        try:
            _cancel_leftovers(url, admin)
            executor.start()
            yield Embedded(url=url, admin_token=admin, data_dir=data_dir, runtime=runtime, prefix=prefix)
            failed = False
        finally:
            executor.stop(cancel_running=failed)
            executor.sweep()
            _stop_server(server)
