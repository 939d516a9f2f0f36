"""The executor queue API over real HTTP (uvicorn on 127.0.0.1): Sourcegraph's wire facts
(protocol.md sections 1-3) and corral's extensions (long-poll, log offsets, fencing, results,
cancel watch, version skew)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.errors import ConfigError
from corral.protocol import EXECUTOR_NAME_HEADER, EXTENSIONS, EXTENSIONS_HEADER, JOB_ID_HEADER
from corral.server.app import create_app
from corral.server.settings import ServerSettings
from corral.server.store import SqlStore
from tests.serverkit import (
    ADMIN_TOKEN,
    CORRAL_UA,
    EXECUTOR,
    EXECUTOR_SECRET,
    HTTP_TIMEOUT,
    SERVER_VERSION,
    SIMPLE_STEPS,
    Kit,
    job_headers,
    settings_for,
)

LONG_POLL = 5.0  # seconds a long-poll is asked to wait in these tests

# Every field of Sourcegraph's Job JSON (internal/executor/types/job.go), v2 form.
SOURCEGRAPH_JOB_KEYS = {
    "version",
    "id",
    "token",
    "repositoryName",
    "repositoryDirectory",
    "commit",
    "fetchTags",
    "shallowClone",
    "sparseCheckout",
    "files",
    "dockerSteps",
    "cliSteps",
    "redactedValues",
    "dockerAuthConfig",
}


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def aexec(kit: Kit) -> AsyncIterator[httpx.AsyncClient]:
    """An async client with the executor token (for calls held open by the server)."""
    async with httpx.AsyncClient(
        base_url=kit.url,
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": CORRAL_UA},
        timeout=HTTP_TIMEOUT,
        trust_env=False,
    ) as c:
        yield c


async def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], r.text
    return str(body["error"])


# -- start-up ----------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "s" * 19])
def test_server_refuses_to_start_without_a_long_enough_executor_secret(tmp_path: Path, token: str) -> None:
    settings = settings_for(tmp_path / "data", executors_access_token=token)
    with pytest.raises(ConfigError, match="EXECUTORS_ACCESS_TOKEN") as exc:
        create_app(settings)
    assert "20" in exc.value.message
    if token:
        assert f"is {len(token)} characters long" in exc.value.message
    else:
        assert "not set" in exc.value.message


def test_executor_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTORS_ACCESS_TOKEN", "too-short")
    settings = ServerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN)
    assert settings.executors_access_token == "too-short"
    with pytest.raises(ConfigError, match="at least 20"):
        create_app(settings)


def test_admin_token_is_generated_into_the_data_dir(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data", admin_token="")
    create_app(settings).state.corral.store.close()
    path = tmp_path / "data" / "admin-token"
    assert settings.admin_token and path.read_text().strip() == settings.admin_token
    assert path.stat().st_mode & 0o777 == 0o600
    again = settings_for(tmp_path / "data", admin_token="")
    create_app(again).state.corral.store.close()
    assert again.admin_token == settings.admin_token


# -- executor auth -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "token-executor",
        f"token-executor {EXECUTOR_SECRET}x",
        f"token-executor {EXECUTOR_SECRET} extra",
        f"Bearer {EXECUTOR_SECRET}",
        f"token {EXECUTOR_SECRET}",
        f"TOKEN-EXECUTOR {EXECUTOR_SECRET}",
    ],
)
def test_executor_routes_need_the_executor_token(kit: Kit, authorization: str | None) -> None:
    kit.submit()
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"executorName": EXECUTOR, "version": SERVER_VERSION}
    for path in ("/.executors/queue/batches/dequeue", "/.executors/queue/batches/heartbeat"):
        r = kit.anon.post(path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert "executor token" in error_of(r)
    r = kit.anon.get("/.executors/test/auth", headers=headers)
    assert r.status_code == 401
    # Nothing was handed out.
    assert kit.get_job(1)["state"] == "queued"


def test_auth_check(kit: Kit) -> None:
    r = kit.executor.get("/.executors/test/auth")
    assert r.status_code == 200 and r.text == "ok"


# -- dequeue -----------------------------------------------------------------------------------
def test_dequeue_when_empty_is_204_with_no_body(kit: Kit) -> None:
    r = kit.dequeue()
    assert r.status_code == 204 and r.content == b""
    r = kit.executor.post("/.executors/queue/dequeue", json={"executorName": EXECUTOR, "queues": []})
    assert r.status_code == 204 and r.content == b""


def test_dequeue_returns_the_job_json(kit: Kit) -> None:
    submitted = kit.submit(
        "codeintel",
        files={
            "script.sh": {"content": "echo hello\n"},
            "dir/data.bin": {"contentBase64": base64.b64encode(b"\x00\xffbin").decode()},
            "stamped.txt": {"content": "x", "modifiedAt": "2024-01-02T03:04:05Z"},
        },
        dockerSteps=[{"key": "one", "image": "alpine:3", "commands": ["sh script.sh"], "env": ["A=1"]}],
        cliSteps=[{"command": ["batch", "exec"], "dir": "sub"}],
        redactedValues={"hunter2": "PASSWORD"},
        timeoutSeconds=60,
    )
    r = kit.dequeue("codeintel")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    job = r.json()
    assert SOURCEGRAPH_JOB_KEYS <= set(job), SOURCEGRAPH_JOB_KEYS - set(job)
    assert "queue" not in job  # only the several-queue dequeue names the queue
    assert job["id"] == submitted["id"]
    assert job["version"] == 2
    assert isinstance(job["token"], str) and len(job["token"]) >= 20
    assert job["repositoryName"] == "" and job["repositoryDirectory"] == "" and job["commit"] == ""
    assert job["fetchTags"] is False and job["shallowClone"] is False and job["sparseCheckout"] is None
    assert job["dockerSteps"] == [
        {"key": "one", "image": "alpine:3", "commands": ["set -e", "sh script.sh"], "dir": "", "env": ["A=1"]}
    ]  # fail fast by default: the server wrote `set -e` first
    assert job["cliSteps"] == [{"command": ["batch", "exec"], "dir": "sub", "env": None}]
    assert job["redactedValues"] == {"hunter2": "PASSWORD"}  # the executor needs them
    assert job["dockerAuthConfig"] == {}
    assert job["files"]["script.sh"]["content"] == base64.b64encode(b"echo hello\n").decode()
    assert base64.b64decode(job["files"]["dir/data.bin"]["content"]) == b"\x00\xffbin"
    assert job["files"]["script.sh"]["modifiedAt"] == "0001-01-01T00:00:00Z"
    assert job["files"]["stamped.txt"]["modifiedAt"] == "2024-01-02T03:04:05Z"
    assert job["attempt"] == 1 and job["timeoutSeconds"] == 60
    # The job is now the executor's.
    state = kit.get_job(job["id"])
    assert state["state"] == "processing" and state["executorName"] == EXECUTOR and state["attempt"] == 1
    assert kit.dequeue("codeintel").status_code == 204


def test_dequeue_by_a_sourcegraph_executor_gets_a_v1_job(kit: Kit) -> None:
    """A Sourcegraph executor older than 4.3.0: no `version`, file contents as plain text."""
    kit.submit(files={"script.sh": {"content": "echo hello\n"}})
    r = kit.anon.post(
        "/.executors/queue/batches/dequeue",
        json={"executorName": "sg-executor-1", "version": "4.2.0", "numCPUs": 4, "memory": "12G"},
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": "Go-http-client/1.1"},
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert "version" not in job
    assert "dockerAuthConfig" not in job  # v2 only
    assert job["files"]["script.sh"]["content"] == "echo hello\n"


SG_HEADERS = {"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": "Go-http-client/1.1"}
CORRAL_KEYS = {"attempt", "timeoutSeconds", "outputs", "namespace"}


def sg_dequeue(kit: Kit, version: str | None, queue: str = "batches") -> httpx.Response:
    """A dequeue as Sourcegraph's executor sends it (its User-Agent, no corral fields)."""
    body: dict[str, Any] = {"executorName": "sg-executor-1"}
    if version is not None:
        body["version"] = version
    return kit.anon.post(f"/.executors/queue/{queue}/dequeue", json=body, headers=SG_HEADERS)


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        (None, 1),  # no version: a pre-4.3 executor (handler.go checks only a non-empty one)
        ("", 1),
        ("0.0.0", 1),
        ("4.2", 1),  # Masterminds/semver: 4.2.0
        ("4.2.9", 1),
        ("211111_2021-11-11_abcdef1", 1),  # an insiders build before 2022-11-24
        ("4.3.0-rc.1", 2),  # ">= 4.3.0-0" admits prereleases of 4.3.0
        ("4.3.0", 2),
        ("v5.2.1", 2),
        ("54959_2022-11-24_4.4-925859585436", 2),
        ("dev", 2),
        ("0.0.0+dev", 2),
        ("0.1.0", 1),  # corral's own version, sent by something that is not corral's executor
    ],
)
def test_job_payload_version_follows_sourcegraphs_check(kit: Kit, version: str | None, payload: int) -> None:
    kit.submit(files={"bin": {"contentBase64": base64.b64encode(b"\x00\xffA\n").decode()}})
    r = sg_dequeue(kit, version)
    assert r.status_code == 200, r.text
    job = r.json()
    if payload == 2:
        assert job["version"] == 2 and job["dockerAuthConfig"] == {}
        assert base64.b64decode(job["files"]["bin"]["content"]) == b"\x00\xffA\n"
    else:
        assert "version" not in job and "dockerAuthConfig" not in job
        # Go's string(bytes) marshalled: each byte of invalid UTF-8 is one U+FFFD.
        assert job["files"]["bin"]["content"] == "\x00\ufffdA\n"


def test_invalid_version_from_a_sourcegraph_executor_dequeues_nothing(kit: Kit) -> None:
    submitted = kit.submit()
    r = sg_dequeue(kit, "\n1.2")
    assert r.status_code == 500  # handler_test.go, "Invalid version"
    assert r.json() == {"error": 'failed to check version "\\n1.2": Invalid Semantic Version'}
    body = {"executorName": "sg-executor-1", "version": "\n1.2", "queues": ["batches"]}
    r = kit.anon.post("/.executors/queue/dequeue", json=body, headers=SG_HEADERS)
    assert r.status_code == 500 and "Invalid Semantic Version" in error_of(r)
    job = kit.get_job(submitted["id"])
    assert job["state"] == "queued" and job["attempt"] == 0


def test_a_sourcegraph_executor_sees_no_corral_fields(kit: Kit) -> None:
    kit.submit(
        files={"a.txt": {"content": "x"}, "empty": {"content": ""}},
        dockerSteps=[{"image": "alpine:3", "commands": ["true"], "dir": "."}],
        timeoutSeconds=60,
        outputs=["out.txt"],
        namespace="team",
    )
    job = sg_dequeue(kit, "5.2.0").json()
    assert not CORRAL_KEYS & set(job), CORRAL_KEYS & set(job)
    assert set(job) == SOURCEGRAPH_JOB_KEYS
    # VirtualMachineFile: content, bucket and key are omitempty; modifiedAt is a struct (always there).
    assert job["files"] == {
        "a.txt": {"content": base64.b64encode(b"x").decode(), "modifiedAt": "0001-01-01T00:00:00Z"},
        "empty": {"modifiedAt": "0001-01-01T00:00:00Z"},
    }
    assert job["dockerSteps"] == [
        {"image": "alpine:3", "commands": ["set -e", "true"], "dir": ".", "env": None}
    ]
    assert job["cliSteps"] == []  # as stored: the producer API defaults to no CLI steps


def test_corral_fields_only_with_extensions(make_kit: Callable[..., Kit]) -> None:
    for extensions in (True, False):
        kit = make_kit(extensions=extensions)
        kit.submit(timeoutSeconds=60)
        job = kit.take()
        assert ("attempt" in job and job["timeoutSeconds"] == 60) is extensions
        assert not extensions or job["attempt"] == 1
        if not extensions:
            assert not CORRAL_KEYS & set(job)


def test_several_queue_dequeue_checks_the_executor_before_the_queues(kit: Kit) -> None:
    """multihandler.go checks the name and the version first: no queues is 204 only for a good request."""
    r = kit.anon.post(
        "/.executors/queue/dequeue", json={"executorName": "", "queues": []}, headers=SG_HEADERS
    )
    assert r.status_code == 400 and "executorName" in error_of(r)
    body = {"executorName": "sg", "version": "not a version", "queues": []}
    r = kit.anon.post("/.executors/queue/dequeue", json=body, headers=SG_HEADERS)
    assert r.status_code == 500 and "Invalid Semantic Version" in error_of(r)
    r = kit.anon.post(
        "/.executors/queue/dequeue", json={"executorName": "sg", "queues": []}, headers=SG_HEADERS
    )
    assert r.status_code == 204 and r.content == b""


def test_a_stored_job_whose_paths_leave_the_workspace_is_failed_at_dequeue(kit: Kit) -> None:
    """As Sourcegraph's dequeue when its RecordTransformer fails: the record is marked failed and the
    executor gets a 500. (Submission refuses such paths; this is a job stored some other way.)"""
    row = kit.srv.store.enqueue("batches", {"files": {"../escape": {"content": "eA=="}}, **SIMPLE_STEPS})
    r = sg_dequeue(kit, "5.2.0")
    assert r.status_code == 500
    assert error_of(r).startswith("RecordTransformer: refusing to write outside of working directory")
    job = kit.get_job(row.id)
    assert job["state"] == "failed"
    assert job["error"].startswith("failed to transform record: refusing to write outside")
    assert sg_dequeue(kit, "5.2.0").status_code == 204


def test_dequeue_by_a_newer_sourcegraph_executor_gets_a_v2_job(kit: Kit) -> None:
    kit.submit(files={"script.sh": {"content": "echo hello\n"}})
    r = kit.anon.post(
        "/.executors/queue/batches/dequeue",
        json={"executorName": "sg-executor-1", "version": "5.2.0"},
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": "Go-http-client/1.1"},
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["version"] == 2
    assert job["files"]["script.sh"]["content"] == base64.b64encode(b"echo hello\n").decode()


def test_several_queue_dequeue_names_the_queue(kit: Kit) -> None:
    c = kit.submit("codeintel")
    b = kit.submit("batches", priority=1)
    body = {"executorName": EXECUTOR, "version": SERVER_VERSION, "queues": ["codeintel", "batches"]}
    first = kit.executor.post("/.executors/queue/dequeue", json=body)
    second = kit.executor.post("/.executors/queue/dequeue", json=body)
    assert first.status_code == second.status_code == 200
    assert (first.json()["id"], first.json()["queue"]) == (b["id"], "batches")
    assert (second.json()["id"], second.json()["queue"]) == (c["id"], "codeintel")
    assert kit.executor.post("/.executors/queue/dequeue", json=body).status_code == 204


def test_dequeue_errors(kit: Kit) -> None:
    r = kit.dequeue(executor="")
    assert r.status_code == 400 and "executorName" in error_of(r)
    # An executor may wait on a queue nothing was submitted to yet: served, empty (issue 15 item 8).
    assert kit.dequeue("no-jobs-yet").status_code == 204
    r = kit.dequeue("Not_A_Queue")
    assert r.status_code == 404 and "Not_A_Queue" in error_of(r)
    r = kit.executor.post(
        "/.executors/queue/dequeue",
        json={"executorName": EXECUTOR, "version": SERVER_VERSION, "queues": ["batches", "no/pe"]},
    )
    assert r.status_code == 404 and "no/pe" in error_of(r)
    r = kit.executor.post(
        "/.executors/queue/batches/dequeue",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and error_of(r).startswith("invalid request")


def test_dequeue_takes_json_whatever_the_content_type(kit: Kit) -> None:
    kit.submit()
    r = kit.executor.post(
        "/.executors/queue/batches/dequeue",
        content=b'{"executorName": "plain", "version": "0.1.0"}',
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 200 and r.json()["id"] == 1


# -- version skew ------------------------------------------------------------------------------
def test_version_skew_is_refused_naming_both_versions(kit: Kit) -> None:
    kit.submit()
    r = kit.dequeue(version="0.3.0")
    assert r.status_code == 400
    msg = error_of(r)
    assert "0.3.0" in msg and SERVER_VERSION in msg
    assert kit.get_job(1)["state"] == "queued"
    r = kit.dequeue(version="1.1.0")
    assert r.status_code == 400 and "1.1.0" in error_of(r)


@pytest.mark.parametrize("version", ["garbage", "x.y.z", "\n1.2", "1.2.3\n"])
def test_unparsable_executor_version_is_refused(kit: Kit, version: str) -> None:
    """Refused as Sourcegraph's dequeue refuses it (500, the version quoted as Go's %q)."""
    kit.submit()
    r = kit.dequeue(version=version)
    assert r.status_code == 500
    quoted = version.replace("\n", "\\n")
    assert error_of(r) == f'failed to check version "{quoted}": Invalid Semantic Version'
    assert kit.get_job(1)["state"] == "queued"


def test_a_short_version_is_a_semver(kit: Kit) -> None:
    """Masterminds/semver reads "1.2" as 1.2.0: a corral executor sending it is refused for skew."""
    kit.submit()
    r = kit.dequeue(version="1.2")
    assert r.status_code == 400 and "1.2" in error_of(r) and "minor version" in error_of(r)


@pytest.mark.parametrize("version", ["0.2.0", "0.0.0", "0.0.0+dev", "dev"])
def test_close_and_dev_versions_are_accepted(kit: Kit, version: str) -> None:
    kit.submit()
    r = kit.dequeue(version=version)
    assert r.status_code == 200, r.text


# -- heartbeat ---------------------------------------------------------------------------------
def test_heartbeat_single_queue(kit: Kit) -> None:
    a, b, c = (kit.submit()["id"] for _ in range(3))
    kit.take()
    kit.take()
    kit.take(executor="someone-else")
    hb = kit.heartbeat("batches", [a, b, c, 999], version="V2")
    assert sorted(hb["knownIds"]) == sorted([str(a), str(b)])
    assert hb["cancelIds"] is None  # a nil slice in Sourcegraph's answer
    # Ids as strings work too (both forms are on the wire).
    hb = kit.heartbeat("batches", [str(a)])
    assert hb["knownIds"] == [str(a)]
    assert kit.admin.post(f"/api/v1/jobs/{b}/cancel").status_code == 200
    hb = kit.heartbeat("batches", [a, b])
    assert sorted(hb["knownIds"]) == sorted([str(a), str(b)]) and hb["cancelIds"] == [str(b)]
    # A heartbeat for another queue does not claim these jobs.
    assert kit.heartbeat("codeintel", [a, b]) == {"knownIds": None, "cancelIds": None}
    # No ids at all (the start-up ping): dbworker's Store.Heartbeat answers two empty lists.
    assert kit.heartbeat("batches", []) == {"knownIds": [], "cancelIds": []}
    assert kit.heartbeat("batches", None) == {"knownIds": [], "cancelIds": []}


@pytest.mark.parametrize("wire", [18.0, 1.8e1, "18", 18])
def test_heartbeat_ids_are_read_as_go_reads_them(kit: Kit, wire: Any) -> None:
    """HeartbeatRequest.UnmarshalJSON: a JSON number is a float64 written with FormatFloat(-1), so
    18.0 is "18" (internal/executor/types/http.go)."""
    for _ in range(18):
        kit.submit()
    for _ in range(18):
        kit.take()
    assert kit.heartbeat("batches", [wire]) == {"knownIds": ["18"], "cancelIds": None}


@pytest.mark.parametrize("wire", [18.5, "18.0", "7-batches", True, None, [18], "", "1" * 19])
def test_heartbeat_ids_that_are_no_whole_number_are_refused(kit: Kit, wire: Any) -> None:
    r = kit.executor.post(
        "/.executors/queue/batches/heartbeat", json={"executorName": EXECUTOR, "jobIds": [wire]}
    )
    assert r.status_code == 400, r.text
    assert error_of(r)


def test_heartbeat_several_queues(kit: Kit) -> None:
    b = kit.submit("batches")["id"]
    c = kit.submit("codeintel")["id"]
    kit.take("batches")
    kit.take("codeintel")
    body = {
        "executorName": EXECUTOR,
        "version": "V2",
        "queueNames": ["batches", "codeintel"],
        "jobIdsByQueue": [
            {"queueName": "batches", "jobIds": [str(b)]},
            {"queueName": "codeintel", "jobIds": [c, 777]},
        ],
    }
    r = kit.executor.post("/.executors/queue/heartbeat", json=body)
    assert r.status_code == 200
    assert sorted(r.json()["knownIds"]) == sorted([f"{b}-batches", f"{c}-codeintel"])
    assert r.json()["cancelIds"] is None
    kit.admin.post(f"/api/v1/jobs/{c}/cancel")
    r = kit.executor.post("/.executors/queue/heartbeat", json=body)
    assert r.json()["cancelIds"] == [f"{c}-codeintel"]
    # A job claimed under the wrong queue is not known.
    wrong = dict(body, jobIdsByQueue=[{"queueName": "codeintel", "jobIds": [b]}])
    assert kit.executor.post("/.executors/queue/heartbeat", json=wrong).json()["knownIds"] is None
    # No running jobs: both null (multihandler_test.go, "No running jobs").
    idle = dict(body, jobIdsByQueue=[])
    assert kit.executor.post("/.executors/queue/heartbeat", json=idle).json() == {
        "knownIds": None,
        "cancelIds": None,
    }


def test_heartbeat_errors(kit: Kit) -> None:
    r = kit.executor.post("/.executors/queue/batches/heartbeat", json={"executorName": "", "jobIds": []})
    assert r.status_code == 400 and "executorName" in error_of(r)
    r = kit.executor.post("/.executors/queue/No_Pe/heartbeat", json={"executorName": EXECUTOR})
    assert r.status_code == 404 and "No_Pe" in error_of(r)
    r = kit.executor.post("/.executors/queue/heartbeat", json={"executorName": EXECUTOR})
    assert r.status_code == 400 and "queueNames" in error_of(r)
    r = kit.executor.post(
        "/.executors/queue/heartbeat",
        json={
            "executorName": EXECUTOR,
            "queueNames": ["batches"],
            "jobIdsByQueue": [{"queueName": "codeintel", "jobIds": ["1"]}],
        },
    )
    assert r.status_code == 400 and "codeintel" in error_of(r)
    r = kit.executor.post(
        "/.executors/queue/batches/heartbeat", json={"executorName": EXECUTOR, "jobIds": ["abc"]}
    )
    assert r.status_code == 400


# -- job-scoped auth ---------------------------------------------------------------------------
def test_job_routes_auth(kit: Kit) -> None:
    kit.submit()
    kit.submit()
    kit.submit("codeintel")
    one, two = kit.take(), kit.take()
    other_queue = kit.take("codeintel")
    hdrs = job_headers(one)

    def call(headers: dict[str, str], queue: str = "batches", job: dict[str, Any] = one) -> httpx.Response:
        return kit.job_call(queue, "addExecutionLogEntry", job, headers=headers, key="k", command=["x"])

    r = call({})
    assert r.status_code == 401 and error_of(r)
    r = call({**hdrs, "Authorization": "Bearer not-a-real-token"})
    assert r.status_code == 401 and error_of(r)
    r = call({k: v for k, v in hdrs.items() if k != JOB_ID_HEADER})
    assert r.status_code == 400 and JOB_ID_HEADER in error_of(r)
    r = call({**hdrs, JOB_ID_HEADER: "one"})
    assert r.status_code == 400
    r = call({k: v for k, v in hdrs.items() if k != EXECUTOR_NAME_HEADER})
    assert r.status_code == 400 and EXECUTOR_NAME_HEADER in error_of(r)
    # The token of job one, presented for job two (header and body).
    r = call({**hdrs, JOB_ID_HEADER: str(two["id"])}, job=two)
    assert r.status_code == 403 and "another job" in error_of(r)
    r = call(hdrs, job=two)
    assert r.status_code == 403
    # Another executor's name.
    r = call({**hdrs, EXECUTOR_NAME_HEADER: "impostor"})
    assert r.status_code == 403
    # A token for the batches queue used on the codeintel queue.
    r = call(hdrs, queue="codeintel")
    assert r.status_code == 403 and "codeintel" in error_of(r)
    r = call(job_headers(other_queue), queue="batches", job=other_queue)
    assert r.status_code == 403
    # Nothing was written by any of those.
    assert kit.admin.get(f"/api/v1/jobs/{one['id']}/logs").json()["entries"] == []
    assert call(hdrs).status_code == 200


def test_job_routes_accept_the_executor_token(kit: Kit) -> None:
    job_id = kit.submit()["id"]
    kit.take()
    r = kit.executor.post(
        "/.executors/queue/batches/addExecutionLogEntry",
        json={"executorName": EXECUTOR, "jobId": job_id, "key": "k", "command": [], "out": "x"},
    )
    assert r.status_code == 200 and r.json() == 1
    r = kit.executor.post("/.executors/queue/batches/markComplete", json={"jobId": job_id})
    assert r.status_code == 400  # the executor token names no executor: the body must
    r = kit.executor.post(
        "/.executors/queue/batches/markComplete", json={"executorName": "impostor", "jobId": job_id}
    )
    assert r.status_code == 409
    r = kit.executor.post(
        "/.executors/queue/batches/markComplete", json={"executorName": EXECUTOR, "jobId": job_id}
    )
    assert r.status_code == 204
    assert kit.get_job(job_id)["state"] == "completed"


# -- logs --------------------------------------------------------------------------------------
def test_add_and_update_execution_log_entries(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    r = kit.job_call(
        "batches",
        "addExecutionLogEntry",
        job,
        key="setup.git.init",
        command=["git", "init"],
        startTime="2024-01-01T00:00:00Z",
        out="Initialized\n",
    )
    assert r.status_code == 200 and r.text.strip() == "1" and r.json() == 1
    r = kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"])
    assert r.status_code == 200 and r.json() == 2
    r = kit.job_call(
        "batches",
        "updateExecutionLogEntry",
        job,
        entryId=1,
        key="setup.git.init",
        command=["git", "init"],
        out="Initialized empty repo\n",
        exitCode=0,
        durationMs=15,
    )
    assert r.status_code == 204 and r.content == b""
    r = kit.job_call("batches", "updateExecutionLogEntry", job, entryId=9, out="x")
    assert r.status_code == 404
    logs = kit.admin.get(f"/api/v1/jobs/{job['id']}/logs").json()
    assert logs["jobId"] == job["id"]
    first, second = logs["entries"]
    assert first["entryId"] == 1 and first["key"] == "setup.git.init" and first["command"] == ["git", "init"]
    assert first["out"] == "Initialized empty repo\n" and first["exitCode"] == 0 and first["durationMs"] == 15
    assert first["startTime"] == "2024-01-01T00:00:00Z" and first["attempt"] == 1
    assert second["entryId"] == 2 and second["out"] == "" and second["exitCode"] is None


def test_append_execution_log_entry_with_offsets(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    entry = kit.job_call("batches", "addExecutionLogEntry", job, key="step.docker.0", command=["sh"]).json()

    def append(offset: int, data: str, **extra: Any) -> httpx.Response:
        return kit.job_call(
            "batches", "appendExecutionLogEntry", job, entryId=entry, offset=offset, data=data, **extra
        )

    r = append(0, "hello ")
    assert r.status_code == 200 and r.json() == {"offset": 6}
    r = append(6, "wörld\n")
    assert r.json() == {"offset": 13}  # offsets count UTF-8 bytes
    r = append(6, "wörld\n")  # a resend: refused with the server's offset so the client can resync
    assert r.status_code == 409 and r.json()["offset"] == 13 and error_of(r)
    r = append(0, "")
    assert r.status_code == 409 and r.json()["offset"] == 13
    r = append(13, "", exitCode=2, durationMs=99)
    assert r.status_code == 200 and r.json() == {"offset": 13}
    (e,) = kit.admin.get(f"/api/v1/jobs/{job['id']}/logs").json()["entries"]
    assert e["out"] == "hello wörld\n" and e["exitCode"] == 2 and e["durationMs"] == 99


def test_log_caps(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(max_log_bytes=32)
    kit.submit()
    job = kit.take()
    r = kit.job_call("batches", "addExecutionLogEntry", job, key="k", command=[], out="x" * 33)
    assert r.status_code == 413 and "32" in error_of(r)
    entry = kit.job_call("batches", "addExecutionLogEntry", job, key="k", command=[], out="x" * 30).json()
    r = kit.job_call("batches", "appendExecutionLogEntry", job, entryId=entry, offset=30, data="yyy")
    # too big is 413 (never a plain 400), naming the cap and what is stored; the cap is announced
    assert r.status_code == 413 and "cap" in error_of(r), r.text
    assert (r.json()["maxBytes"], r.json()["offset"]) == (32, 30)
    assert r.headers["X-Corral-Log-Max-Bytes"] == "32"
    r = kit.job_call("batches", "updateExecutionLogEntry", job, entryId=entry, out="z" * 40)
    assert r.status_code == 413
    (e,) = kit.admin.get(f"/api/v1/jobs/{job['id']}/logs").json()["entries"]
    assert e["out"] == "x" * 30


# -- marks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "state", "message"),
    [
        ("markComplete", "completed", None),
        ("markFailed", "failed", "step 1 exited with 2"),
        ("markErrored", "errored", "network hiccup"),
    ],
)
def test_marks(kit: Kit, op: str, state: str, message: str | None) -> None:
    kit.submit()
    job = kit.take()
    extra = {"errorMessage": message} if message else {}
    r = kit.job_call("batches", op, job, **extra)
    assert r.status_code == 204 and r.content == b""
    got = kit.get_job(job["id"])
    assert got["state"] == state and got["error"] == message
    # A second mark from the same attempt is refused and changes nothing.
    for again in ("markComplete", "markFailed", "markErrored"):
        r = kit.job_call("batches", again, job, errorMessage="late")
        assert r.status_code == 409, (again, r.text)
    assert kit.get_job(job["id"]) == got


def test_mark_of_another_job_with_the_executor_token(kit: Kit) -> None:
    r = kit.executor.post(
        "/.executors/queue/batches/markComplete", json={"executorName": EXECUTOR, "jobId": 4040}
    )
    assert r.status_code == 404


def test_errored_job_is_retried(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retry_backoff=0.0)
    kit.submit(maxAttempts=2)
    first = kit.take()
    assert kit.job_call("batches", "markErrored", first, errorMessage="try again").status_code == 204
    second = kit.take()
    assert second["id"] == first["id"] and second["attempt"] == 2 and second["token"] != first["token"]
    assert kit.job_call("batches", "markErrored", second, errorMessage="again").status_code == 204
    job = kit.get_job(first["id"])
    assert job["state"] == "failed" and job["numFailures"] == 2 and job["error"] == "again"
    assert kit.dequeue().status_code == 204


def test_upload_result(kit: Kit) -> None:
    kit.submit(outputs=["out/report.json"])  # a result carries only declared outputs
    job = kit.take()
    r = kit.admin.get(f"/api/v1/jobs/{job['id']}/result")
    assert r.status_code == 404 and "no result" in error_of(r)
    files = {"out/report.json": base64.b64encode(b'{"ok": true}').decode()}
    r = kit.job_call(
        "batches", "uploadResult", job, exitCodes=[0, 0], diff="--- a\n+++ b\n", files=files, outcome=""
    )
    assert r.status_code == 204
    assert kit.job_call("batches", "markComplete", job).status_code == 204
    res = kit.admin.get(f"/api/v1/jobs/{job['id']}/result").json()
    assert res == {
        "jobId": job["id"],
        "attempt": 1,
        "exitCodes": [0, 0],
        "diff": "--- a\n+++ b\n",
        "files": files,
    }
    assert kit.get_job(job["id"])["exitCodes"] == [0, 0]


# -- fencing -----------------------------------------------------------------------------------
def test_stale_attempt_is_fenced_off_after_a_reset(make_kit: Callable[..., Kit], tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqlStore(f"sqlite:///{tmp_path / 'fenced.db'}", clock=clock)
    kit = make_kit(store, stalled_after=15.0, resetter_interval=0.02)
    kit.submit()
    old = kit.take(executor="exec-old")
    entry = kit.job_call("batches", "addExecutionLogEntry", old, "exec-old", key="k", command=[]).json()
    assert kit.job_call(
        "batches", "appendExecutionLogEntry", old, "exec-old", entryId=entry, offset=0, data="old"
    ).json() == {"offset": 3}

    clock.t += 60  # the old executor went silent: the resetter requeues the job
    kit.wait_state(old["id"], "queued")
    hb = kit.heartbeat("batches", [old["id"]], executor="exec-old")
    assert hb["knownIds"] is None  # the executor learns the job is no longer its own
    new = kit.take(executor="exec-new")
    assert new["id"] == old["id"] and new["attempt"] == 2
    before = kit.get_job(old["id"]), kit.admin.get(f"/api/v1/jobs/{old['id']}/logs").json()

    for op, extra in [
        ("addExecutionLogEntry", {"key": "stale", "command": []}),
        ("updateExecutionLogEntry", {"entryId": entry, "out": "stale"}),
        ("appendExecutionLogEntry", {"entryId": entry, "offset": 3, "data": "stale"}),
        ("uploadResult", {"exitCodes": [1]}),
        ("markComplete", {}),
        ("markErrored", {"errorMessage": "stale"}),
        ("markFailed", {"errorMessage": "stale"}),
    ]:
        r = kit.job_call("batches", op, old, "exec-old", **extra)
        assert r.status_code == 409, (op, r.status_code, r.text)
        assert "stale attempt" in error_of(r) or "not processing" in error_of(r)
    after = kit.get_job(old["id"]), kit.admin.get(f"/api/v1/jobs/{old['id']}/logs").json()
    assert after == before
    assert kit.admin.get(f"/api/v1/jobs/{old['id']}/result").status_code == 404

    # The executor token naming a stale attempt (the fencing extension) is refused as well.
    r = kit.executor.post(
        "/.executors/queue/batches/markComplete",
        json={"executorName": "exec-new", "jobId": new["id"], "attempt": 1},
    )
    assert r.status_code == 409
    # A job token naming another attempt in the body.
    r = kit.job_call("batches", "markComplete", new, "exec-new", attempt=1)
    assert r.status_code == 409
    # The live attempt completes the job, once.
    assert kit.job_call("batches", "markComplete", new, "exec-new", attempt=2).status_code == 204
    assert kit.get_job(new["id"])["state"] == "completed"
    assert kit.job_call("batches", "markComplete", new, "exec-new").status_code == 409


def test_stalled_job_fails_after_max_resets(make_kit: Callable[..., Kit], tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqlStore(f"sqlite:///{tmp_path / 'stalled.db'}", clock=clock)
    kit = make_kit(store, stalled_after=15.0, max_resets=1, resetter_interval=0.02)
    job_id = kit.submit()["id"]
    kit.take(executor="a")
    clock.t += 60
    kit.wait_state(job_id, "queued")
    kit.take(executor="b")
    clock.t += 60
    job = kit.wait_state(job_id, "failed")
    assert job["error"] == "job processor died while handling this message too many times"
    assert job["numResets"] == 2


# -- long-poll and cancel watch (corral extensions) --------------------------------------------
def test_extensions_are_advertised(kit: Kit) -> None:
    r = kit.dequeue()
    assert r.headers[EXTENSIONS_HEADER].split(",") == list(EXTENSIONS)
    assert EXTENSIONS_HEADER not in kit.anon.get("/healthz").headers


async def test_long_poll_returns_a_job_enqueued_during_the_wait(kit: Kit, aexec: httpx.AsyncClient) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(
        aexec.post(
            "/.executors/queue/batches/dequeue",
            json={"executorName": EXECUTOR, "version": SERVER_VERSION, "waitSeconds": LONG_POLL},
        )
    )
    await wait_for(lambda: kit.srv.waiting_on("batches") or poll.done(), what="the long-poll to wait")
    assert not poll.done(), "the dequeue returned instead of waiting"
    submitted = await asyncio.to_thread(kit.submit)
    r = await asyncio.wait_for(poll, LONG_POLL * 3)
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.json()["id"] == submitted["id"]
    assert elapsed < LONG_POLL, f"the job arrived only after {elapsed:.1f}s"


async def test_long_poll_on_several_queues(kit: Kit, aexec: httpx.AsyncClient) -> None:
    poll = asyncio.create_task(
        aexec.post(
            "/.executors/queue/dequeue",
            json={
                "executorName": EXECUTOR,
                "version": SERVER_VERSION,
                "queues": ["batches", "codeintel"],
                "waitSeconds": LONG_POLL,
            },
        )
    )
    await wait_for(lambda: kit.srv.waiting_on("codeintel") or poll.done(), what="the long-poll to wait")
    submitted = await asyncio.to_thread(kit.submit, "codeintel")
    r = await asyncio.wait_for(poll, LONG_POLL * 3)
    assert r.status_code == 200
    assert r.json()["id"] == submitted["id"] and r.json()["queue"] == "codeintel"


async def test_long_poll_is_capped_by_the_server(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(long_poll_max=0.2)
    started = time.monotonic()
    r = await asyncio.to_thread(kit.dequeue, waitSeconds=60)
    assert r.status_code == 204
    assert time.monotonic() - started < 30


def test_without_extensions_wait_seconds_is_ignored(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(extensions=False)
    started = time.monotonic()
    r = kit.dequeue(waitSeconds=LONG_POLL)
    assert r.status_code == 204
    assert time.monotonic() - started < LONG_POLL - 1
    assert EXTENSIONS_HEADER not in r.headers
    # The extension endpoints are switched off too; Sourcegraph's calls work as before.
    kit.submit()
    job = kit.take()
    assert EXTENSIONS_HEADER not in kit.dequeue().headers
    entry = kit.job_call("batches", "addExecutionLogEntry", job, key="k", command=[]).json()
    r = kit.job_call("batches", "appendExecutionLogEntry", job, entryId=entry, offset=0, data="x")
    assert r.status_code == 404
    r = kit.executor.post("/.executors/queue/cancelWatch", json={"executorName": EXECUTOR})
    assert r.status_code == 404
    assert kit.job_call("batches", "uploadResult", job, exitCodes=[0]).status_code == 404
    assert kit.job_call("batches", "markComplete", job).status_code == 204


async def test_cancel_watch_returns_when_a_running_job_is_canceled(
    kit: Kit, aexec: httpx.AsyncClient
) -> None:
    kit.submit()
    kit.submit()
    job, other = kit.take(), kit.take()
    started = time.monotonic()
    watch = asyncio.create_task(
        aexec.post(
            "/.executors/queue/cancelWatch",
            json={"executorName": EXECUTOR, "jobIds": [job["id"], other["id"]], "waitSeconds": LONG_POLL},
        )
    )
    key = f"cancel:{EXECUTOR}"
    await wait_for(lambda: kit.srv.waiting_on(key) or watch.done(), what="the cancel watch to wait")
    assert not watch.done()
    r = await asyncio.to_thread(kit.admin.post, f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancelRequested"] is True
    r = await asyncio.wait_for(watch, LONG_POLL * 3)
    assert r.status_code == 200 and r.json() == {"cancelIds": [job["id"]]}
    assert time.monotonic() - started < LONG_POLL
    # The executor stops the job and reports it: it ends canceled.
    assert kit.job_call("batches", "markFailed", job, errorMessage="canceled by user").status_code == 204
    assert kit.get_job(job["id"])["state"] == "canceled"


def test_cancel_watch_without_cancels(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    r = kit.executor.post(
        "/.executors/queue/cancelWatch",
        json={"executorName": EXECUTOR, "jobIds": [job["id"]], "waitSeconds": 0},
    )
    assert r.status_code == 200 and r.json() == {"cancelIds": []}
    r = kit.executor.post("/.executors/queue/cancelWatch", json={"executorName": "", "jobIds": []})
    assert r.status_code == 400
    r = kit.anon.post("/.executors/queue/cancelWatch", json={"executorName": EXECUTOR, "jobIds": []})
    assert r.status_code == 401
