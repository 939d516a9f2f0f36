"""Shared pieces of the benchmarks: a `corral server` subprocess, `corral executor run` subprocesses,
a small producer client, statistics, and the result table every benchmark prints.

Everything listens on and talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CORRAL = str(Path(sys.executable).with_name("corral"))
SECRET = "bench-executor-secret-0123456789"
ADMIN = "bench-admin-token-0123456789"
START_TIMEOUT = 30.0  # seconds for a server to answer / an executor to connect
JOB_TIMEOUT = 60.0  # seconds any single benchmark job may take
VM_PREFIX = "bench"  # EXECUTOR_VM_PREFIX of the benchmark executors
RUNTIME_OWNER = "bench-rt"  # owner of the sandboxes the in-process runtime benchmarks make
TERMINAL = ("completed", "failed", "errored", "canceled")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
}


class BenchError(RuntimeError):
    """A benchmark could not run (not a performance verdict)."""


# --- statistics -------------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Percentile p (0-100) with linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- result tables ----------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    corral: float | str | None
    baseline: float | str | None = None
    target: str = ""
    ratio: float | None = None  # computed from corral / baseline when both are numbers
    # whether the row meets its target; None = no target or not decidable
    ok: bool | None = None


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # free text printed after the table (profiles, ...)

    def add(self, row: Row) -> Row:
        if (
            row.ratio is None
            and isinstance(row.corral, int | float)
            and isinstance(row.baseline, int | float)
        ):
            if row.baseline:
                row.ratio = row.corral / row.baseline
        self.rows.append(row)
        return row


def fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value != value:  # nan
        return "n/a"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(r: float) -> str:
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.2f}x" if r >= 0.1 or r == 0 else f"{r:.2g}x"


def render(table: Table) -> str:
    header = ("metric", "corral", "baseline", "ratio", "target")
    lines: list[tuple[str, ...]] = []
    for r in table.rows:
        mark = "" if r.ok is None else (" ok" if r.ok else " MISS")
        ratio = "-" if r.ratio is None else fmt_ratio(r.ratio)
        lines.append((r.metric, fmt(r.corral), fmt(r.baseline), ratio, (r.target + mark).strip() or "-"))
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = [f"== {table.name}: {table.title}"]
    sep = "-+-".join("-" * w for w in widths)

    def row(cells: Sequence[str]) -> str:
        return " | ".join(
            (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out += [row(header), sep, *(row(line) for line in lines)]
    out += [f"  note: {n}" for n in table.notes]
    out += table.extra
    return "\n".join(out)


# --- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included) from /proc, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` field (VmRSS, VmHWM, ...) of /proc/<pid>/status; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def stop_process(p: subprocess.Popen[bytes], first: float = 15.0, timeout: float = 15.0) -> None:
    """SIGTERM, then a second SIGTERM after `first` seconds (executors cancel running jobs on it, uvicorn
    stops waiting for open requests), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, first), (signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        if p.poll() is not None:
            return
        p.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(wait)


@dataclass
class ServerProc:
    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def run_server(
    tmp: Path, *, profile_out: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[ServerProc]:
    """`corral server` in its own process (or bench.profserver under cProfile when profile_out is set)."""
    port = free_port()
    data_dir = tmp / "server"
    log_path = tmp / f"server-{port}.log"
    args = ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"]
    if profile_out is None:
        argv = [CORRAL, "server", *args]
    else:
        argv = [PYTHON, "-m", "bench.profserver", "--out", str(profile_out), *args]
    penv = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXECUTORS_ACCESS_TOKEN": SECRET,
        "CORRAL_ADMIN_TOKEN": ADMIN,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=penv, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    srv = ServerProc(url=url, proc=proc, data_dir=data_dir, log_path=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=url, timeout=2.0) as c:
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"corral server exited with {proc.returncode}:\n{srv.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get("/api/v1/queues", headers=admin_headers()).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"corral server did not answer within {START_TIMEOUT:.0f} s")
                time.sleep(0.05)
        yield srv
    finally:
        # uvicorn waits up to 5 s for requests still open, e.g. long-polls of executors already gone
        stop_process(proc, first=1.0)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def executor_headers() -> dict[str, str]:
    return {"Authorization": f"token-executor {SECRET}"}


def executor_env(server: ServerProc, tmp: Path, runtime: str, **env: str) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXECUTOR_FRONTEND_URL": server.url,
        "EXECUTOR_FRONTEND_PASSWORD": SECRET,
        "EXECUTOR_QUEUE_NAME": "bench",
        "EXECUTOR_RUNTIME": runtime,
        "EXECUTOR_WORKSPACE_ROOT": str(tmp / "ws"),
        "EXECUTOR_JOB_MEMORY": "512M",
        "EXECUTOR_JOB_NUM_CPUS": "1",
        "EXECUTOR_KILL_GRACE": "2s",
        "EXECUTOR_CLI_PATH": CORRAL,
        "EXECUTOR_NAME": f"bench-{runtime}-{os.getpid()}-{time.monotonic_ns()}",
        # Our own owner label / cgroup parent: the janitor of an executor (ours at start-up, or one of
        # tests running on this host) removes every sandbox of its prefix that is not its own job.
        "EXECUTOR_VM_PREFIX": VM_PREFIX,
    }
    base.update(env)
    return base


@contextlib.contextmanager
def run_executor(
    server: ServerProc, tmp: Path, runtime: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`corral executor run` as a subprocess; yields once the server has seen its first heartbeat."""
    e = executor_env(server, tmp, runtime, **env)
    log_path = tmp / f"executor-{e['EXECUTOR_NAME']}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CORRAL, "executor", "run"], env=e, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=server.url, timeout=2.0) as c:
            while True:
                if proc.poll() is not None:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                    raise BenchError(f"corral executor exited with {proc.returncode}:\n{tail}")
                rows = c.get("/api/v1/executors", headers=admin_headers()).json()
                if any(r["name"] == e["EXECUTOR_NAME"] for r in rows):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"corral executor did not connect within {START_TIMEOUT:.0f} s")
                time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc)
        if runtime == "shell":
            remove_cgroup_parent(f"corral-{VM_PREFIX}")


def remove_cgroup_parent(name: str) -> None:
    """rmdir /sys/fs/cgroup/<controller>/<name> where it is empty (what a shell sandbox leaves behind)."""
    root = Path("/sys/fs/cgroup")
    for controller in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        with contextlib.suppress(OSError):
            (root / controller / name).rmdir()


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"corral-bench-{prefix}-") as d:
        yield Path(d)


# --- producer side ----------------------------------------------------------------------------------


class Producer:
    """The few producer API calls the benchmarks need (synchronous, one keep-alive connection)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers=admin_headers(), timeout=30.0)
        self.retried = 0  # jobs run_job had to submit again

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, queue: str, job: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(f"/api/v1/queues/{queue}/jobs", json=job)
        if r.status_code != 201:
            raise BenchError(f"submit failed: {r.status_code} {r.text}")
        return dict(r.json())

    def get(self, job_id: int) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/jobs/{job_id}")
        r.raise_for_status()
        return dict(r.json())

    def logs(self, job_id: int) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/v1/jobs/{job_id}/logs")
        r.raise_for_status()
        return list(r.json()["entries"])

    def add_repo(self, name: str, path: Path) -> None:
        r = self.http.post("/api/v1/repos", json={"name": name, "path": str(path)})
        if r.status_code not in (200, 201):
            raise BenchError(f"adding repository failed: {r.status_code} {r.text}")

    def wait(
        self, job_id: int, *, poll: float = 0.01, timeout: float = JOB_TIMEOUT
    ) -> tuple[dict[str, Any], float]:
        """Poll until the job is terminal; returns (job, time.time() when the terminal state was seen)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] in TERMINAL:
                return job, time.time()
            if time.monotonic() > deadline:
                raise BenchError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def run_job(
        self, queue: str, spec: dict[str, Any], *, poll: float = 0.01, tries: int = 3
    ) -> tuple[dict[str, Any], float, float]:
        """Submit, wait until completed; returns (job, time.time() just before the submit, time seen done).

        A job that ends otherwise is submitted again (at most `tries` in all, counted in `retried`): on a
        shared host, an executor with our EXECUTOR_VM_PREFIX may sweep our job's sandbox as an orphan.
        """
        last: dict[str, Any] = {}
        for _ in range(tries):
            submitted = time.time()
            job = self.submit(queue, spec)
            done, seen = self.wait(job["id"], poll=poll)
            if done["state"] == "completed":
                return done, submitted, seen
            self.retried += 1
            last = done
        text = "".join(e["out"] for e in self.logs(int(last["id"])))[-2000:]
        raise BenchError(f"job {last['id']} ended {last['state']} {tries} times: {last['error']}\n{text}")


def shell_job(*commands: str, **extra: Any) -> dict[str, Any]:
    """A job for the shell runtime (the image is ignored there; a docker executor would use it)."""
    return {"dockerSteps": [{"image": "corral/busybox:1", "commands": list(commands)}], **extra}


def make_repo(root: Path, files: dict[str, str]) -> Path:
    """A git repository with one commit of `files`."""
    root.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, env=GIT_ENV, check=True, capture_output=True)
    return root
