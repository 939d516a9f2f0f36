"""The server on PostgreSQL (`database_url`), over real HTTP: two replicas share one database and many
executors take jobs from both at once; every job is handed out exactly once and completed.

Needs the PostgreSQL that scripts/setup.sh starts (tests/postgreskit.py): fails in CI, skips elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgreskit import fresh_database_url
from tests.serverkit import (
    CORRAL_UA,
    EXECUTOR_SECRET,
    HTTP_TIMEOUT,
    Kit,
    dequeue_async,
    job_headers,
    serve,
    settings_for,
)

REPLICAS = 2
EXECUTORS = 8
JOBS = 80
DEADLINE = 60.0  # seconds for the whole scenario; it takes a few


@pytest.fixture
def kits(tmp_path: Path) -> Iterator[list[Kit]]:
    """Server replicas on one emptied PostgreSQL database, each with its own data dir."""
    url = fresh_database_url()
    with contextlib.ExitStack() as stack:
        kits = []
        for i in range(REPLICAS):
            srv = stack.enter_context(serve(settings_for(tmp_path / f"replica-{i}", database_url=url)))
            assert srv.store.engine.dialect.name == "postgresql"
            kits.append(Kit(srv))
            stack.callback(kits[-1].close)
        yield kits


async def test_executors_on_two_replicas_take_each_job_once(kits: list[Kit]) -> None:
    submitted = [kits[i % REPLICAS].submit()["id"] for i in range(JOBS)]
    got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(EXECUTORS)}
    clients = [
        httpx.AsyncClient(
            base_url=k.url,
            headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": CORRAL_UA},
            timeout=HTTP_TIMEOUT,
            limits=httpx.Limits(max_connections=EXECUTORS),
            trust_env=False,
        )
        for k in kits
    ]

    async def executor(i: int, name: str) -> None:
        client = clients[i % REPLICAS]  # half the executors talk to each replica
        while (job := await dequeue_async(client, name)) is not None:
            got[name].append(job["id"])
            body = {"executorName": name, "jobId": job["id"]}
            hdrs = job_headers(job, name)
            log = {**body, "key": "step.0", "command": ["true"], "out": f"job {job['id']}\n"}
            r = await client.post("/.executors/queue/batches/addExecutionLogEntry", json=log, headers=hdrs)
            assert r.status_code == 200 and r.json() == 1, r.text
            r = await client.post("/.executors/queue/batches/markComplete", json=body, headers=hdrs)
            assert r.status_code == 204, r.text

    try:
        await asyncio.wait_for(asyncio.gather(*(executor(i, n) for i, n in enumerate(got))), DEADLINE)
    finally:
        for c in clients:
            await c.aclose()

    handed = [i for ids in got.values() for i in ids]
    assert [i for i, n in Counter(handed).items() if n > 1] == [], "jobs handed out more than once"
    assert sorted(handed) == sorted(submitted), "jobs were lost"
    assert sum(1 for ids in got.values() if ids) > 1, "one executor took every job"
    jobs = kits[1].admin.get("/api/v1/jobs", params={"limit": 500}).json()
    assert len(jobs) == JOBS and {j["state"] for j in jobs} == {"completed"}
    for j in jobs:
        assert j["id"] in got[j["executorName"]] and j["attempt"] == 1
    # Ids beyond 32 bits are unknown jobs, not database errors.
    assert kits[0].admin.get(f"/api/v1/jobs/{2**40}").status_code == 404


def test_a_job_enqueued_on_one_replica_wakes_a_long_poll_on_another(
    kits: list[Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LISTEN/NOTIFY: without it the waiting replica would only see the job at its next recheck,
    which this test moves far away (30 s), beyond the long-poll's own wait (20 s)."""
    import threading
    import time

    from corral.server.routers import queue as queue_router

    monkeypatch.setattr(queue_router, "RECHECK", 30.0)
    waiting, submitting = kits
    result: dict[str, httpx.Response] = {}
    t0 = time.monotonic()
    poll = threading.Thread(target=lambda: result.update(r=waiting.dequeue(waitSeconds=20)))
    poll.start()
    deadline = time.monotonic() + 10
    while not waiting.srv.waiting_on("batches"):  # the long-poll is parked on replica 0
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        time.sleep(0.01)
    job = submitting.submit()  # on replica 1
    poll.join(25)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["id"] == job["id"]
    assert time.monotonic() - t0 < 15  # woken by the notification, not by the 20 s wait running out
