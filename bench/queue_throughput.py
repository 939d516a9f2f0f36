"""queue_throughput: full enqueue -> dequeue -> markComplete cycles per second (issue target: >= 200/s).

`corral server` runs in its own process (so the load generator does not share its GIL); 8 simulated
executors (asyncio + httpx.AsyncClient, one connection each) dequeue and markComplete with the job
token, as real executors do, while producers enqueue minimal jobs.

Variants:
- interleaved: 4 producer tasks enqueue N jobs while the 8 executors long-poll (waitSeconds) for them;
  cycles/s = N / (first enqueue -> last markComplete).
- pre-enqueued: N jobs enqueued first (8 concurrent producers), then drained by the 8 executors
  (plain dequeue, no wait); cycles/s = N / (enqueue time + drain time).
Baseline: the HTTP floor of the same server, i.e. the cheapest authenticated route
(GET /.executors/test/auth, no database) hammered by 8 clients; a cycle is 3 requests, so
floor req/s / 3 is what the cycle rate could be if the store and the routes cost nothing.

With --profile the interleaved variant runs again twice: once with py-spy (if installed: `pip install
py-spy`) sampling the server's GIL holder, summarised by thread, by layer and by call site, and once
with the server under cProfile (bench/profserver.py, every thread), printing the top 15 cumulative
entries of the event-loop thread and of the worker threads.
"""

from __future__ import annotations

import asyncio
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BenchError,
    Row,
    ServerProc,
    Table,
    admin_headers,
    cpu_seconds,
    executor_headers,
    pct,
    run_server,
    tempdir,
)

NAME = "queue_throughput"
QUEUE = "bench"
EXECUTORS = 8
PRODUCERS = 4
JOB = {"dockerSteps": [{"image": "x", "commands": ["true"]}]}
VERSION = "0.1.0"  # what corral's own executor sends
PHASE_TIMEOUT = 120.0  # seconds any one phase may take
LONG_POLL = 2.0  # seconds a simulated executor's dequeue may be held
FLOOR_REQUESTS = 1600  # requests for the HTTP floor


@dataclass
class Lat:
    """Per-endpoint call latencies in seconds."""

    calls: dict[str, list[float]] = field(default_factory=dict)

    def add(self, endpoint: str, seconds: float) -> None:
        self.calls.setdefault(endpoint, []).append(seconds)

    def p(self, endpoint: str, q: float) -> float:
        return pct(self.calls.get(endpoint, []), q) * 1000.0


@dataclass
class RunResult:
    jobs: int
    seconds: float
    lat: Lat
    cycle_latency: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds
    loadgen_cpu: float = 0.0  # seconds
    enqueue_seconds: float = 0.0
    drain_seconds: float = 0.0
    empty_dequeues: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else float("nan")


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, timeout=httpx.Timeout(LONG_POLL + 30.0), limits=httpx.Limits(max_connections=4)
    )


async def _enqueue(http: httpx.AsyncClient, lat: Lat) -> int:
    t0 = time.perf_counter()
    r = await http.post(f"/api/v1/queues/{QUEUE}/jobs", json=JOB, headers=admin_headers())
    lat.add("enqueue", time.perf_counter() - t0)
    if r.status_code != 201:
        raise BenchError(f"enqueue: {r.status_code} {r.text}")
    return int(r.json()["id"])


async def _dequeue(http: httpx.AsyncClient, name: str, lat: Lat, wait: float) -> dict[str, Any] | None:
    body: dict[str, Any] = {"executorName": name, "version": VERSION, "numCPUs": 1, "memory": "512M"}
    if wait > 0:
        body["waitSeconds"] = wait
    t0 = time.perf_counter()
    r = await http.post(f"/.executors/queue/{QUEUE}/dequeue", json=body, headers=executor_headers())
    dt = time.perf_counter() - t0
    if r.status_code == 204:
        lat.add("dequeue (empty)", dt)
        return None
    if r.status_code != 200:
        raise BenchError(f"dequeue: {r.status_code} {r.text}")
    lat.add("dequeue", dt)
    return dict(r.json())


async def _complete(http: httpx.AsyncClient, name: str, job: dict[str, Any], lat: Lat) -> None:
    headers = {
        "Authorization": f"Bearer {job['token']}",
        "X-Sourcegraph-Job-ID": str(job["id"]),
        "X-Sourcegraph-Executor-Name": name,
    }
    body = {"executorName": name, "jobId": job["id"], "attempt": job["attempt"]}
    t0 = time.perf_counter()
    r = await http.post(f"/.executors/queue/{QUEUE}/markComplete", json=body, headers=headers)
    lat.add("markComplete", time.perf_counter() - t0)
    if r.status_code != 204:
        raise BenchError(f"markComplete: {r.status_code} {r.text}")


async def _http_floor(url: str, n: int) -> tuple[float, Lat]:
    lat = Lat()
    per = n // EXECUTORS

    async def one(http: httpx.AsyncClient) -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            r = await http.get("/.executors/test/auth", headers=executor_headers())
            lat.add("test/auth", time.perf_counter() - t0)
            if r.status_code != 200:
                raise BenchError(f"test/auth: {r.status_code}")

    clients = [_client(url) for _ in range(EXECUTORS)]
    try:
        await asyncio.gather(*(one(c) for c in clients[:1]))  # warm up one connection path
        lat.calls.clear()
        t0 = time.perf_counter()
        async with asyncio.timeout(PHASE_TIMEOUT):
            await asyncio.gather(*(one(c) for c in clients))
        seconds = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.aclose()
    return per * EXECUTORS / seconds, lat


async def _drain(url: str, n_expected: int, lat: Lat) -> int:
    """8 executors dequeue (no wait) + markComplete until the queue is empty."""
    done = 0

    async def executor(i: int, http: httpx.AsyncClient) -> None:
        nonlocal done
        name = f"bench-exec-{i}"
        while done < n_expected:
            job = await _dequeue(http, name, lat, 0.0)
            if job is None:
                return
            await _complete(http, name, job, lat)
            done += 1

    clients = [_client(url) for _ in range(EXECUTORS)]
    try:
        async with asyncio.timeout(PHASE_TIMEOUT):
            await asyncio.gather(*(executor(i, c) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()
    return done


async def _pre_enqueued(srv: ServerProc, n: int) -> RunResult:
    lat = Lat()
    cpu0, wall0 = cpu_seconds(srv.pid), time.process_time()
    t0 = time.perf_counter()
    per = n // EXECUTORS

    async def producer(http: httpx.AsyncClient) -> None:
        for _ in range(per):
            await _enqueue(http, lat)

    clients = [_client(srv.url) for _ in range(EXECUTORS)]
    try:
        async with asyncio.timeout(PHASE_TIMEOUT):
            await asyncio.gather(*(producer(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    t1 = time.perf_counter()
    total = per * EXECUTORS
    done = await _drain(srv.url, total, lat)
    t2 = time.perf_counter()
    if done != total:
        raise BenchError(f"pre-enqueued: {done} of {total} jobs completed")
    return RunResult(
        jobs=total,
        seconds=t2 - t0,
        lat=lat,
        server_cpu=cpu_seconds(srv.pid) - cpu0,
        loadgen_cpu=time.process_time() - wall0,
        enqueue_seconds=t1 - t0,
        drain_seconds=t2 - t1,
    )


async def _interleaved(srv: ServerProc, n: int) -> RunResult:
    lat = Lat()
    submitted: dict[int, float] = {}  # job id -> perf_counter before its enqueue
    finished: dict[int, float] = {}  # job id -> perf_counter after its markComplete
    completed = 0
    all_done = asyncio.Event()
    per = n // PRODUCERS
    total = per * PRODUCERS

    async def producer(http: httpx.AsyncClient) -> None:
        for _ in range(per):
            t = time.perf_counter()
            job_id = await _enqueue(http, lat)
            submitted[job_id] = t

    async def executor(i: int, http: httpx.AsyncClient) -> None:
        nonlocal completed
        name = f"bench-exec-{i}"
        while completed < total:
            job = await _dequeue(http, name, lat, LONG_POLL)
            if job is None:
                continue
            await _complete(http, name, job, lat)
            finished[job["id"]] = time.perf_counter()
            completed += 1
            if completed >= total:
                all_done.set()

    eclients = [_client(srv.url) for _ in range(EXECUTORS)]
    pclients = [_client(srv.url) for _ in range(PRODUCERS)]
    tasks: list[asyncio.Task[None]] = []
    try:
        tasks = [asyncio.create_task(executor(i, c)) for i, c in enumerate(eclients)]
        await asyncio.sleep(0.3)  # let every executor park in its long-poll first
        cpu0, wall0 = cpu_seconds(srv.pid), time.process_time()
        t0 = time.perf_counter()
        tasks += [asyncio.create_task(producer(c)) for c in pclients]
        async with asyncio.timeout(PHASE_TIMEOUT):
            waiter = asyncio.create_task(all_done.wait())
            done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            while waiter not in done:  # a task ended: fine unless it failed
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                tasks = [t for t in tasks if t not in done]
                done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        seconds = time.perf_counter() - t0
        server_cpu = cpu_seconds(srv.pid) - cpu0
        loadgen_cpu = time.process_time() - wall0
        # Let the parked long-polls end by themselves (204 after LONG_POLL): a long-poll abandoned by
        # its client is still served by the server when a later enqueue wakes it, which would hand a
        # job of the next phase to nobody (see the report).
        async with asyncio.timeout(LONG_POLL + 10.0):
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in [*eclients, *pclients]:
            await c.aclose()
    return RunResult(
        jobs=total,
        seconds=seconds,
        lat=lat,
        cycle_latency=[finished[i] - submitted[i] for i in finished if i in submitted],
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        empty_dequeues=len(lat.calls.get("dequeue (empty)", [])),
    )


async def _warm_up(srv: ServerProc) -> None:
    """Create the queue and warm the server's code paths (imports, prepared statements, pools)."""
    lat = Lat()
    async with _client(srv.url) as http:
        for _ in range(40):
            await _enqueue(http, lat)
    await _drain(srv.url, 40, lat)


def _pstats_lines(path: Path, top: int, *restrict: str) -> list[str]:
    buf = StringIO()
    pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats("cumulative").print_stats(*restrict, top)
    text = buf.getvalue()
    body = text[text.find("   ncalls") :] if "   ncalls" in text else text
    return ["    " + line for line in body.rstrip().splitlines()]


def _cprofile_report(base: Path, top: int = 15) -> list[str]:
    out: list[str] = []
    main, threads = Path(str(base) + ".main"), Path(str(base) + ".threads")
    if main.exists():
        out.append(f"  -- cProfile (wall clock), event-loop thread, top {top} by cumulative time:")
        out += _pstats_lines(main, top)
    if threads.exists():
        out.append(
            f"  -- cProfile (wall clock), worker threads (to_thread + anyio), top {top} by cumulative time:"
        )
        out += _pstats_lines(threads, top)
        out.append("  -- cProfile, worker threads, the store's methods (call counts: compare with the jobs):")
        out += _pstats_lines(threads, 12, r"store\.py")
    if not out:
        out.append("  (the profiled server wrote no cProfile data)")
    return out


# Frames present in nearly every stack, or pure pass-through ASGI layers: they say nothing about where
# the time goes, so the cumulative listing hides them.
_PLUMBING = (
    "threading.py",
    "concurrent/futures/thread.py",
    "asyncio/runners.py",
    "asyncio/events.py",
    "BaseEventLoop.run_",
    "typer/",
    "corral/cli.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "<module>",
    "WorkerThread.run",
    "/middleware/",
    "fastapi/_body_limit.py",
    "fastapi/telemetry/",
    "applications.py",
    "_exception_handler.py",
    "BodyLimit.__call__ (",
    "Router.__call__",
    "APIRouter.",
    "_IncludedRouter.",
)

# Where a GIL sample's time goes, by the innermost frame that matches (first rule wins).
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("store: global write lock + connection checkout (Store._write)", ("Store._write (",)),
    ("store: SQLAlchemy Core (statement build, compile cache, execute) + sqlite3", ("sqlalchemy/",)),
    ("store: corral's store code", ("corral/server/store/",)),
    (
        "thread hand-offs (asyncio.to_thread, anyio run_in_threadpool)",
        (
            "threading.py",
            "concurrent/futures/",
            "queue.py",
            "anyio/",
            "asyncio/threads.py",
            "_write_to_self",
            "_read_from_self",
            "call_soon_threadsafe",
            "run_in_executor",
            "futures.py",
        ),
    ),
    ("HTTP parsing and writing (uvicorn, h11)", ("h11/", "uvicorn/", "email/", "http/")),
    ("pydantic validation, JSON", ("pydantic", "json/")),
    ("FastAPI / Starlette routing, dependencies, responses", ("fastapi/", "starlette/")),
    ("corral routes, auth, middleware, metrics", ("corral/", "prometheus_client/")),
    ("asyncio event loop, sockets", ("asyncio/", "selectors.py", "socket.py", "ssl.py")),
)

# Call sites worth knowing about: the share of samples whose stack contains them.
_MARKERS: tuple[tuple[str, str], ...] = (
    ("all store work in to_thread workers (Store.*)", "Store."),
    ("FastAPI solve_dependencies (incl. its thread hop)", "solve_dependencies"),
    ("sync dependencies run via run_in_threadpool (get_state, _admin)", "run_in_threadpool"),
    ("extra queue_exists() per dequeue/heartbeat (_require_queue)", "_require_queue"),
    ("job token lookup per job call (Store.job_auth)", "Store.job_auth"),
    ("Store.dequeue", "Store.dequeue"),
    ("Store.enqueue", "Store.enqueue"),
    ("Store.mark", "Store.mark"),
    ("SQLAlchemy cache-key generation for freshly built statements", "_generate_cache_key"),
    ("pydantic request/response validation", "pydantic"),
    ("prometheus counters", "prometheus_client"),
)


def _frame_file(frame: str) -> str:
    m = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    return m.group(1) if m else frame


def _no_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def _category(frames: list[str]) -> str:
    for f in reversed(frames):
        for label, needles in _CATEGORIES:
            if any(n in f for n in needles):
                return label
    return "other"


def _pyspy_report(raw: Path, top: int = 15) -> list[str]:
    """Summarise py-spy's raw (collapsed) output: threads, categories, call sites, cumulative, own."""
    total = 0
    threads: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    marks: Counter[str] = Counter()
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or ";" not in stack:
            continue
        n = int(count)
        thread, _, rest = stack.partition(";")
        frames = rest.split(";")
        name = thread.split(": ", 1)[-1]
        if name == "MainThread":
            kind = "event loop (MainThread)"
        elif name.startswith("AnyIO"):
            kind = "anyio threadpool (sync FastAPI dependencies)"
        else:
            kind = "asyncio.to_thread pool (store calls)"
        total += n
        threads[kind] += n
        cats[_category(frames)] += n
        own[_no_line(frames[-1])] += n
        joined = ";".join(frames)
        for label, needle in _MARKERS:
            if needle in joined:
                marks[label] += n
        for f in {_no_line(f) for f in frames}:
            if not any(p in f for p in _PLUMBING):
                cum[f] += n
    if not total:
        return ["  (py-spy recorded no samples)"]

    def share(counter: Counter[str], k: int) -> list[str]:
        return [f"    {100 * v / total:5.1f}%  {key}" for key, v in counter.most_common(k)]

    out = [f"  -- py-spy --gil: {total} samples of the thread holding the GIL (= the server's Python CPU)"]
    out += ["  by thread:", *share(threads, 5)]
    out += ["  where the time goes (innermost matching frame):", *share(cats, 12)]
    out += ["  call sites (share of samples with it on the stack):"]
    out += [f"    {100 * marks[label] / total:5.1f}%  {label}" for label, _ in _MARKERS]
    out += [f"  top {top} cumulative (pass-through frames hidden):", *share(cum, top)]
    out += [f"  top {top} own time:", *share(own, top)]
    return out


def _pyspy_path() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _profile(n: int, t: Table) -> None:
    spy = _pyspy_path()
    if spy is None:
        t.extra.append("  (py-spy not installed: `pip install py-spy` for a sampling profile; cProfile only)")
    else:
        with tempdir(NAME + "-spy") as tmp, run_server(tmp) as srv:
            asyncio.run(_warm_up(srv))
            raw = tmp / "pyspy.txt"
            argv = [spy, "record", "--pid", str(srv.pid), "--rate", "50", "--gil", "--threads"]
            argv += ["--nonblocking", "--format", "raw", "-o", str(raw)]
            rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                time.sleep(1.0)  # py-spy attaches
                res = asyncio.run(_interleaved(srv, n))
            finally:
                rec.send_signal(signal.SIGINT)
                try:
                    _, err = rec.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    _, err = rec.communicate()
            t.add(Row("cycles/s interleaved, server under py-spy", res.rate, None))
            if raw.exists():
                t.extra += _pyspy_report(raw)
            else:
                t.extra.append(f"  (py-spy failed: {err.decode(errors='replace').strip()[-300:]})")
    with tempdir(NAME + "-prof") as tmp:
        prof_base = tmp / "server.prof"
        with run_server(tmp, profile_out=prof_base) as srv:
            asyncio.run(_warm_up(srv))
            prof = asyncio.run(_interleaved(srv, n // 2))
        # the profiles are written when the server stops (on leaving the with block)
        t.add(Row("cycles/s interleaved, server under cProfile", prof.rate, None))
        t.extra.append(
            f"  cProfile of an interleaved run ({prof.jobs} jobs, +40 warm-up): wall-clock times, all "
            "threads; it slows Python code several times, so read call counts and shares"
        )
        t.extra += _cprofile_report(prof_base)


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 400 if quick else 1600
    t = Table(NAME, f"enqueue->dequeue->markComplete cycles, {EXECUTORS} executors, N={n} jobs")
    with tempdir(NAME) as tmp, run_server(tmp) as srv:
        floor_rps, floor_lat = asyncio.run(_http_floor(srv.url, FLOOR_REQUESTS // (4 if quick else 1)))
        asyncio.run(_warm_up(srv))
        inter = asyncio.run(_interleaved(srv, n))
        pre = asyncio.run(_pre_enqueued(srv, n))

    floor_cycles = floor_rps / 3
    t.add(
        Row(
            f"cycles/s interleaved ({PRODUCERS} producers, long-poll)",
            inter.rate,
            floor_cycles,
            ">= 200/s",
            ok=inter.rate >= 200,
        )
    )
    t.add(
        Row(
            "cycles/s pre-enqueued (enqueue all, then drain)",
            pre.rate,
            floor_cycles,
            ">= 200/s",
            ok=pre.rate >= 200,
        )
    )
    t.add(Row("  enqueue phase, jobs/s (8 producers)", pre.jobs / pre.enqueue_seconds, floor_rps))
    t.add(
        Row(
            "  drain phase, dequeue+markComplete/s",
            pre.jobs / pre.drain_seconds,
            floor_rps / 2,
        )
    )
    t.add(Row("HTTP floor req/s (GET test/auth, 8 conns)", floor_rps, None))
    floor50, floor99 = floor_lat.p("test/auth", 50), floor_lat.p("test/auth", 99)
    for endpoint, src in (("enqueue", inter), ("markComplete", inter), ("dequeue", pre), ("enqueue", pre)):
        variant = "interleaved" if src is inter else "pre-enqueued"
        t.add(Row(f"{endpoint} p50 ms ({variant})", src.lat.p(endpoint, 50), floor50))
        t.add(Row(f"{endpoint} p99 ms ({variant})", src.lat.p(endpoint, 99), floor99))
    if inter.cycle_latency:
        t.add(Row("cycle latency p50 ms (submit->completed)", pct(inter.cycle_latency, 50) * 1000, None))
        t.add(Row("cycle latency p99 ms (submit->completed)", pct(inter.cycle_latency, 99) * 1000, None))
    t.add(Row("server CPU, % of one core (interleaved)", 100 * inter.server_cpu / inter.seconds, 100.0))
    t.add(Row("server CPU ms per cycle (interleaved)", 1000 * inter.server_cpu / inter.jobs, None))
    t.add(Row("load generator CPU, % of one core", 100 * inter.loadgen_cpu / inter.seconds, None))
    t.notes.append(
        "baseline for cycles/s = HTTP floor / 3 (3 requests per cycle, no store work); for latencies "
        "= test/auth latency under the same 8-connection load"
    )
    t.notes.append(
        f"interleaved: {inter.empty_dequeues} long-polls ended empty; "
        f"pre-enqueued: enqueue {pre.enqueue_seconds:.1f} s + drain {pre.drain_seconds:.1f} s"
    )
    if profile:
        _profile(n, t)
    return t
