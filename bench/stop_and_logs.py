"""stop_and_logs: how fast a cancel and a timeout end a job, and what a big log costs the executor.

Cancel: a job prints "started" then sleeps; once "started" is in its log the producer cancels it;
the time from the cancel call to the job's terminal state (polled every 20 ms), per runtime (shell,
docker). Timeout: a job with timeoutSeconds 5 that sleeps: its started_at -> finished_at.
Big logs: a shell step printing N MiB (50, 200) with EXECUTOR_LOG_MAX_BYTES at its default (8M)
and at 1G, above the server's cap (64 MiB): the job's state, the bytes the server stored, and the
executor's peak VmRSS (sampled every 50 ms, and the kernel's VmHWM at the end) over its idle VmRSS.
BENCH_LOGS_ONLY=1 runs only the big-log part.
Everything runs against a `corral server` and `corral executor run` on 127.0.0.1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    BenchError,
    Producer,
    Row,
    Table,
    median,
    parse_iso,
    proc_status_kib,
    run_executor,
    run_server,
    shell_job,
    tempdir,
)

NAME = "stop_and_logs"
QUEUE = "bench"
IMAGE = "corral/busybox:1"
SAMPLE_EVERY = 0.05  # seconds between VmRSS samples
POLL = 0.02  # seconds between job state polls
TIMEOUT_S = 5  # timeoutSeconds of the timeout job
BIG_LOG_MIB = (50, 200)
LOG_CAPS = ("8M", "1G")  # EXECUTOR_LOG_MAX_BYTES: the default, and one above the server's 64 MiB
KIB_PER_MIB = 1024.0
LINE = "0123456789abcdef" * 4 + "\n"  # 65 bytes


def _wait_log(prod: Producer, job_id: int, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in (e.get("out") or "") for e in prod.logs(job_id)):
            return
        time.sleep(POLL)
    raise BenchError(f"job {job_id} never printed {text!r}")


def _log_text(prod: Producer, job_id: int) -> str:
    return "".join(e.get("out") or "" for e in prod.logs(job_id))


def _cancel_latency(prod: Producer, runs: int) -> tuple[list[float], str]:
    """Seconds from the cancel call to the terminal state, and the last job's log."""
    out: list[float] = []
    text = ""
    for _ in range(runs):
        job = prod.submit(QUEUE, shell_job("echo started; sleep 300"))
        _wait_log(prod, job["id"], "started")
        began = time.monotonic()
        r = prod.http.post(f"/api/v1/jobs/{job['id']}/cancel")
        r.raise_for_status()
        done, _ = prod.wait(job["id"], poll=POLL)
        out.append(time.monotonic() - began)
        if done["state"] != "canceled":
            raise BenchError(f"canceled job ended {done['state']}")
        text = _log_text(prod, job["id"])
    return out, text


def _timeout_run(prod: Producer) -> tuple[float, str, str]:
    """started_at -> finished_at of a job with timeoutSeconds TIMEOUT_S; its state and log."""
    # printf spells its output differently from its command line (which `set -x` prints)
    script = "trap 'sleep 0.3; printf \"%s-%s\\n\" grace kept; exit 143' TERM; echo started; " + (
        "while :; do sleep 0.1; done"
    )
    job = prod.submit(QUEUE, shell_job(script, timeoutSeconds=TIMEOUT_S))
    done, _ = prod.wait(job["id"], poll=POLL, timeout=120)
    took = parse_iso(done["finishedAt"]) - parse_iso(done["startedAt"])
    return took, done["state"], _log_text(prod, job["id"])


def _stop_rows(t: Table, tmp: Path, runtime: str, runs: int) -> None:
    tmp = tmp / runtime
    tmp.mkdir()
    with run_server(tmp) as srv, Producer(srv.url) as prod:
        prod.submit(QUEUE, shell_job("true"))
        with run_executor(srv, tmp, runtime):
            for j in prod.http.get("/api/v1/jobs", params={"queue": QUEUE}).json():
                prod.wait(j["id"], poll=POLL)
            latencies, log = _cancel_latency(prod, runs)
            t.add(Row(f"{runtime}: cancel -> canceled, s (median of {runs})", median(latencies)))
            t.add(Row(f"{runtime}: cancel -> canceled, s (max)", max(latencies), target="<= 1 s"))
            t.notes.append(f"{runtime} cancel log says 'canceling': {'canceling' in log}")
            took, state, log = _timeout_run(prod)
            t.add(Row(f"{runtime}: timeoutSeconds {TIMEOUT_S} -> {state}, s", took, float(TIMEOUT_S)))
            t.notes.append(
                f"{runtime} timeout log: 'timeout after' {'timeout after' in log}, "
                f"output of the grace kept {'grace-kept' in log}"
            )


def _peak_rss(pid: int, until: Callable[[], bool], timeout: float) -> float:
    peak = 0.0
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        peak = max(peak, proc_status_kib(pid, "VmRSS") / KIB_PER_MIB)
        if time.monotonic() - last > 0.25:
            last = time.monotonic()
            if until():
                break
        time.sleep(SAMPLE_EVERY)
    return peak


def _log_rows(t: Table, tmp: Path, sizes: tuple[int, ...], cap: str) -> None:
    tmp = tmp / f"logs-{cap}"
    tmp.mkdir()
    with run_server(tmp) as srv, Producer(srv.url) as prod:
        prod.submit(QUEUE, shell_job("true"))
        with run_executor(srv, tmp, "shell", EXECUTOR_LOG_MAX_BYTES=cap) as ex:
            for j in prod.http.get("/api/v1/jobs", params={"queue": QUEUE}).json():
                prod.wait(j["id"], poll=POLL)
            time.sleep(1.0)
            idle = proc_status_kib(ex.pid, "VmRSS") / KIB_PER_MIB
            for mib in sizes:
                lines = mib * 1024 * 1024 // len(LINE)
                job = prod.submit(QUEUE, shell_job(f"yes {LINE.strip()} | head -n {lines}"))

                def done(job_id: int = job["id"]) -> bool:
                    return prod.get(job_id)["state"] in ("completed", "failed", "errored", "canceled")

                peak = _peak_rss(ex.pid, done, 300.0)
                final, _ = prod.wait(job["id"], poll=POLL, timeout=300)
                stored = sum(len((e.get("out") or "").encode()) for e in prod.logs(job["id"]))
                t.add(Row(f"{mib} MiB step, executor cap {cap}: peak VmRSS MiB", peak, idle))
                t.notes.append(
                    f"{mib} MiB step (cap {cap}) ended {final['state']} "
                    f"({final.get('error') or 'no error'}); "
                    f"the server stored {stored / 2**20:.1f} MiB of log"
                )
            hwm = proc_status_kib(ex.pid, "VmHWM") / KIB_PER_MIB
            t.add(Row(f"executor cap {cap}: VmHWM MiB after the big logs", hwm, idle))


def run(quick: bool = False, profile: bool = False) -> Table:
    t = Table(NAME, "cancel and timeout latency (shell, docker); executor memory for big logs")
    runs = 2 if quick else 5
    with tempdir(NAME) as tmp:
        for runtime in () if os.environ.get("BENCH_LOGS_ONLY") else ("shell", "docker"):
            try:
                _stop_rows(t, tmp, runtime, runs)
            except BenchError as exc:
                t.notes.append(f"{runtime}: {exc}")
        for cap in LOG_CAPS:
            _log_rows(t, tmp, BIG_LOG_MIB[:1] if quick else BIG_LOG_MIB, cap)
    return t


if __name__ == "__main__":
    from bench.common import render

    print(render(run()))
