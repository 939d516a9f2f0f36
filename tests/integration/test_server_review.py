"""Regressions of the hostile review of the server's Sourcegraph fidelity (issue 11): shapes a
Sourcegraph executor cannot decode are refused at submit, bounds on what an executor names, the
job id header, and the stored files a job names counted per reference."""

from __future__ import annotations

import base64
from typing import Any

from tests.serverkit import EXECUTOR, Kit, job_headers


def refused(kit: Kit, **fields: Any) -> str:
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE, **fields})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    return r.text


SIMPLE = {"dockerSteps": [{"image": "corral/busybox:1", "commands": ["true"]}]}


def test_a_docker_auth_config_go_cannot_decode_is_refused_and_the_list_keeps_working(kit: Kit) -> None:
    for bad in ({"auths": 5}, {"auths": "x"}, {"auths": {"reg": 7}}, {"auths": {"reg": {"auth": "!!no"}}},
                {"auths": {"reg": {"auth": base64.b64encode(b"no-colon").decode()}}}, {"other": {}}):
        assert "dockerAuthConfig" in refused(kit, dockerAuthConfig=bad), bad
    good = {"auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"user:pw").decode()}}}
    job = kit.submit(dockerAuthConfig=good)
    assert kit.admin.get("/api/v1/jobs").status_code == 200
    view = kit.get_job(job["id"])
    assert view["spec"]["dockerAuthConfig"] == {"auths": {"127.0.0.1:5000": "<redacted>"}}


def test_modified_at_must_be_rfc3339(kit: Kit) -> None:
    assert "modifiedAt" in refused(kit, files={"a": {"content": "hi", "modifiedAt": "yesterday"}})
    kit.submit(files={"a": {"content": "hi", "modifiedAt": "2024-01-02T03:04:05.5+01:00"}})


def test_a_stored_file_named_many_times_counts_every_time(kit: Kit) -> None:
    r = kit.admin.put("/api/v1/files/bkt/big", content=b"x" * (1024 * 1024))
    assert r.status_code == 201, r.text
    files = {f"f{i}.bin": {"bucket": "bkt", "key": "big"} for i in range(300)}  # 300 MiB by reference
    assert "over the limit" in refused(kit, files=files)


def test_a_job_id_header_that_is_not_ascii_digits_is_a_400_not_a_500(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    for raw in (b"\xb2", b"1" * 4301, b"\xd9\xa1", b"1_0"):  # \xb2 is "²" (a digit) in latin-1
        headers: dict[str, Any] = {**job_headers(job), "X-Sourcegraph-Job-ID": raw}
        r = kit.job_call("batches", "addExecutionLogEntry", job, headers=headers, key="k", command=["x"])
        assert r.status_code == 400, (raw[:10], r.status_code, r.text)


def test_executor_names_and_queue_lists_are_bounded(kit: Kit) -> None:
    r = kit.dequeue(executor="x" * 100_000)
    assert r.status_code in (400, 422), r.status_code
    r = kit.executor.post(
        "/.executors/queue/heartbeat",
        json={"executorName": EXECUTOR, "queueNames": [f"q{i}" for i in range(5000)], "jobIdsByQueue": []},
    )
    assert r.status_code in (400, 422), r.status_code
    listed = kit.admin.get("/api/v1/executors")
    assert listed.status_code == 200 and len(listed.content) < 100_000


def test_an_insiders_version_with_unicode_digits_dequeues_nothing(kit: Kit) -> None:
    job = kit.submit()
    r = kit.executor.post(
        "/.executors/queue/batches/dequeue",
        json={"executorName": EXECUTOR, "version": "\u0661_2022-11-24_abcdefg"},
        headers={"User-Agent": "Go-http-client/1.1"},
    )
    assert r.status_code >= 400, r.text
    assert kit.get_job(job["id"])["state"] == "queued"
