"""pickup_latency: enqueue -> first step start on an idle, connected executor (target p50 <= 100 ms).

A real `corral server` and a real `corral executor run` (shell runtime, one slot). Jobs are enqueued
one at a time, each after the previous one finished plus a random pause (so the enqueue lands at a
random phase of a short-poll cycle). The step runs `date +%s.%N`; the shell runtime runs it on this
host, so its clock is ours: step start - submit time (taken just before the POST) is the pickup
latency as a producer sees it. The server's own timestamps split it into enqueue -> dequeue
(createdAt -> startedAt) and dequeue -> step start (the executor's job set-up).

corral: the default executor (long-poll dequeue). Baseline: the same executor with
EXECUTOR_LONG_POLL=0 and EXECUTOR_QUEUE_POLL_INTERVAL=1s, i.e. Sourcegraph's 1 s short poll.
Each configuration gets a fresh server (an abandoned long-poll of a stopped executor would otherwise
take the next configuration's first job).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field

from bench.common import (
    BenchError,
    Producer,
    Row,
    Table,
    parse_iso,
    pct,
    run_executor,
    run_server,
    shell_job,
    tempdir,
)

NAME = "pickup_latency"
STAMP_RE = re.compile(r"^(\d{9,}\.\d+)\s*$", re.MULTILINE)
SETTLE = 0.5  # seconds after the executor connected, so it is parked in its (long-)poll


@dataclass
class Samples:
    pickup: list[float] = field(default_factory=list)  # submit -> step start, seconds
    dequeue: list[float] = field(default_factory=list)  # createdAt -> startedAt
    setup: list[float] = field(default_factory=list)  # startedAt -> step start
    to_entry: list[float] = field(default_factory=list)  # startedAt -> the step's log entry opened
    entry_to_step: list[float] = field(default_factory=list)  # log entry opened -> step start
    retried: int = 0  # jobs that had to be submitted again (e.g. swept by a foreign janitor)


def _collect(n: int, max_pause: float, **env: str) -> Samples:
    rng = random.Random(1234)
    out = Samples()
    with tempdir(NAME) as tmp, run_server(tmp) as srv, Producer(srv.url) as prod:
        prod.submit("bench", shell_job("true"))  # creates the queue before the executor asks for it
        with run_executor(srv, tmp, "shell", **env):
            time.sleep(SETTLE)
            first = prod.http.get("/api/v1/jobs", params={"queue": "bench"}).json()
            for j in first:
                prod.wait(j["id"], poll=0.02)
            for _ in range(n):
                time.sleep(rng.uniform(0.05, max_pause))
                done, submitted, _seen = prod.run_job("bench", shell_job("date +%s.%N"), poll=0.02)
                entries = prod.logs(done["id"])
                text = "".join(e["out"] for e in entries)
                m = STAMP_RE.search(text)
                if m is None:
                    raise BenchError(f"no timestamp in the step output of job {done['id']}: {text[-300:]!r}")
                step = float(m.group(1))
                created, started = parse_iso(done["createdAt"]), parse_iso(done["startedAt"])
                out.pickup.append(step - submitted)
                out.dequeue.append(started - created)
                out.setup.append(step - started)
                opened = parse_iso(entries[0]["startTime"])  # the executor's clock: this host's
                out.to_entry.append(opened - started)
                out.entry_to_step.append(step - opened)
            out.retried = prod.retried
    return out


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 5 if quick else 15
    t = Table(NAME, f"enqueue -> first step start, idle shell executor, {n} samples each")
    long_poll = _collect(n, 0.3)
    short_poll = _collect(n, 1.0, EXECUTOR_LONG_POLL="0", EXECUTOR_QUEUE_POLL_INTERVAL="1s")
    ms = 1000.0
    p50 = pct(long_poll.pickup, 50) * ms
    t.add(
        Row(
            "pickup p50 ms (submit -> step start)",
            p50,
            pct(short_poll.pickup, 50) * ms,
            "<= 100 ms",
            ok=p50 <= 100,
        )
    )
    t.add(Row("pickup p90 ms", pct(long_poll.pickup, 90) * ms, pct(short_poll.pickup, 90) * ms))
    t.add(Row("pickup max ms", max(long_poll.pickup) * ms, max(short_poll.pickup) * ms))
    t.add(
        Row(
            "  enqueue -> dequeue p50 ms (server)",
            pct(long_poll.dequeue, 50) * ms,
            pct(short_poll.dequeue, 50) * ms,
        )
    )
    t.add(
        Row(
            "  enqueue -> dequeue p90 ms (server)",
            pct(long_poll.dequeue, 90) * ms,
            pct(short_poll.dequeue, 90) * ms,
        )
    )
    for label, attr in (
        ("  dequeue -> step start p50 ms (set-up)", "setup"),
        ("    dequeue -> log entry opened (workspace, prepare)", "to_entry"),
        ("    log entry opened -> step runs (HTTP, sandbox)", "entry_to_step"),
    ):
        t.add(Row(label, pct(getattr(long_poll, attr), 50) * ms, pct(getattr(short_poll, attr), 50) * ms))
    t.notes.append(
        "corral = long-poll (default); baseline = EXECUTOR_LONG_POLL=0, EXECUTOR_QUEUE_POLL_INTERVAL=1s"
    )
    if long_poll.retried or short_poll.retried:
        t.notes.append(f"{long_poll.retried + short_poll.retried} job(s) failed and were run again")
    return t
