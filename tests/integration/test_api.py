"""The producer API (/api/v1, admin token) and the server's own endpoints, over real HTTP."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.protocol import EXTENSIONS_HEADER
from tests.serverkit import (
    ADMIN_TOKEN,
    EXECUTOR,
    EXECUTOR_SECRET,
    SIMPLE_STEPS,
    Kit,
    commit_file,
    make_git_repo,
    wait_until,
)


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], r.text
    return str(body["error"])


def job_ids(kit: Kit, **params: Any) -> list[int]:
    r = kit.admin.get("/api/v1/jobs", params=params)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()]


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "src" / "app"
    return path, make_git_repo(path, {"README.md": "hello\n", "main.go": "package main\n"})


# -- auth and plumbing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Bearer {ADMIN_TOKEN}x",
        f"token {ADMIN_TOKEN}",
        f"token-executor {EXECUTOR_SECRET}",
        "Bearer",
    ],
)
def test_admin_token_is_required(kit: Kit, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in [
        ("GET", "/api/v1/queues", None),
        ("GET", "/api/v1/jobs", None),
        ("GET", "/api/v1/jobs/1", None),
        ("GET", "/api/v1/executors", None),
        ("GET", "/api/v1/repos", None),
        ("POST", "/api/v1/queues/batches/jobs", SIMPLE_STEPS),
        ("POST", "/api/v1/repos", {"name": "x", "path": "/tmp"}),
        ("POST", "/api/v1/jobs/1/cancel", None),
    ]:
        r = kit.anon.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert "admin token" in error_of(r)
    assert job_ids(kit) == []


def test_healthz_metrics_and_openapi(kit: Kit) -> None:
    r = kit.anon.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]
    kit.submit()
    kit.submit("codeintel")
    r = kit.admin.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'corral_jobs_enqueued_total{queue="batches"} 1.0' in r.text
    assert 'corral_jobs_enqueued_total{queue="codeintel"} 1.0' in r.text
    assert 'corral_queue_jobs{queue="batches",state="queued"} 1.0' in r.text
    assert "corral_executors_active 0.0" in r.text
    r = kit.anon.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert "/.executors/queue/{queue}/dequeue" in doc["paths"]
    assert "/api/v1/queues/{queue}/jobs" in doc["paths"]
    assert EXTENSIONS_HEADER not in r.headers


def test_metrics_count_dequeues_and_finishes(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    assert kit.job_call("batches", "markComplete", job).status_code == 204
    text = kit.admin.get("/metrics").text
    assert 'corral_jobs_dequeued_total{queue="batches"} 1.0' in text
    assert 'corral_jobs_finished_total{queue="batches",state="completed"} 1.0' in text


# -- repositories ------------------------------------------------------------------------------
def test_register_a_local_repository(kit: Kit, repo: tuple[Path, str]) -> None:
    path, commit = repo
    r = kit.add_repo("github.com/acme/app", path)
    assert r.status_code == 201 and r.json() == {
        "name": "github.com/acme/app",
        "source": str(path),
        "created": True,
    }
    newer = commit_file(path, "NEW.md", "new\n")
    r = kit.add_repo("github.com/acme/app", path)  # re-adding refreshes the mirror
    assert r.status_code == 200 and r.json()["created"] is False
    listed = kit.admin.get("/api/v1/repos").json()
    assert [x["name"] for x in listed] == ["github.com/acme/app"] and listed[0]["source"] == str(path)
    # Both the old and the new commit can be used by jobs.
    assert kit.submit(repositoryName="github.com/acme/app", commit=commit)["commit"] == commit
    assert kit.submit(repositoryName="github.com/acme/app", commit=newer)["commit"] == newer


@pytest.mark.parametrize(
    "name", ["", "../evil", "a/../b", "/abs", "a//b", "name.git", "sp ace", "a/./b", "x\ny", "acme\n"]
)
def test_bad_repository_names(kit: Kit, repo: tuple[Path, str], name: str) -> None:
    r = kit.add_repo(name, repo[0])
    assert r.status_code == 400, r.text
    assert "invalid repository name" in error_of(r)
    assert kit.admin.get("/api/v1/repos").json() == []


def test_bad_repository_paths(kit: Kit, tmp_path: Path) -> None:
    r = kit.add_repo("acme/app", tmp_path / "does-not-exist")
    assert r.status_code == 400 and "does not exist" in error_of(r)
    plain = tmp_path / "plain"
    plain.mkdir()
    r = kit.add_repo("acme/app", plain)
    assert r.status_code == 400 and "not a git repository" in error_of(r)
    r = kit.admin.post("/api/v1/repos", json={"name": "acme/app"})
    assert r.status_code == 400
    assert kit.admin.get("/api/v1/repos").json() == []


# -- submitting jobs ---------------------------------------------------------------------------
def test_submit_a_job(kit: Kit, repo: tuple[Path, str]) -> None:
    path, commit = repo
    kit.add_repo("acme/app", path)
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs",
        json={**SIMPLE_STEPS, "repositoryName": "acme/app", "commit": commit, "priority": 3},
    )
    assert r.status_code == 201
    job = r.json()
    assert isinstance(job["id"], int) and job["queue"] == "batches" and job["state"] == "queued"
    assert job["repositoryName"] == "acme/app" and job["commit"] == commit and job["priority"] == 3
    assert job["attempt"] == 0 and job["cancelRequested"] is False and job["createdAt"].endswith("Z")
    assert kit.get_job(job["id"]) == job


def test_commit_names_are_resolved_and_default_to_head(kit: Kit, repo: tuple[Path, str]) -> None:
    path, commit = repo
    kit.add_repo("acme/app", path)
    assert kit.submit(repositoryName="acme/app")["commit"] == commit
    assert kit.submit(repositoryName="acme/app", commit="main")["commit"] == commit
    assert kit.submit(repositoryName="acme/app", commit=commit[:10])["commit"] == commit


def test_submit_errors_about_repository_and_commit(kit: Kit, repo: tuple[Path, str]) -> None:
    path, _ = repo
    kit.add_repo("acme/app", path)
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "repositoryName": "nope/nope"})
    assert r.status_code == 404 and "nope/nope" in error_of(r)
    missing = "0123456789abcdef0123456789abcdef01234567"
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "repositoryName": "acme/app", "commit": missing}
    )
    assert r.status_code == 400 and missing in error_of(r) and "commit" in error_of(r)
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "repositoryName": "acme/app", "commit": "--all"}
    )
    assert r.status_code == 400 and "commit" in error_of(r)
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "commit": "abc"})
    assert r.status_code == 400 and "commit" in error_of(r)
    assert job_ids(kit) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"files": {"../x": {"content": "x"}}},
        {"files": {"/etc/passwd": {"content": "x"}}},
        {"files": {"a/../../x": {"content": "x"}}},
        {"files": {"..": {"content": "x"}}},
        {"files": {"": {"content": "x"}}},
        {"files": {"a\\b": {"content": "x"}}},
        {"outputs": ["../secret"]},
        {"repositoryDirectory": "../up"},
        {"dockerSteps": [{"image": "alpine", "commands": ["true"], "dir": "/abs"}]},
    ],
)
def test_paths_outside_the_workspace_are_refused(kit: Kit, bad: dict[str, Any]) -> None:
    kit.submit()
    before = job_ids(kit)
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, **bad})
    assert r.status_code == 400, r.text
    assert "outside of working directory" in error_of(r) or "empty" in error_of(r)
    assert job_ids(kit) == before


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({}, "at least one step"),
        ({"dockerSteps": []}, "at least one step"),
        ({"dockerSteps": [{"image": " ", "commands": ["x"]}]}, "image"),
        ({"dockerSteps": [{"commands": ["x"]}]}, "image"),
        ({**SIMPLE_STEPS, "unknownField": 1}, "unknownField"),
        ({**SIMPLE_STEPS, "files": {"a": {"content": "x", "contentBase64": "eA=="}}}, "either"),
        ({**SIMPLE_STEPS, "files": {"a": {"contentBase64": "not base64!"}}}, "base64"),
        ({"dockerSteps": [{"image": "a", "commands": ["x"], "env": ["NOVALUE"]}]}, "NAME=value"),
        ({**SIMPLE_STEPS, "sparseCheckout": ["--evil"]}, "sparse"),
        ({**SIMPLE_STEPS, "timeoutSeconds": 0}, "timeoutSeconds"),
        ({**SIMPLE_STEPS, "maxAttempts": 0}, "maxAttempts"),
    ],
)
def test_invalid_job_bodies(kit: Kit, body: dict[str, Any], expect: str) -> None:
    r = kit.admin.post("/api/v1/queues/batches/jobs", json=body)
    assert r.status_code == 400, r.text
    assert expect in error_of(r)
    assert job_ids(kit) == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"string"', b"\xff\xfe"])
def test_malformed_json_is_400(kit: Kit, raw: bytes) -> None:
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert error_of(r)
    assert job_ids(kit) == []


def test_oversized_body_is_413(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(max_body_bytes=2048)
    big = {**SIMPLE_STEPS, "files": {"big.txt": {"content": "x" * 4096}}}
    r = kit.admin.post("/api/v1/queues/batches/jobs", json=big)
    assert r.status_code == 413 and "2048" in error_of(r)
    assert kit.submit(files={"small.txt": {"content": "x" * 100}})["state"] == "queued"
    assert len(job_ids(kit)) == 1


def test_oversized_chunked_body_is_413(make_kit: Callable[..., Kit]) -> None:
    """A body without Content-Length (chunked) that grows over the limit is refused the same way."""
    kit = make_kit(max_body_bytes=2048)
    payload = json.dumps({**SIMPLE_STEPS, "files": {"big.txt": {"content": "x" * 4096}}}).encode()
    chunks = iter([payload[i : i + 512] for i in range(0, len(payload), 512)])
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert job_ids(kit) == []


@pytest.mark.parametrize("queue", ["Batches", "has.dot", "x" * 65, "a%20b", "ümlaut", "batches%0A"])
def test_invalid_queue_name(kit: Kit, queue: str) -> None:
    r = kit.admin.post(f"/api/v1/queues/{queue}/jobs", json=SIMPLE_STEPS)
    assert r.status_code == 400, r.text
    assert "invalid queue name" in error_of(r)
    names = [q["name"] for q in kit.admin.get("/api/v1/queues").json()]
    assert names == ["batches", "codeintel"]


def test_queues(kit: Kit) -> None:
    r = kit.admin.get("/api/v1/queues")
    assert r.status_code == 200
    assert r.json() == [{"name": "batches", "counts": {}}, {"name": "codeintel", "counts": {}}]
    job = kit.submit("my-indexer_2")
    assert job["queue"] == "my-indexer_2"
    kit.submit("my-indexer_2")
    queues = {q["name"]: q["counts"] for q in kit.admin.get("/api/v1/queues").json()}
    assert queues == {"batches": {}, "codeintel": {}, "my-indexer_2": {"queued": 2}}
    # Executors can now use the new queue.
    assert kit.take("my-indexer_2")["id"] == job["id"]


# -- reading jobs ------------------------------------------------------------------------------
def test_get_and_list_jobs(kit: Kit) -> None:
    a = kit.submit("batches")["id"]
    b = kit.submit("batches")["id"]
    c = kit.submit("codeintel")["id"]
    kit.take("batches")
    assert job_ids(kit) == [c, b, a]
    assert job_ids(kit, queue="batches") == [b, a]
    assert job_ids(kit, state="processing") == [a]
    assert job_ids(kit, state="queued", queue="codeintel") == [c]
    assert job_ids(kit, limit=2) == [c, b]
    assert job_ids(kit, before=c) == [b, a]
    assert job_ids(kit, queue="nope") == []
    assert kit.admin.get("/api/v1/jobs", params={"limit": 0}).status_code == 400
    r = kit.admin.get("/api/v1/jobs/9999")
    assert r.status_code == 404 and "9999" in error_of(r)
    assert kit.admin.get("/api/v1/jobs/abc").status_code == 400
    job = kit.get_job(a)
    assert job["state"] == "processing" and job["executorName"] == EXECUTOR and job["startedAt"]


def test_redacted_values_and_registry_credentials_are_never_returned(kit: Kit) -> None:
    secret, auth = "hunter2-very-secret", base64.b64encode(b"user:registry-password").decode()
    job = kit.submit(
        redactedValues={secret: "PASSWORD"},
        dockerAuthConfig={"auths": {"registry.example.com": {"auth": auth}}},
    )
    responses = [
        json.dumps(job),
        kit.admin.get(f"/api/v1/jobs/{job['id']}").text,
        kit.admin.get("/api/v1/jobs").text,
        kit.admin.post(f"/api/v1/jobs/{job['id']}/cancel").text,
    ]
    for text in responses:
        assert secret not in text and auth not in text and "registry-password" not in text
    shown = kit.get_job(job["id"])["spec"]
    assert list(shown["redactedValues"].values()) == ["PASSWORD"]
    assert shown["dockerAuthConfig"] == {"auths": {"registry.example.com": "<redacted>"}}


def test_logs_and_result(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    assert kit.admin.get(f"/api/v1/jobs/{job['id']}/logs").json() == {"jobId": job["id"], "entries": []}
    kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"], out="out\n")
    kit.job_call("batches", "uploadResult", job, exitCodes=[0], diff="diff --git a b\n")
    kit.job_call("batches", "markComplete", job)
    (entry,) = kit.admin.get(f"/api/v1/jobs/{job['id']}/logs").json()["entries"]
    assert entry["key"] == "step.docker.0" and entry["out"] == "out\n"
    res = kit.admin.get(f"/api/v1/jobs/{job['id']}/result")
    assert res.status_code == 200 and res.json()["diff"] == "diff --git a b\n"
    assert kit.admin.get("/api/v1/jobs/4242/logs").status_code == 404
    assert kit.admin.get("/api/v1/jobs/4242/result").status_code == 404


def test_log_stream_ends_with_the_state_once_the_job_completes(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    entry = kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"]).json()
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=entry, offset=0, data="first\n")

    lines: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with kit.admin.stream("GET", f"/api/v1/jobs/{job['id']}/logs/stream") as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("application/x-ndjson")
                for line in r.iter_lines():
                    if line:
                        lines.append(json.loads(line))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, name="log-stream-reader")
    reader.start()
    wait_until(lambda: any(x["type"] == "output" for x in lines) or errors, what="the first output")
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=entry, offset=6, data="second\n")
    kit.job_call(
        "batches", "appendExecutionLogEntry", job, entryId=entry, offset=13, data="", exitCode=0, durationMs=5
    )
    wait_until(lambda: any(x["type"] == "exit" for x in lines) or errors, what="the exit line")
    assert kit.job_call("batches", "markComplete", job).status_code == 204
    reader.join(timeout=15)
    assert not reader.is_alive(), "the stream did not end after the job completed"
    assert errors == []
    assert lines[0] == {
        "type": "entry",
        "entryId": entry,
        "key": "step.docker.0",
        "command": ["sh"],
        "attempt": 1,
    }
    output = "".join(x["data"] for x in lines if x["type"] == "output")
    assert output == "first\nsecond\n"
    assert [x["offset"] for x in lines if x["type"] == "output"] == [6, 13]
    assert {"type": "exit", "entryId": entry, "exitCode": 0, "durationMs": 5} in lines
    assert lines[-1] == {"type": "state", "state": "completed", "error": None}


def test_log_stream_of_a_finished_job_and_of_an_unknown_job(kit: Kit) -> None:
    job_id = kit.submit()["id"]
    kit.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    r = kit.admin.get(f"/api/v1/jobs/{job_id}/logs/stream")
    assert r.status_code == 200
    assert [json.loads(x) for x in r.text.splitlines()] == [
        {"type": "state", "state": "canceled", "error": "canceled"}
    ]
    r = kit.admin.get("/api/v1/jobs/777/logs/stream")
    assert r.status_code == 404


# -- cancel ------------------------------------------------------------------------------------
def test_cancel(kit: Kit) -> None:
    queued = kit.submit()["id"]
    r = kit.admin.post(f"/api/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "canceled"
    assert kit.dequeue().status_code == 204
    r = kit.admin.post(f"/api/v1/jobs/{queued}/cancel")
    assert r.status_code == 409 and "canceled" in error_of(r)

    kit.submit()
    running = kit.take()
    r = kit.admin.post(f"/api/v1/jobs/{running['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["state"] == "processing" and r.json()["cancelRequested"] is True
    assert kit.heartbeat("batches", [running["id"]])["cancelIds"] == [str(running["id"])]
    assert kit.job_call("batches", "markFailed", running, errorMessage="canceled").status_code == 204
    assert kit.get_job(running["id"])["state"] == "canceled"

    kit.submit()
    done = kit.take()
    kit.job_call("batches", "markComplete", done)
    r = kit.admin.post(f"/api/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and "completed" in error_of(r)
    assert kit.get_job(done["id"])["state"] == "completed"
    assert kit.admin.post("/api/v1/jobs/5555/cancel").status_code == 404


# -- executors ---------------------------------------------------------------------------------
def test_executors_are_listed_after_a_heartbeat(kit: Kit) -> None:
    assert kit.admin.get("/api/v1/executors").json() == []
    kit.submit()
    job = kit.take()
    kit.heartbeat(
        "batches",
        [job["id"]],
        os="linux",
        architecture="x86_64",
        executorVersion="0.1.0",
        gitVersion="2.39.5",
        dockerVersion="27.0.1",
        srcCliVersion="5.0.0",
        hostname="box-1",
    )
    (ex,) = kit.admin.get("/api/v1/executors").json()
    assert ex["name"] == EXECUTOR and ex["hostname"] == "box-1" and ex["queues"] == ["batches"]
    assert ex["os"] == "linux" and ex["architecture"] == "x86_64"
    assert ex["executorVersion"] == "0.1.0" and ex["gitVersion"] == "2.39.5"
    assert ex["dockerVersion"] == "27.0.1" and ex["srcCliVersion"] == "5.0.0"
    assert ex["runningJobIds"] == [job["id"]] and ex["active"] is True
    assert ex["firstSeenAt"].endswith("Z") and ex["lastSeenAt"].endswith("Z")
    assert "corral_executors_active 1.0" in kit.admin.get("/metrics").text


# -- the log stream: resuming, whole characters ----------------------------------------------------
def _stream(kit: Kit, job_id: int, **params: str) -> list[dict[str, Any]]:
    r = kit.admin.get(f"/api/v1/jobs/{job_id}/logs/stream", params=params)
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


def _finished_job_with_two_entries(kit: Kit) -> tuple[int, int, int]:
    kit.submit()
    job = kit.take()
    one = kit.job_call("batches", "addExecutionLogEntry", job, key="setup.git.init", command=["git"]).json()
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=one, offset=0, data="a\nb\n")
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=one, offset=4, data="", exitCode=0)
    two = kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"]).json()
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=two, offset=0, data="c\nd\n")
    kit.job_call("batches", "appendExecutionLogEntry", job, entryId=two, offset=4, data="e\n", exitCode=3)
    assert kit.job_call("batches", "markFailed", job, errorMessage="boom").status_code == 204
    return job["id"], one, two


def test_a_resumed_log_stream_sends_only_what_the_follower_has_not_seen(kit: Kit) -> None:
    job_id, one, two = _finished_job_with_two_entries(kit)
    whole = _stream(kit, job_id)
    assert [e["type"] for e in whole] == ["entry", "output", "exit", "entry", "output", "exit", "state"]
    # a follower that saw entry one whole and the first 2 bytes of entry two
    resumed = _stream(kit, job_id, **{"from": f"{one}:4,{two}:2"})
    assert [e for e in resumed if e["type"] == "entry"] == []
    assert "".join(e["data"] for e in resumed if e["type"] == "output") == "d\ne\n"
    assert [e["offset"] for e in resumed if e["type"] == "output"] == [6]
    assert resumed[-1] == {"type": "state", "state": "failed", "error": "boom"}
    # an entry it does not name is sent whole, with its entry event
    fresh = _stream(kit, job_id, **{"from": f"{one}:4"})
    assert [e["key"] for e in fresh if e["type"] == "entry"] == ["step.docker.0"]
    assert "".join(e["data"] for e in fresh if e["type"] == "output") == "c\nd\ne\n"


@pytest.mark.parametrize("bad", ["x", "1:", ":2", "1:2:3", "-1:0", "1:-2", "1:99999999999999999"])
def test_a_malformed_resume_point_is_a_clear_400(kit: Kit, bad: str) -> None:
    job_id = kit.submit()["id"]
    r = kit.admin.get(f"/api/v1/jobs/{job_id}/logs/stream", params={"from": bad})
    assert r.status_code == 400 and "resume point" in error_of(r)


def test_the_log_stream_never_splits_a_character(kit: Kit) -> None:
    """A UTF-8 character whose bytes were stored in two writes (read by the follower in between)
    arrives whole, never as two U+FFFD; the offset after the first part excludes the held bytes."""
    kit.submit()
    job = kit.take()
    entry = kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"]).json()
    data = "héllo ✓\n".encode()
    cut = data.index("✓".encode()) + 1  # inside the three bytes of the check mark
    store, attempt = kit.srv.store, job["attempt"]
    store.append_log(job["id"], attempt, EXECUTOR, entry, 0, data[:cut], max_bytes=1 << 20)
    events: list[dict[str, Any]] = []

    def read() -> None:
        with kit.admin.stream("GET", f"/api/v1/jobs/{job['id']}/logs/stream") as r:
            for line in r.iter_lines():
                if line:
                    events.append(json.loads(line))

    reader = threading.Thread(target=read, name="log-stream-reader")
    reader.start()
    wait_until(lambda: any(e["type"] == "output" for e in events), what="the first output")
    store.append_log(
        job["id"], attempt, EXECUTOR, entry, cut, data[cut:], exit_code=0, duration_ms=1, max_bytes=1 << 20
    )
    kit.srv.app.state.corral.log_written(job["id"])
    assert kit.job_call("batches", "markComplete", job).status_code == 204
    reader.join(timeout=15)
    outputs = [e for e in events if e["type"] == "output"]
    assert "".join(e["data"] for e in outputs) == "héllo ✓\n"
    assert outputs[0] == {
        "type": "output",
        "entryId": entry,
        "data": "héllo ",
        "offset": len("héllo ".encode()),
    }
    assert outputs[-1]["offset"] == len(data)


def test_job_list_filters_by_repository_and_refuses_an_unknown_state(
    kit: Kit, repo: tuple[Path, str]
) -> None:
    path, _ = repo
    kit.add_repo("acme/app", path)
    kit.add_repo("acme/other", path)
    a = kit.submit(repositoryName="acme/app")["id"]
    kit.submit(repositoryName="acme/other")
    assert job_ids(kit, repository="acme/app") == [a]
    assert job_ids(kit, repository="acme/nothing") == []
    r = kit.admin.get("/api/v1/jobs", params={"state": "bogus"})
    assert r.status_code == 400
    assert error_of(r).startswith("unknown job state 'bogus': use one of queued, processing, completed")


def test_head_is_resolved_against_the_source_as_it_is_now(kit: Kit, repo: tuple[Path, str]) -> None:
    """A job naming HEAD or a branch gets the source's commit of now (the mirror is refreshed at
    submit); a full commit id needs no refresh; `repos/refresh` fetches on request."""
    path, first = repo
    kit.add_repo("acme/app", path)
    newer = commit_file(path, "NEW.md", "new\n")
    assert kit.submit(repositoryName="acme/app")["commit"] == newer
    newest = commit_file(path, "NEWER.md", "newer\n")
    assert kit.submit(repositoryName="acme/app", commit="main")["commit"] == newest
    assert kit.submit(repositoryName="acme/app", commit=first)["commit"] == first
    last = commit_file(path, "LAST.md", "last\n")
    r = kit.admin.post("/api/v1/repos/refresh", params={"name": "acme/app"})
    assert r.status_code == 200 and r.json()["name"] == "acme/app"
    assert kit.submit(repositoryName="acme/app", commit=last)["commit"] == last
    r = kit.admin.post("/api/v1/repos/refresh", params={"name": "acme/none"})
    assert r.status_code == 404


def test_a_moving_name_of_a_vanished_source_is_a_clear_error(kit: Kit, repo: tuple[Path, str]) -> None:
    import shutil

    path, commit = repo
    kit.add_repo("acme/app", path)
    shutil.rmtree(path)
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "repositoryName": "acme/app"})
    assert r.status_code == 400
    assert "cannot refresh repository 'acme/app' to resolve 'HEAD'" in error_of(r)
    assert "full commit id" in error_of(r)
    assert kit.submit(repositoryName="acme/app", commit=commit)["commit"] == commit  # no refresh needed


def test_a_repository_from_a_file_url(kit: Kit, repo: tuple[Path, str]) -> None:
    path, commit = repo
    r = kit.admin.post("/api/v1/repos", json={"name": "acme/app", "path": path.as_uri()})
    assert r.status_code == 201, r.text
    assert kit.submit(repositoryName="acme/app")["commit"] == commit
    for bad, why in [
        ("https://example.invalid/acme/app.git", "only local repositories"),
        ("file://otherhost/srv/app", "names no host"),
    ]:
        r = kit.admin.post("/api/v1/repos", json={"name": "acme/x", "path": bad})
        assert r.status_code == 400 and why in error_of(r), r.text


def test_remove_a_repository(kit: Kit, repo: tuple[Path, str]) -> None:
    path, _ = repo
    kit.add_repo("acme/app", path)
    mirror = kit.srv.settings.repos_dir / "acme" / "app.git"
    assert mirror.is_dir()
    job = kit.submit(repositoryName="acme/app")["id"]
    r = kit.admin.delete("/api/v1/repos", params={"name": "acme/app"})
    assert r.status_code == 409 and f"({job})" in error_of(r) and "cancel them first" in error_of(r)
    kit.admin.post(f"/api/v1/jobs/{job}/cancel")
    r = kit.admin.delete("/api/v1/repos", params={"name": "acme/app"})
    assert r.status_code == 204, r.text
    assert not mirror.exists() and not mirror.parent.exists()
    assert kit.admin.get("/api/v1/repos").json() == []
    assert kit.admin.delete("/api/v1/repos", params={"name": "acme/app"}).status_code == 404


def test_retry_submits_a_finished_job_again(kit: Kit, repo: tuple[Path, str]) -> None:
    path, commit = repo
    kit.add_repo("acme/app", path)
    first = kit.submit(repositoryName="acme/app", redactedValues={"hunter2-secret": "[PW]"})
    r = kit.admin.post(f"/api/v1/jobs/{first['id']}/retry")
    assert r.status_code == 409 and "only a finished job can be retried" in error_of(r)
    job = kit.take()
    kit.job_call("batches", "markFailed", job, errorMessage="boom")
    newer = commit_file(path, "NEW.md", "new\n")
    r = kit.admin.post(f"/api/v1/jobs/{first['id']}/retry")
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["id"] != first["id"] and again["state"] == "queued"
    assert again["commit"] == commit != newer  # the same commit, not HEAD of now
    assert again["spec"] == first["spec"]
    assert kit.get_job(first["id"])["state"] == "failed"
    taken = kit.take()
    assert taken["id"] == again["id"] and taken["redactedValues"] == {"hunter2-secret": "[PW]"}
    assert kit.admin.post("/api/v1/jobs/999/retry").status_code == 404


def test_the_job_view_redacts_each_line_of_a_multi_line_secret(kit: Kit) -> None:
    """`corral job get` shows the view: a secret read from a file keeps its newline, and the
    value in a step's env (without it) must not show in clear."""
    job = kit.submit(
        dockerSteps=[{"image": "a", "commands": ["true"], "env": ["PW=hunter2-pass"]}],
        redactedValues={"hunter2-pass\n": "[PW]"},
    )
    for text in (json.dumps(job), kit.admin.get(f"/api/v1/jobs/{job['id']}").text):
        assert "hunter2" not in text, text


def test_the_api_docs_load_nothing_from_elsewhere(make_kit: Callable[..., Kit]) -> None:
    """With CORRAL_DOCS=true, /docs (Swagger UI) and /redoc load their scripts, styles and icon from
    the server itself: they work offline, and a browser fetches nothing from a CDN."""
    import re

    kit = make_kit(docs=True)
    for page in ("/docs", "/redoc"):
        r = kit.anon.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']|url\(['"]?([^'")]+)""", r.text)
        urls = [a or b for a, b in refs]
        assert urls, r.text
        assert not [u for u in urls if "://" in u or u.startswith("//")], urls
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
        for url in urls:
            if url.startswith("/docs/assets/"):
                got = kit.anon.get(url)
                assert got.status_code == 200 and len(got.content) > 1000, url
    assert kit.anon.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert kit.anon.get("/docs/assets/redoc.standalone.js").status_code == 200


def test_the_api_docs_are_off_by_default(kit: Kit) -> None:
    assert kit.anon.get("/docs").status_code == 404
    assert kit.anon.get("/docs/assets/swagger-ui-bundle.js").status_code == 404
