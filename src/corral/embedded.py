"""A server (child process) and an executor (a thread of this process), for `corral demo` and
`corral batch run` without --server. Everything listens on 127.0.0.1 only and stops when the
context exits. `serve_in_thread` runs a server inside the calling process (for tests)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from corral.errors import CorralError
from corral.executor.main import build_worker
from corral.executor.settings import ExecutorSettings
from corral.executor.worker import Worker
from corral.server.app import create_app
from corral.server.settings import ServerSettings

START_TIMEOUT = 20.0  # seconds for the server to answer / the executor to connect


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
    """`corral server` as a child process (its own event loop and subprocesses, apart from the
    executor's); its log goes to <data_dir>/server.log."""
    env = {**os.environ, "EXECUTORS_ACCESS_TOKEN": secret, "CORRAL_ADMIN_TOKEN": admin}
    argv = [
        sys.executable,
        "-m",
        "corral.cli",
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
    with open(data_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise CorralError(f"the embedded server did not start:\n{tail}")
        time.sleep(0.05)


@dataclass
class Embedded:
    url: str
    admin_token: str
    data_dir: Path
    runtime: str


@contextmanager
def embedded(
    data_dir: Path,
    *,
    runtime: str,
    queues: tuple[str, ...] = ("batches",),
    max_jobs: int = 2,
    env: dict[str, str] | None = None,
) -> Iterator[Embedded]:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    admin = secrets.token_urlsafe(24)
    port = free_port()
    server = _start_server_process(data_dir, port, secret, admin)
    url = f"http://127.0.0.1:{port}"
    xenv = {
        "EXECUTOR_FRONTEND_URL": url,
        "EXECUTOR_FRONTEND_PASSWORD": secret,
        "EXECUTOR_QUEUE_NAMES" if len(queues) > 1 else "EXECUTOR_QUEUE_NAME": ",".join(queues),
        "EXECUTOR_RUNTIME": runtime,
        "EXECUTOR_MAXIMUM_NUM_JOBS": str(max_jobs),
        "EXECUTOR_WORKSPACE_ROOT": str(data_dir / "workspaces"),
        "EXECUTOR_JOB_MEMORY": "1G",
        "EXECUTOR_JOB_NUM_CPUS": "1",
        "EXECUTOR_CLEANUP_TASK_INTERVAL": "10m",
        **(env or {}),
    }
    loop = asyncio.new_event_loop()
    holder: dict[str, Worker | BaseException] = {}
    ready = threading.Event()

    def run_executor() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            try:
                worker = await build_worker(ExecutorSettings.from_env(xenv))
            except BaseException as exc:
                holder["error"] = exc
                ready.set()
                return
            holder["worker"] = worker
            ready.set()
            try:
                await worker.run(install_signals=False)
            finally:
                await worker.client.aclose()

        loop.run_until_complete(main())

    logging.getLogger("corral.executor").setLevel(logging.WARNING)
    et = threading.Thread(target=run_executor, name="corral-executor", daemon=True)
    et.start()
    ready.wait(START_TIMEOUT)
    try:
        if isinstance(holder.get("error"), BaseException):
            raise holder["error"]  # type: ignore[misc]
        yield Embedded(url=url, admin_token=admin, data_dir=data_dir, runtime=runtime)
    finally:
        worker = holder.get("worker")
        if isinstance(worker, Worker):
            loop.call_soon_threadsafe(worker.stop)
            et.join(30)
            if et.is_alive():
                loop.call_soon_threadsafe(worker.stop)  # the second stop cancels what still runs
        et.join(30)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
