"""corral's reattach call over real HTTP: an executor that restarted takes back a job attempt still
leased to it (the job as dequeue gave it, a fresh token for the same attempt, the attempt's log
entries), and nothing else: another executor name, another attempt, a canceled job, an expired
lease, another queue, an unknown job."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from corral.protocol import ReattachResponse
from corral.server.store import SqlStore
from tests.serverkit import EXECUTOR, Kit, job_headers


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _reattach(kit: Kit, job: dict[str, Any], executor: str = EXECUTOR, **extra: Any) -> httpx.Response:
    body = {"executorName": executor, "jobId": job["id"], "attempt": job["attempt"], **extra}
    return kit.executor.post("/.executors/queue/batches/reattach", json=body)


def test_reattach_gives_the_attempt_back_with_a_fresh_token_and_its_log(
    make_kit: Callable[..., Kit], tmp_path: Path
) -> None:
    clock = FakeClock()
    kit = make_kit(SqlStore(f"sqlite:///{tmp_path / 'r.db'}", clock=clock), stalled_after=15.0)
    kit.submit(redactedValues={"hunter2": "PASSWORD"})
    old = kit.take()
    done = kit.job_call("batches", "addExecutionLogEntry", old, key="step.docker.0", command=["x"]).json()
    kit.job_call("batches", "appendExecutionLogEntry", old, entryId=done, offset=0, data="one\n", exitCode=0)
    open_ = kit.job_call("batches", "addExecutionLogEntry", old, key="step.docker.1", command=["y"]).json()
    kit.job_call("batches", "appendExecutionLogEntry", old, entryId=open_, offset=0, data="two\nthr")

    clock.t += 10  # within the stall window
    r = _reattach(kit, old)
    assert r.status_code == 200, r.text
    answer = ReattachResponse.model_validate(r.json())
    job = answer.job
    assert (job.id, job.attempt, job.queue) == (old["id"], 1, "batches")
    assert job.token and job.token != old["token"]
    assert job.redacted_values == {"hunter2": "PASSWORD"}
    assert [s.model_dump(by_alias=True)["commands"] for s in job.docker_steps] == [
        s["commands"] for s in old["dockerSteps"]
    ]
    got = [(e.entry_id, e.key, e.out_len, e.exit_code) for e in answer.entries]
    assert got == [(done, "step.docker.0", 4, 0), (open_, "step.docker.1", 7, None)]

    fresh = {**old, "token": job.token}
    # the old token stops working; the fresh one writes the same attempt's entry at its offset
    stale = kit.job_call("batches", "appendExecutionLogEntry", old, entryId=open_, offset=7, data="x")
    assert stale.status_code in (401, 403), stale.text
    r = kit.job_call("batches", "appendExecutionLogEntry", fresh, entryId=open_, offset=7, data="ee\n")
    assert r.json() == {"offset": 10}
    # the lease was renewed by the reattach: 10 s later (20 s after the last heartbeat) it still holds
    clock.t += 10
    assert kit.heartbeat("batches", [old["id"]])["knownIds"] == [str(old["id"])]
    assert kit.job_call("batches", "markComplete", fresh, attempt=1).status_code == 204
    assert kit.get_job(old["id"])["state"] == "completed"
    assert _reattach(kit, old).status_code == 409  # finished: nothing to take back


def test_reattach_is_refused_without_a_live_lease_of_that_executor(
    make_kit: Callable[..., Kit], tmp_path: Path
) -> None:
    clock = FakeClock()
    kit = make_kit(
        SqlStore(f"sqlite:///{tmp_path / 'r.db'}", clock=clock), stalled_after=15.0, resetter_interval=3600
    )
    kit.submit()
    job = kit.take()
    assert _reattach(kit, job, executor="someone-else").status_code == 409
    assert _reattach(kit, job, attempt=2).status_code == 409
    assert _reattach(kit, {**job, "id": 999999}).status_code == 404
    r = kit.executor.post(
        "/.executors/queue/other/reattach", json={"executorName": EXECUTOR, "jobId": job["id"], "attempt": 1}
    )
    assert r.status_code == 404
    assert _reattach(kit, job, attempt=None).status_code == 400
    # an expired lease (the resetter has not swept yet) is not given back
    clock.t += 20
    assert _reattach(kit, job).status_code == 409
    # the refusals changed nothing: the original token still works after a heartbeat renews it
    clock.t -= 20
    assert kit.heartbeat("batches", [job["id"]])["knownIds"] == [str(job["id"])]
    r = kit.anon.post(
        "/.executors/queue/batches/addExecutionLogEntry",
        json={"executorName": EXECUTOR, "jobId": job["id"], "key": "k", "command": []},
        headers=job_headers(job),
    )
    assert r.status_code == 200, r.text
    # a job being canceled is not reattached
    assert kit.admin.post(f"/api/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert _reattach(kit, job).status_code == 409


def test_reattach_needs_the_executor_token(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    body = {"executorName": EXECUTOR, "jobId": job["id"], "attempt": job["attempt"]}
    r = kit.anon.post("/.executors/queue/batches/reattach", json=body, headers=job_headers(job))
    assert r.status_code in (401, 403), r.text
