"""Many executors dequeuing at once over HTTP: every job is handed out exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.serverkit import (
    CORRAL_UA,
    EXECUTOR_SECRET,
    HTTP_TIMEOUT,
    SERVER_VERSION,
    Kit,
    dequeue_async,
    job_headers,
)

EXECUTORS = 8
JOBS = 80
DEADLINE = 60.0  # seconds for a whole scenario; it takes a few


@pytest.fixture
async def client(kit: Kit) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=EXECUTORS * 2)
    async with httpx.AsyncClient(
        base_url=kit.url,
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": CORRAL_UA},
        timeout=HTTP_TIMEOUT,
        limits=limits,
        trust_env=False,
    ) as c:
        yield c


def assert_exactly_once(got: dict[str, list[int]], expected: list[int]) -> None:
    handed = [i for ids in got.values() for i in ids]
    dupes = sorted(i for i, n in Counter(handed).items() if n > 1)
    assert dupes == [], f"jobs handed out more than once: {dupes}"
    assert sorted(handed) == sorted(expected), "jobs were lost"


async def test_concurrent_executors_each_job_once(kit: Kit, client: httpx.AsyncClient) -> None:
    expected = [(await asyncio.to_thread(kit.submit))["id"] for _ in range(JOBS)]
    got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(EXECUTORS)}

    async def executor(name: str) -> None:
        while (job := await dequeue_async(client, name)) is not None:
            got[name].append(job["id"])
            done = await client.post(
                "/.executors/queue/batches/markComplete",
                json={"executorName": name, "jobId": job["id"]},
                headers=job_headers(job, name),
            )
            assert done.status_code == 204, done.text

    await asyncio.wait_for(asyncio.gather(*(executor(n) for n in got)), DEADLINE)
    assert_exactly_once(got, expected)
    jobs = await asyncio.to_thread(kit.admin.get, "/api/v1/jobs", params={"limit": 500})
    assert {j["state"] for j in jobs.json()} == {"completed"}
    for j in jobs.json():
        assert j["id"] in got[j["executorName"]] and j["attempt"] == 1


async def test_long_polling_executors_share_jobs_submitted_while_they_wait(
    kit: Kit, client: httpx.AsyncClient
) -> None:
    """8 executors long-poll two queues while a producer submits: no job twice, none lost."""
    total = 40
    got: dict[str, list[int]] = {f"exec-{i}": [] for i in range(EXECUTORS)}
    submitted: list[int] = []
    producing = True

    async def executor(name: str) -> None:
        body = {
            "executorName": name,
            "version": SERVER_VERSION,
            "queues": ["batches", "codeintel"],
            "waitSeconds": 1,
        }
        while True:
            finished = not producing
            r = await client.post("/.executors/queue/dequeue", json=body)
            if r.status_code == 204:
                if finished and sum(map(len, got.values())) >= len(submitted):
                    return
                continue
            assert r.status_code == 200, r.text
            got[name].append(r.json()["id"])

    async def producer() -> None:
        nonlocal producing
        try:
            for i in range(total):
                job = await asyncio.to_thread(kit.submit, "codeintel" if i % 3 == 0 else "batches")
                submitted.append(job["id"])
        finally:
            producing = False

    await asyncio.wait_for(asyncio.gather(producer(), *(executor(n) for n in got)), DEADLINE)
    assert len(submitted) == total
    assert_exactly_once(got, submitted)
