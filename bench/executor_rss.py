"""executor_rss: resident memory of `corral executor run` (shell runtime) (target: idle <= 60 MiB).

Idle: VmRSS 2 s after the executor connected (parked in its long-poll). Busy: the peak VmRSS, sampled
every 50 ms, while it runs 2 jobs at once (EXECUTOR_MAXIMUM_NUM_JOBS=2) that print a lot
(`seq 1 200000`, ~1.3 MB each), plus the kernel's high-water mark (VmHWM) at the end. Only the
executor process itself is measured (not its bubblewrap children).
Baseline: a bare interpreter of the same venv (`python -c pass`-like, sleeping).

Where the memory goes: the VmRSS of a fresh interpreter after importing each large dependency of the
executor alone, minus the bare interpreter (imports overlap, so the parts add up to more than the
whole); printed as a second block.
"""

from __future__ import annotations

import subprocess
import time

from bench.common import (
    PYTHON,
    Producer,
    Row,
    Table,
    proc_status_kib,
    run_executor,
    run_server,
    shell_job,
    tempdir,
)

NAME = "executor_rss"
IDLE_AFTER = 2.0  # seconds after connecting
SAMPLE_EVERY = 0.05  # seconds
BUSY_TIMEOUT = 60.0  # seconds for the two busy jobs
OUTPUT_LINES = 200_000
KIB_PER_MIB = 1024.0
_RSS_SNIPPET = (
    "import re,sys\n{imports}\n"
    "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
)
# What the executor process loads: the CLI (typer), the HTTP client (httpx also imports its own CLI,
# i.e. click, rich and pygments, when they are installed), the wire models, retries, and the whole.
IMPORTS: dict[str, str] = {
    "httpx": "import httpx",
    "httpx + an AsyncClient": "import httpx; c = httpx.AsyncClient()",
    "click + rich + pygments (httpx's CLI)": "import click, rich.console, rich.syntax, pygments.lexers",
    "pydantic": "import pydantic",
    "corral.protocol (pydantic models)": "import corral.protocol",
    "typer (CLI)": "import typer",
    "tenacity": "import tenacity",
    "corral.cli": "import corral.cli",
    "corral.executor.main": "import corral.executor.main",
    "everything `corral executor run` loads": (
        "import corral.cli, corral.executor.main, corral.executor.runtimes.shell; "
        "from corral.executor.client import QueueClient"
    ),
}


def _rss_after(imports: str) -> float:
    out = subprocess.run(
        [PYTHON, "-c", _RSS_SNIPPET.format(imports=imports)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return int(out.strip().splitlines()[-1]) / KIB_PER_MIB


def _bare_python_rss() -> float:
    p = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(3)"])
    try:
        time.sleep(1.0)
        return proc_status_kib(p.pid, "VmRSS") / KIB_PER_MIB
    finally:
        p.kill()
        p.wait()


def _import_costs() -> list[tuple[str, float]]:
    bare = _rss_after("")
    return [(label, _rss_after(code) - bare) for label, code in IMPORTS.items()]


def _importtime_top(n: int = 10) -> list[str]:
    """`python -X importtime`: the top-level packages that take longest to import (cumulative)."""
    r = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import corral.cli, corral.executor.main"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows: list[tuple[int, str]] = []
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name or name.startswith("corral."):
            rows.append((int(parts[1]), name))
    return [f"    {us / 1000:7.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:n]]


def run(quick: bool = False, profile: bool = False) -> Table:
    t = Table(NAME, "VmRSS of `corral executor run` (shell runtime), idle and with 2 chatty jobs")
    with tempdir(NAME) as tmp, run_server(tmp) as srv, Producer(srv.url) as prod:
        prod.submit("bench", shell_job("true"))  # creates the queue before the executor asks for it
        with run_executor(srv, tmp, "shell", EXECUTOR_MAXIMUM_NUM_JOBS="2") as ex:
            for j in prod.http.get("/api/v1/jobs", params={"queue": "bench"}).json():
                prod.wait(j["id"], poll=0.05)
            time.sleep(IDLE_AFTER)
            idle = proc_status_kib(ex.pid, "VmRSS") / KIB_PER_MIB
            jobs = [prod.submit("bench", shell_job(f"seq 1 {OUTPUT_LINES}")) for _ in range(2)]
            peak = idle
            deadline = time.monotonic() + BUSY_TIMEOUT
            pending = {j["id"] for j in jobs}
            last_check = 0.0
            while pending and time.monotonic() < deadline:
                peak = max(peak, proc_status_kib(ex.pid, "VmRSS") / KIB_PER_MIB)
                if time.monotonic() - last_check > 0.25:
                    last_check = time.monotonic()
                    pending = {
                        i for i in pending if prod.get(i)["state"] not in ("completed", "failed", "errored")
                    }
                time.sleep(SAMPLE_EVERY)
            states = [prod.wait(j["id"], poll=0.05)[0]["state"] for j in jobs]
            hwm = proc_status_kib(ex.pid, "VmHWM") / KIB_PER_MIB
            after = proc_status_kib(ex.pid, "VmRSS") / KIB_PER_MIB
    bare = _bare_python_rss()
    t.add(Row("idle VmRSS MiB (2 s after connecting)", idle, bare, "<= 60 MiB", ok=idle <= 60))
    t.add(Row("busy peak VmRSS MiB (2 jobs, 50 ms samples)", peak, idle))
    t.add(Row("busy VmHWM MiB (kernel high-water mark)", hwm, idle))
    t.add(Row("VmRSS MiB after the jobs", after, idle))
    if any(st != "completed" for st in states):
        t.notes.append(f"the busy jobs ended {', '.join(states)} (not all completed)")
    t.notes.append("baseline: a bare interpreter of the venv (idle row), the idle executor (busy rows)")
    costs = _import_costs()
    t.extra.append("  import costs, MiB of VmRSS over a bare interpreter (each alone in a fresh process):")
    t.extra += [f"    {mib:6.1f}  {label}" for label, mib in sorted(costs, key=lambda c: -c[1])]
    if idle > 60 or not quick:
        t.extra.append("  slowest top-level imports (python -X importtime, cumulative):")
        t.extra += _importtime_top()
    return t
