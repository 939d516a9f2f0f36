"""secret_handoff: what executor secrets cost a dequeue and a submit.

A real `corral server` (SQLite). The bench dequeues N jobs one at a time as an executor would (short
dequeue, no wait) and times each request. corral: every job names SECRETS secrets (64-byte values)
and a global DOCKER_AUTH_CONFIG secret exists, so each dequeue resolves, decrypts (AES-GCM), injects
them into the steps' env and redactedValues and records SECRETS + 1 accesses. Baseline: the same
jobs without `secrets` on a server with no secret (the one extra lookup for DOCKER_AUTH_CONFIG
still runs). Submits are timed too (corral's checks that every named secret exists and opens).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from bench.common import Producer, Row, Table, executor_headers, pct, run_server, shell_job, tempdir

NAME = "secret_handoff"
SECRETS = 10  # secrets each corral job names
VALUE_BYTES = 64  # bytes of each secret's value
DOCKER = {"auths": {"127.0.0.1:5000": {"username": "bench", "password": "bench-registry-password"}}}


@dataclass
class Samples:
    dequeue: list[float] = field(default_factory=list)  # seconds per dequeue request
    submit: list[float] = field(default_factory=list)  # seconds per submit request


def _collect(n: int, with_secrets: bool) -> Samples:
    out = Samples()
    with tempdir(NAME) as tmp, run_server(tmp) as srv, Producer(srv.url) as prod:
        names = [f"BENCH_SECRET_{i}" for i in range(SECRETS)]
        if with_secrets:
            for i, name in enumerate(names):
                value = f"{i:02d}" + "v" * (VALUE_BYTES - 2)
                r = prod.http.post("/api/v1/secrets", json={"name": name, "value": value, "namespace": None})
                r.raise_for_status()
            r = prod.http.post(
                "/api/v1/secrets", json={"name": "DOCKER_AUTH_CONFIG", "value": json.dumps(DOCKER)}
            )
            r.raise_for_status()
        job = shell_job("true", **({"secrets": names} if with_secrets else {}))
        for _ in range(n):
            t0 = time.perf_counter()
            r = prod.http.post("/api/v1/queues/bench/jobs", json=job)
            out.submit.append(time.perf_counter() - t0)
            r.raise_for_status()
        with httpx.Client(base_url=srv.url, headers=executor_headers(), timeout=30.0) as ex:
            for _ in range(n):
                t0 = time.perf_counter()
                r = ex.post(
                    "/.executors/queue/bench/dequeue", json={"executorName": "bench-exec", "version": "dev"}
                )
                out.dequeue.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"dequeue answered {r.status_code}: {r.text[:300]}")
                got = r.json()
                if with_secrets and len(got["dockerSteps"][0]["env"] or []) < SECRETS:
                    raise RuntimeError("a dequeued job lacks its secrets")
    return out


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 50 if quick else 300
    t = Table(NAME, f"{n} jobs, each dequeued alone; corral: {SECRETS} secrets + DOCKER_AUTH_CONFIG per job")
    base = _collect(n, with_secrets=False)
    corral = _collect(n, with_secrets=True)
    ms = 1000.0
    for p in (50, 90):
        t.add(Row(f"dequeue p{p} ms", pct(corral.dequeue, p) * ms, pct(base.dequeue, p) * ms))
    for p in (50, 90):
        t.add(Row(f"submit p{p} ms", pct(corral.submit, p) * ms, pct(base.submit, p) * ms))
    t.notes.append("baseline = the same jobs without secrets, on a server holding none")
    return t
