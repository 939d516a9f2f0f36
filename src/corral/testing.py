"""Fakes and an in-process harness for tests: no root, no sockets, no docker. Not for production.

- `FakeRuntime`: a Runtime (corral.executor.runtimes.base) that runs nothing. Each step does what its
  environment says (the `FAKE_*` variables below), honours cancellation as the Protocol requires
  (signal, grace, kill, re-raise), keeps per-job state keyed by the job's label and records every
  call. Registered as ``fake`` in the runtime registry, so ``EXECUTOR_RUNTIME=fake`` picks it for an
  in-process executor; never the default.
- `FakeClock`: epoch seconds that move only when told; the server's store reads time from it.
- `FaultyTransport`: wraps an httpx transport, records every request and injects failures
  (a status such as 503, or an unreachable server) on chosen paths.
- `Harness`: the server app (`create_app`) on an in-memory SQLite store with the fake clock, served
  through `httpx.ASGITransport` (its lifespan runs, so the stalled-job resetter sweeps on the fake
  clock), plus executor settings, clients and workers pointed at it, and helpers to submit a job and
  wait for its state.

The step environment contract of `FakeRuntime` (values are strings, as in a job's step env):

    FAKE_OUTPUT=text        written to the step's output in chunks of FAKE_CHUNK bytes (default 16),
                            FAKE_CHUNK_DELAY seconds apart (default 0: one event-loop turn)
    FAKE_WRITE=path=text    a file written into the workspace (e.g. a declared output)
    FAKE_LINK=path=target   a symlink made in the workspace (what a hostile step leaves behind)
    FAKE_SLEEP=2.5          seconds the step runs (after its output); cancellable
    FAKE_EXIT=3             the exit code (default 0)
    FAKE_OOM=1              the step is killed for memory: exit 137, oom_killed
    FAKE_IMAGE_MISSING=1    the step's image cannot be pulled: RuntimeFailure(reason="image")
    FAKE_ERROR=message      the runtime breaks: RuntimeFailure(message) (reason "runtime")
    FAKE_IGNORE_TERM=1      on cancel the step ignores SIGTERM: it is killed after space.kill_grace
    FAKE_TERM_DELAY=0.5     on cancel the step takes this long to exit after SIGTERM (default 0);
                            longer than space.kill_grace means killed at the grace
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import httpx

from corral.errors import ConfigError, RuntimeFailure
from corral.executor import safefs
from corral.executor.runtimes.base import LABEL_JOB, JobSpace, OutputSink, Step, StepResult
from corral.protocol import check_workspace_path
from corral.protocol.states import TERMINAL

if TYPE_CHECKING:  # the harness imports server and executor modules only when it is used
    from fastapi import FastAPI

    from corral.executor.client import QueueClient
    from corral.executor.handler import JobHandler
    from corral.executor.runtimes.base import Runtime
    from corral.executor.settings import ExecutorSettings
    from corral.executor.worker import Worker
    from corral.server.settings import ServerSettings
    from corral.server.store import SqlStore

__all__ = [
    "ADMIN_TOKEN",
    "BASE_URL",
    "EXECUTOR_SECRET",
    "FakeCall",
    "FakeClock",
    "FakeJob",
    "FakeProcess",
    "FakeRuntime",
    "Fault",
    "FaultyTransport",
    "Harness",
    "Sent",
    "fake_from_settings",
    "fake_step",
]

OUTPUT_CHUNK = 16  # bytes per write of FAKE_OUTPUT unless FAKE_CHUNK says otherwise
EXIT_TERM = 143  # exit code of a step that ended on SIGTERM (128 + 15)
EXIT_KILL = 137  # exit code of a step killed with SIGKILL or for memory (128 + 9)
WAIT_POLL = 0.002  # seconds between two looks of a wait helper
WAIT_TIMEOUT = 5.0  # seconds a wait helper waits by default
EXECUTOR_SECRET = "corral-testing-executor-secret"  # >= 20 characters, as the server requires
ADMIN_TOKEN = "corral-testing-admin-token"
BASE_URL = "http://corral.test"  # never resolved: requests go through the ASGI transport
QUEUE = "batches"  # one of the server's default queues

_T = TypeVar("_T")
Method = Literal["check", "prepare", "run_step", "cleanup", "janitor"]


# -- the fake runtime ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeCall:
    """One call into the FakeRuntime: the method, the job's label (queue-id), the step's key and argv."""

    method: Method
    job: str | None = None  # None for check and janitor
    step: str | None = None  # run_step only
    live: frozenset[str] = frozenset()  # janitor only: the labels it was told are running
    argv: tuple[str, ...] = ()  # run_step only: what the step would run


@dataclass
class FakeProcess:
    """One step as a process would live: when it started, was signalled, killed and ended."""

    job: str
    key: str
    env: Mapping[str, str]
    started: float
    term_at: float | None = None  # when SIGTERM was sent (cancellation)
    killed_at: float | None = None  # when SIGKILL was sent (the grace ran out)
    ended_at: float | None = None
    exit_code: int | None = None

    @property
    def canceled(self) -> bool:
        return self.term_at is not None

    @property
    def running(self) -> bool:
        return self.ended_at is None


@dataclass
class FakeJob:
    """What the fake holds for one attempt of a job (keyed by space.root): its resources exist from
    prepare until cleanup (or the janitor)."""

    label: str  # LABEL_JOB: queue-id
    name: str  # space.name: what a janitor reports
    prepared: int = 0
    cleaned: int = 0
    swept: bool = False  # removed by janitor()
    processes: list[FakeProcess] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.prepared > 0 and self.cleaned == 0 and not self.swept


class FakeRuntime:
    """A runtime for tests only (never the default): steps do what their `FAKE_*` env says.

    See the module docstring for the env contract. It follows the Runtime Protocol's lifecycle and
    concurrency rules: state per job label, `cleanup` idempotent and never raising, `run_step`
    before `prepare` refused, cancellation answered with SIGTERM, `space.kill_grace`, SIGKILL and
    CancelledError re-raised. Every call is appended to `calls`.
    """

    name: ClassVar[str] = "fake"

    def __init__(
        self,
        settings: ExecutorSettings | None = None,
        *,
        problems: Iterable[str] = (),
        prepare_error: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """problems: what `check()` answers; prepare_error: `prepare` raises RuntimeFailure with it."""
        self.settings = settings
        self.problems = list(problems)
        self.prepare_error = prepare_error
        self.clock = clock
        self.calls: list[FakeCall] = []
        self.jobs: dict[str, FakeJob] = {}  # by str(space.root): one per attempt
        self.active = 0  # steps running right now
        self.max_active = 0  # the most steps that ran at once

    # -- the Protocol ----------------------------------------------------------------------------
    async def check(self) -> list[str]:
        self.calls.append(FakeCall("check"))
        return list(self.problems)

    async def prepare(self, space: JobSpace) -> None:
        job = self._job(space)
        self.calls.append(FakeCall("prepare", job.label))
        if self.prepare_error is not None:
            raise RuntimeFailure(self.prepare_error)
        job.prepared += 1
        job.cleaned, job.swept = 0, False

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        job = self._job(space)
        self.calls.append(FakeCall("run_step", job.label, step.key, argv=step.argv))
        if not job.live:
            raise RuntimeFailure(f"{step.key}: run_step before prepare (or after cleanup)", reason="sandbox")
        env = step.env
        if _flag(env, "FAKE_IMAGE_MISSING"):
            raise RuntimeFailure(f"image {step.image} not found (FAKE_IMAGE_MISSING)", reason="image")
        if env.get("FAKE_ERROR"):
            raise RuntimeFailure(env["FAKE_ERROR"])
        exit_code = _number(env, "FAKE_EXIT", int, 0)
        proc = FakeProcess(job.label, step.key, dict(env), started=self.clock())
        job.processes.append(proc)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            try:
                await self._script(space, env, output)
            except asyncio.CancelledError:
                await self._stop(proc, env, space.kill_grace)
                raise
            if _flag(env, "FAKE_OOM"):
                proc.exit_code = EXIT_KILL
                return StepResult(EXIT_KILL, oom_killed=True)
            proc.exit_code = exit_code
            return StepResult(exit_code)
        finally:
            self.active -= 1
            proc.ended_at = self.clock()

    async def cleanup(self, space: JobSpace) -> None:
        job = self._job(space)
        self.calls.append(FakeCall("cleanup", job.label))
        job.cleaned += 1

    def telemetry(self) -> dict[str, str]:
        return {}

    async def janitor(self, live: set[str]) -> list[str]:
        self.calls.append(FakeCall("janitor", live=frozenset(live)))
        removed: list[str] = []
        for job in self.jobs.values():
            if job.live and job.label not in live:
                job.swept = True
                removed.append(job.name)
        return sorted(removed)

    # -- what tests look at ----------------------------------------------------------------------
    def attempts(self, job: int | str) -> list[FakeJob]:
        """The attempts of a job seen here, oldest first, by id (any queue) or label (queue-id)."""
        return [s for s in self.jobs.values() if str(job) in (s.label, s.label.rsplit("-", 1)[-1])]

    def job(self, job: int | str) -> FakeJob:
        """The latest attempt of a job (KeyError when never seen)."""
        attempts = self.attempts(job)
        if not attempts:
            raise KeyError(f"the fake runtime never saw job {job}")
        return attempts[-1]

    def steps(self, job: int | str) -> list[str]:
        """The keys of the steps the job ran, in order (all attempts)."""
        labels = {a.label for a in self.attempts(job)}
        return [c.step or "" for c in self.calls if c.job in labels and c.method == "run_step"]

    def methods(self, job: int | str) -> list[str]:
        """The job's calls in order (all attempts), e.g. ["prepare", "run_step", "cleanup"]."""
        labels = {a.label for a in self.attempts(job)}
        return [c.method for c in self.calls if c.job in labels]

    async def wait_step(self, job: int | str, index: int = 0, timeout: float = WAIT_TIMEOUT) -> FakeProcess:
        """The job's `index`-th step, once it has started."""

        def started() -> FakeProcess | None:
            procs = [p for a in self.attempts(job) for p in a.processes]
            return procs[index] if len(procs) > index else None

        return await _wait(started, timeout, f"step {index} of job {job} to start")

    # -- internals -------------------------------------------------------------------------------
    def _job(self, space: JobSpace) -> FakeJob:
        key = str(space.root)
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = FakeJob(label=space.labels[LABEL_JOB], name=space.name)
        return job

    async def _script(self, space: JobSpace, env: Mapping[str, str], output: OutputSink) -> None:
        data = env.get("FAKE_OUTPUT", "").encode()
        chunk = max(1, _number(env, "FAKE_CHUNK", int, OUTPUT_CHUNK))
        delay = _number(env, "FAKE_CHUNK_DELAY", float, 0.0)
        for i in range(0, len(data), chunk):
            output(data[i : i + chunk])
            await asyncio.sleep(delay)
        if env.get("FAKE_WRITE"):
            rel, _, text = env["FAKE_WRITE"].partition("=")
            safefs.write_beneath(space.workspace, check_workspace_path(rel), text.encode())
        if env.get("FAKE_LINK"):
            rel, _, target = env["FAKE_LINK"].partition("=")
            parent, _, name = check_workspace_path(rel).rpartition("/")
            root_fd = safefs.open_dir(space.workspace)
            try:
                if parent:  # made and opened without following a link, as the executor would
                    safefs.make_dirs(space.workspace, parent)
                    dir_fd = safefs.open_beneath(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY)
                    os.close(root_fd)
                    root_fd = dir_fd
                os.symlink(target, name, dir_fd=root_fd)
            finally:
                os.close(root_fd)
        await asyncio.sleep(_number(env, "FAKE_SLEEP", float, 0.0))

    async def _stop(self, proc: FakeProcess, env: Mapping[str, str], grace: float) -> None:
        """SIGTERM; the step exits after FAKE_TERM_DELAY (never with FAKE_IGNORE_TERM); SIGKILL at
        the grace. A second cancel during the grace kills at once."""
        proc.term_at = self.clock()
        ignore = _flag(env, "FAKE_IGNORE_TERM")
        exits_after = float("inf") if ignore else _number(env, "FAKE_TERM_DELAY", float, 0.0)
        killed = exits_after > grace
        try:
            await asyncio.sleep(min(exits_after, grace))
        except asyncio.CancelledError:
            killed = True
            raise
        finally:
            proc.exit_code = EXIT_KILL if killed else EXIT_TERM
            if killed:
                proc.killed_at = self.clock()


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: Mapping[str, str], name: str, kind: Callable[[str], Any], default: Any) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise RuntimeFailure(f"{name}={raw!r} is not a number", reason="sandbox") from None


async def _wait(probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(WAIT_POLL)


def fake_step(image: str = "fake:latest", **env: str | int | float) -> dict[str, Any]:
    """A docker step for a job spec, driven by FAKE_* env: fake_step(FAKE_EXIT=3, FAKE_SLEEP=0.1)."""
    return {"image": image, "commands": ["true"], "env": [f"{k}={v}" for k, v in env.items()]}


# -- time and transport ----------------------------------------------------------------------------
class FakeClock:
    """Epoch seconds that move only when `advance` is called (the server store's clock)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Sent:
    """One request that went through a FaultyTransport, and what came back (None: unreachable)."""

    method: str
    path: str
    body: Any
    status: int | None

    @property
    def op(self) -> str:
        """The last path segment, e.g. "markComplete", "heartbeat", "appendExecutionLogEntry"."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Fault:
    """Requests whose path contains `path` answer `status` (None: the server is unreachable),
    `times` times (None: until cleared)."""

    path: str
    status: int | None = 503
    times: int | None = None
    hits: int = 0
    response: httpx.Response | None = None  # answer this instead (a malformed body, say)


class FaultyTransport(httpx.AsyncBaseTransport):
    """Passes requests to `inner`, recording each in `sent`, except those a Fault matches."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[Sent] = []
        self.faults: list[Fault] = []

    def fail(self, path: str, *, status: int | None = 503, times: int | None = None) -> Fault:
        fault = Fault(path, status, times)
        self.faults.append(fault)
        return fault

    def respond(self, path: str, response: httpx.Response, *, times: int | None = 1) -> Fault:
        """Requests whose path contains `path` get `response` (as a broken server or a proxy answers)."""
        fault = Fault(path, response.status_code, times, response=response)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def ops(self, since: int = 0) -> list[str]:
        return [s.op for s in self.sent[since:]]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = request.content
        body = json.loads(content) if content else None
        path = request.url.path
        for fault in self.faults:
            if fault.path in path and (fault.times is None or fault.hits < fault.times):
                fault.hits += 1
                self.sent.append(Sent(request.method, path, body, fault.status))
                if fault.status is None:
                    raise httpx.ConnectError("fault injected: the server is unreachable", request=request)
                if fault.response is not None:
                    r = fault.response
                    return httpx.Response(r.status_code, headers=r.headers, content=r.content)
                return httpx.Response(fault.status, json={"error": f"fault injected ({fault.status})"})
        response = await self.inner.handle_async_request(request)
        self.sent.append(Sent(request.method, path, body, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


TESTING_ENV = "CORRAL_TESTING"  # =1: EXECUTOR_RUNTIME=fake may be used (it runs nothing)


def fake_from_settings(settings: ExecutorSettings) -> FakeRuntime:
    """The registry's factory for EXECUTOR_RUNTIME=fake: refused unless CORRAL_TESTING=1, so that a
    production executor can never "complete" jobs without running them."""
    if os.environ.get(TESTING_ENV) != "1":
        raise ConfigError(
            "EXECUTOR_RUNTIME=fake is the test suite's fake runtime: it runs no step. "
            f"Use shell or docker; tests set {TESTING_ENV}=1"
        )
    return FakeRuntime(settings)


# -- the in-process harness ------------------------------------------------------------------------
class Harness:
    """The server in-process (ASGI, in-memory SQLite, fake clock) and executors pointed at it.

    async with Harness(tmp_path) as h:
        fake = FakeRuntime()
        async with h.running(h.worker(fake)) as worker:
            job_id = await h.submit(fake_step(FAKE_EXIT=3))
            view = await h.wait_for(job_id)   # a terminal state
    """

    def __init__(self, data_dir: Path, *, clock: FakeClock | None = None, **server: Any) -> None:
        """data_dir: a private directory (tmp_path); server: ServerSettings overrides."""
        self.data_dir = data_dir
        self.clock = clock or FakeClock()
        self.server_overrides = server
        self.clients: list[QueueClient] = []

    async def __aenter__(self) -> Harness:
        from corral.server.app import create_app
        from corral.server.settings import ServerSettings
        from corral.server.store import memory_store

        values: dict[str, Any] = {
            "data_dir": self.data_dir / "server",
            "executors_access_token": EXECUTOR_SECRET,
            "admin_token": ADMIN_TOKEN,
            "resetter_interval": 0.01,
            "stalled_after": 15.0,
        }
        values.update(self.server_overrides)
        self.settings: ServerSettings = ServerSettings(**values)
        self.store: SqlStore = memory_store(clock=self.clock)
        self.app: FastAPI = create_app(self.settings, self.store)
        self._lifespan: AbstractAsyncContextManager[Any] = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.asgi = httpx.ASGITransport(app=self.app)
        self.transport = FaultyTransport(self.asgi)  # what executors use: faults can be injected
        self.admin = httpx.AsyncClient(
            transport=self.asgi, base_url=BASE_URL, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.http.aclose()
        await self.admin.aclose()
        await self._lifespan.__aexit__(None, None, None)
        self.store.close()

    # -- executor side ---------------------------------------------------------------------------
    def executor_settings(self, **overrides: Any) -> ExecutorSettings:
        """Settings of an executor of the fake runtime with short intervals, no workspace filesystem
        (EXECUTOR_JOB_DISK_SPACE=0: no loop mount, no root) and its directories under data_dir."""
        from corral.executor.settings import ExecutorSettings

        values: dict[str, Any] = {
            "frontend_url": BASE_URL,
            "frontend_password": EXECUTOR_SECRET,
            "queues": [QUEUE],
            "runtime": "fake",
            "queue_poll_interval": 0.01,
            "long_poll": 1.0,
            "job_disk_space": 0,
            "heartbeat_interval": 0.05,
            "cleanup_task_interval": 0.05,
            "kill_grace": 0.2,
            "shutdown_grace": 5.0,
            "workspace_root": self.data_dir / "workspaces",
            "job_uid_lock_dir": self.data_dir / "uids",
            "cli_path": "/bin/false",
            "name": "fake-executor",
            "vm_prefix": "test",
        }
        values.update(overrides)
        settings = ExecutorSettings(**values)
        settings.workspace_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return settings

    def client(
        self,
        settings: ExecutorSettings | None = None,
        *,
        retry_for: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> QueueClient:
        """A queue client of the executor through `transport` (default: the harness server's
        FaultyTransport; another one points it at another server, e.g. a Sourcegraph stand-in)."""
        from corral.executor.client import QueueClient

        client = QueueClient(
            settings or self.executor_settings(), transport=transport or self.transport, retry_for=retry_for
        )
        self.clients.append(client)
        return client

    def handler(self, runtime: Runtime, settings: ExecutorSettings | None = None, **kw: Any) -> JobHandler:
        """A JobHandler of `runtime` (also for CLI steps and the diff) with a harness client."""
        from corral.executor.handler import JobHandler

        settings = settings or self.executor_settings()
        retry_for, transport = kw.pop("retry_for", 2.0), kw.pop("transport", None)
        client = self.client(settings, retry_for=retry_for, transport=transport)
        return JobHandler(settings, client, runtime, runtime, **kw)

    def worker(self, runtime: Runtime, settings: ExecutorSettings | None = None, **kw: Any) -> Worker:
        """A Worker of `runtime` (also for CLI steps) with a harness client."""
        from corral.executor.worker import Worker

        settings = settings or self.executor_settings()
        retry_for, transport = kw.pop("retry_for", 2.0), kw.pop("transport", None)
        client = self.client(settings, retry_for=retry_for, transport=transport)
        return Worker(settings, client, runtime, runtime, **kw)

    @asynccontextmanager
    async def running(self, worker: Worker, *, timeout: float = WAIT_TIMEOUT) -> AsyncIterator[Worker]:
        """Run `worker` in a task; on exit stop it twice (cancel what still runs) and wait for it."""
        task = asyncio.create_task(worker.run(install_signals=False))
        try:
            yield worker
        finally:
            if not task.done():
                worker.stop()
                worker.stop()
            await asyncio.wait_for(task, timeout)  # also raises what the worker raised

    async def dequeue(self, client: QueueClient) -> Any:
        """One job for `client` (after a heartbeat that discovers the server's extensions)."""
        await client.heartbeat([], {})
        job = await client.dequeue()
        if job is None:
            raise AssertionError("no job was waiting")
        return job

    # -- producer side ---------------------------------------------------------------------------
    async def submit(self, *steps: dict[str, Any], queue: str = QUEUE, **spec: Any) -> int:
        """Enqueue a job of docker `steps` (see fake_step) and more spec fields (wire names)."""
        body = {"dockerSteps": list(steps), **spec}
        r = await self.admin.post(f"/api/v1/queues/{queue}/jobs", json=body)
        if r.status_code != 201:
            raise AssertionError(f"submit: {r.status_code} {r.text}")
        return int(r.json()["id"])

    async def job(self, job_id: int) -> dict[str, Any]:
        r = await self.admin.get(f"/api/v1/jobs/{job_id}")
        r.raise_for_status()
        view: dict[str, Any] = r.json()
        return view

    async def logs(self, job_id: int) -> list[dict[str, Any]]:
        r = await self.admin.get(f"/api/v1/jobs/{job_id}/logs")
        r.raise_for_status()
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries

    async def cancel(self, job_id: int) -> dict[str, Any]:
        r = await self.admin.post(f"/api/v1/jobs/{job_id}/cancel")
        r.raise_for_status()
        view: dict[str, Any] = r.json()
        return view

    async def wait_for(self, job_id: int, *states: str, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """The job's view once its state is one of `states` (default: a terminal state)."""
        wanted = set(states) or {str(s) for s in TERMINAL}
        last: dict[str, Any] = {}

        async def probe() -> dict[str, Any] | None:
            nonlocal last
            last = await self.job(job_id)
            return last if last["state"] in wanted else None

        deadline = time.monotonic() + timeout
        while (view := await probe()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {last.get('state')}, not {sorted(wanted)}: {last}")
            await asyncio.sleep(WAIT_POLL * 5)
        return view

    def advance(self, seconds: float) -> None:
        """Move the server's clock (leases, stalls, retry backoffs) forward."""
        self.clock.advance(seconds)


if TYPE_CHECKING:  # mypy proves that FakeRuntime is a Runtime

    def _is_runtime(fake: FakeRuntime) -> Runtime:
        return fake
