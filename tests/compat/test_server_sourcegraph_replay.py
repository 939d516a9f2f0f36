"""The server half of the compatibility suite: a Sourcegraph executor's requests replayed against a
real `corral server` (uvicorn on 127.0.0.1), answered as Sourcegraph's frontend answers them.

The requests are the exact bodies and headers Sourcegraph's executor sends, and the answers are the
ones Sourcegraph's own handler tests expect, copied from sourcegraph/sourcegraph-public-snapshot into
tests/compat/fixtures/ (each file names its Go source):

- sourcegraph_client_requests.json   cmd/executor/internal/apiclient/queue/client_test.go
- sourcegraph_handler_cases.json     cmd/frontend/internal/executorqueue/handler/handler_test.go
                                     and multihandler_test.go
- sourcegraph_job_json.json          internal/executor/types/job_test.go

Where a Go test mocks the store, the replay sets the same state up for real (jobs with those ids in
those queues, dequeued by that executor, canceled by a producer). Where corral answers an error with
another status than Sourcegraph, `DIVERGENCES` says why that is safe: Sourcegraph's executor
(cmd/executor/internal/apiclient/baseclient.go, `Do`) tells only 200 (an answer), 204 (nothing) and
any other status (an error) apart, plus 401 from /.executors/test/auth (validate.go) and 404 from
HEAD on the files API (files/client.go, `Exists`); `reaction` below is that rule, and every
divergence must keep the reaction the same.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from corral.server.store import Store
from tests.serverkit import EXECUTOR_SECRET, HTTP_TIMEOUT, Kit, git, make_git_repo, serve, settings_for

FIXTURES = Path(__file__).parent / "fixtures"
CLIENT = json.loads((FIXTURES / "sourcegraph_client_requests.json").read_text())
HANDLER = json.loads((FIXTURES / "sourcegraph_handler_cases.json").read_text())
JOB_JSON = json.loads((FIXTURES / "sourcegraph_job_json.json").read_text())


def reaction(status: int, *, head_of_file: bool = False) -> str:
    """What Sourcegraph's executor makes of a status (baseclient.go Do; files/client.go Exists)."""
    if status == 200:
        return "answer"
    if status == 204:
        return "nothing"
    if head_of_file and status == 404:
        return "absent"
    return "error"


class Executor:
    """Sourcegraph's executor on the wire: no corral User-Agent (baseclient.go sets the configured
    one, which run/util.go leaves empty), Content-Type: application/json on every call, the executor
    token or the job token with X-Sourcegraph-Job-ID and X-Sourcegraph-Executor-Name."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, trust_env=False)
        self.http.headers.pop("User-Agent", None)

    def close(self) -> None:
        self.http.close()

    def executor_headers(self) -> dict[str, str]:
        return {"Authorization": f"token-executor {EXECUTOR_SECRET}", "Content-Type": "application/json"}

    def job_headers(self, job_id: int, token: str | None) -> dict[str, str]:
        auth = f"Bearer {token}" if token else f"token-executor {EXECUTOR_SECRET}"
        return {
            "Authorization": auth,
            JOB_ID_HEADER: str(job_id),
            EXECUTOR_NAME_HEADER: self.name,
            "Content-Type": "application/json",
        }

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(path, content=json.dumps(body), headers=headers or self.executor_headers())

    def replay(self, name: str, token: str | None = None, **changes: Any) -> httpx.Response:
        """One request of client_test.go as Sourcegraph's client sends it (`changes` replace fields
        whose value the Go test's mock chose, such as an entry id)."""
        spec = CLIENT[name]
        body = {**spec["body"], **changes}
        if spec["auth"] == "executor":
            return self.post(spec["path"], body)
        return self.post(spec["path"], body, self.job_headers(spec["job_id"], token))


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    with serve(settings_for(tmp_path / "server"), background_stop=True) as srv:
        k = Kit(srv)
        try:
            yield k
        finally:
            k.close()


@pytest.fixture
def deadbeef(kit: Kit) -> Iterator[Executor]:
    """client_test.go's executor."""
    ex = Executor(kit.url, "deadbeef")
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture
def test_executor(kit: Kit) -> Iterator[Executor]:
    """handler_test.go's executor."""
    ex = Executor(kit.url, "test-executor")
    try:
        yield ex
    finally:
        ex.close()


def store_of(kit: Kit) -> Store:
    return kit.srv.store


def jobs(kit: Kit, queues: dict[int, str], spec: dict[str, Any] | None = None) -> None:
    """Jobs 1..max(queues) (ids are global in corral): those named in `queues` in that queue, the
    others in a queue nobody asks for."""
    for job_id in range(1, max(queues) + 1):
        row = store_of(kit).enqueue(queues.get(job_id, "filler"), dict(spec or {}))
        assert row.id == job_id


def take(ex: Executor, queue: str, version: str = "0.0.0+dev") -> dict[str, Any]:
    r = ex.post(f"/.executors/queue/{queue}/dequeue", {"executorName": ex.name, "version": version})
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def with_token(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """The fixture's answer with the token the server issued (the Go tests' mocks chose theirs)."""
    assert isinstance(got.get("token"), str) and len(got["token"]) >= 20, got
    return {**expected, "token": got["token"]}


def cancel(kit: Kit, job_id: int) -> None:
    r = kit.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text


# -- dequeue: the Job JSON and its version -----------------------------------------------------
@pytest.mark.parametrize("case", HANDLER["dequeue"], ids=lambda c: c["name"])
def test_dequeue_as_handler_test_go(kit: Kit, test_executor: Executor, case: dict[str, Any]) -> None:
    """A job with nothing set (the Go test's `Job{ID: 1}`); "Nothing to dequeue" has no job."""
    if case["name"] != "Nothing to dequeue":
        jobs(kit, {1: "test"})
    r = test_executor.post("/.executors/queue/test/dequeue", case["body"])
    assert r.status_code == case["status"], r.text
    if case["response"] is None:
        assert r.content == b""
    elif case["status"] == 200:
        assert r.json() == with_token(case["response"], r.json())
    else:
        assert r.json() == case["response"]
    if case["status"] != 200:  # nothing was dequeued: the job is still there for the next executor
        assert store_of(kit).list_jobs(state="processing") == []


@pytest.mark.parametrize("case", JOB_JSON["cases"], ids=lambda c: c["name"])
def test_job_json_as_job_test_go(kit: Kit, test_executor: Executor, case: dict[str, Any]) -> None:
    """TestJob_MarshalJSON's job, stored as corral stores a job (content as base64 bytes), and the
    JSON it expects: "4.3" to an executor that takes v2 (dev), "4.2" to one that does not (4.2.0)."""
    spec = json.loads(json.dumps(case["input"]))
    for f in spec["files"].values():
        if "content" in f:
            f["content"] = base64.b64encode(f["content"].encode()).decode()
    jobs(kit, {1: "batches"}, spec)
    got = take(test_executor, "batches", version="dev" if case["name"] == "4.3" else "4.2.0")
    assert got == with_token(case["expected"], got)


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        (None, 1),
        ("", 1),
        ("0.0.0", 1),
        ("4.2", 1),
        ("211111_2021-11-11_abcdef1", 1),
        ("4.3.0", 2),
        ("5.2.3", 2),
        ("dev", 2),
        ("0.0.0+dev", 2),
        ("54959_2022-11-24_4.4-925859585436", 2),
    ],
)
def test_dequeue_version_decides_the_payload(
    kit: Kit, test_executor: Executor, version: str | None, payload: int
) -> None:
    """handler.go dequeue: no version is v1; else CheckSourcegraphVersion(">= 4.3.0-0", "2022-11-24")."""
    jobs(kit, {1: "batches"}, {"files": {"bin": {"content": "AP9BCg=="}}})  # bytes 00 ff 41 0a
    body: dict[str, Any] = {"executorName": "test-executor"}
    if version is not None:
        body["version"] = version
    got = test_executor.post("/.executors/queue/batches/dequeue", body).json()
    assert ("version" in got, "dockerAuthConfig" in got) == ((payload == 2),) * 2
    content = got["files"]["bin"]["content"]
    assert content == ("AP9BCg==" if payload == 2 else "\x00\ufffdA\n")  # v1: Go's string(bytes)


@pytest.mark.parametrize("case", HANDLER["dequeue_multi"], ids=lambda c: c["name"])
def test_multi_queue_dequeue_as_multihandler_test_go(
    kit: Kit, test_executor: Executor, case: dict[str, Any]
) -> None:
    """Job 1 in codeintel and job 2 in batches, as the test's mocks hold them (the Go handler picks
    among non-empty queues by weight; corral takes the first job by priority and id, the same here)."""
    jobs(kit, {1: "codeintel", 2: "batches"})
    for event in case["events"]:
        r = test_executor.post("/.executors/queue/dequeue", case["body"])
        assert r.status_code == event["status"], r.text
        if event["response"] is None:
            assert r.content == b""
        elif event["status"] == 200:
            assert r.json() == with_token(event["response"], r.json())
        else:
            assert r.json() == event["response"]


def test_client_dequeue_bodies(kit: Kit, deadbeef: Executor) -> None:
    """client_test.go's dequeue bodies ("0.0.0+dev": v2), one queue and several."""
    jobs(kit, {1: "test_queue", 2: "test_queue_two"})
    one = deadbeef.replay("dequeue")
    assert one.status_code == 200 and one.json()["id"] == 1 and one.json()["version"] == 2
    assert "queue" not in one.json()  # Queue is omitempty: only the several-queue route sets it
    many = deadbeef.replay("dequeue_multi")
    assert many.status_code == 200 and (many.json()["id"], many.json()["queue"]) == (2, "test_queue_two")
    assert deadbeef.replay("dequeue").status_code == 204
    assert deadbeef.replay("dequeue_multi").content == b""


# -- heartbeats and cancel ---------------------------------------------------------------------
def test_client_heartbeat_and_cancel(kit: Kit, deadbeef: Executor) -> None:
    """TestHeartbeat's body, against jobs 1-3 of which deadbeef runs 1 and a producer canceled it:
    the answer its mock gave ({"knownIDs": ["1"], "cancelIDs": ["1"]}). markFailed then ends it
    canceled, as dbworker's markFailedQuery does for a record with cancel set."""
    jobs(kit, {1: "test_queue", 2: "test_queue", 3: "test_queue"})
    job = take(deadbeef, "test_queue")
    assert job["id"] == 1
    r = deadbeef.replay("heartbeat")
    assert r.status_code == 200 and r.json() == {"knownIds": ["1"], "cancelIds": None}
    cancel(kit, 1)
    r = deadbeef.replay("heartbeat")
    assert r.status_code == 200 and r.json() == {"knownIds": ["1"], "cancelIds": ["1"]}
    r = deadbeef.post(
        "/.executors/queue/test_queue/markFailed",
        {**CLIENT["mark_failed"]["body"], "jobId": 1},
        deadbeef.job_headers(1, job["token"]),
    )
    assert r.status_code == 204 and r.content == b""
    assert kit.get_job(1)["state"] == "canceled"


def test_client_multi_queue_heartbeat(kit: Kit, deadbeef: Executor) -> None:
    """TestMultiQueueHeartbeat's body: jobs 1 and 3 of test_queue_one and 2 of test_queue_two; deadbeef
    runs 1 and 2, 2 is canceled (3 was never dequeued: not known). Ids answered "<id>-<queue>"."""
    jobs(kit, {1: "test_queue_one", 2: "test_queue_two", 3: "test_queue_one"})
    take(deadbeef, "test_queue_one")
    take(deadbeef, "test_queue_two")
    cancel(kit, 2)
    r = deadbeef.replay("heartbeat_multi")
    assert r.status_code == 200
    assert sorted(r.json()["knownIds"]) == ["1-test_queue_one", "2-test_queue_two"]
    assert r.json()["cancelIds"] == ["2-test_queue_two"]


def test_client_ping(kit: Kit, deadbeef: Executor) -> None:
    """client.go Ping: a heartbeat with no job ids; dbworker's Store.Heartbeat answers two empty lists."""
    r = deadbeef.replay("ping")
    assert r.status_code == 200 and r.json() == {"knownIds": [], "cancelIds": []}


@pytest.mark.parametrize("case", HANDLER["heartbeat"], ids=lambda c: c["name"])
def test_heartbeat_as_handler_test_go(kit: Kit, test_executor: Executor, case: dict[str, Any]) -> None:
    """Jobs 7 and 42 run on test-executor (the mock's known ids). The Go store builds the list from a
    map, so its order is not part of the answer."""
    jobs(kit, {7: "test", 42: "test"})
    take(test_executor, "test")
    take(test_executor, "test")
    r = test_executor.post("/.executors/queue/test/heartbeat", case["body"])
    assert r.status_code == case["status"], r.text
    got = r.json()
    assert sorted(got["knownIds"]) == sorted(case["response"]["knownIds"])
    assert got["cancelIds"] == case["response"]["cancelIds"]


@pytest.mark.parametrize("case", HANDLER["heartbeat_multi"], ids=lambda c: c["name"])
def test_multi_queue_heartbeat_as_multihandler_test_go(
    kit: Kit, test_executor: Executor, case: dict[str, Any]
) -> None:
    """Jobs 7 and 42 of codeintel, 8 and 43 of batches, all running on test-executor."""
    jobs(kit, {7: "codeintel", 42: "codeintel", 8: "batches", 43: "batches"})
    for queue in ("codeintel", "codeintel", "batches", "batches"):
        take(test_executor, queue)
    r = test_executor.post("/.executors/queue/heartbeat", case["body"])
    assert r.status_code == case["status"], r.text
    got, want = r.json(), case["response"]
    assert (sorted(got["knownIds"]) if got["knownIds"] else got["knownIds"]) == (
        sorted(want["knownIds"]) if want["knownIds"] else want["knownIds"]
    )
    assert got["cancelIds"] == want["cancelIds"]


def test_known_and_canceled_ids_of_several_queues(kit: Kit, test_executor: Executor) -> None:
    """multihandler_test.go "Known and canceled IDs", with a real store: a canceled job is still one
    of the executor's (known) until it is marked, and is named in cancelIds with its queue."""
    jobs(kit, {7: "codeintel", 42: "codeintel", 8: "batches", 43: "batches"})
    for queue in ("codeintel", "codeintel", "batches", "batches"):
        take(test_executor, queue)
    cancel(kit, 7)
    cancel(kit, 8)
    body = next(c for c in HANDLER["heartbeat_multi"] if c["name"] == "Failed to upsert heartbeat")["body"]
    got = test_executor.post("/.executors/queue/heartbeat", body).json()
    assert sorted(got["knownIds"]) == sorted(["42-codeintel", "7-codeintel", "43-batches", "8-batches"])
    assert sorted(got["cancelIds"]) == ["7-codeintel", "8-batches"]


# -- log entries and marks ---------------------------------------------------------------------
@pytest.mark.parametrize("general_token", [False, True], ids=["job token", "general access token"])
def test_client_log_entries_and_mark_complete(kit: Kit, deadbeef: Executor, general_token: bool) -> None:
    """TestAddExecutionLogEntry, TestUpdateExecutionLogEntry and TestClient_MarkComplete for job 42
    (with its token, or "Success general access token": the executor token with the job headers)."""
    jobs(kit, {42: "test_queue"})
    job = take(deadbeef, "test_queue")
    assert job["id"] == 42
    token = None if general_token else job["token"]
    r = deadbeef.replay("add_log_entry", token)
    assert r.status_code == 200 and r.text.strip() == "1" and r.json() == 1  # a bare JSON integer
    r = deadbeef.replay("update_log_entry", token, entryId=1)  # the mock's 99 is the id it answered
    assert r.status_code == 204 and r.content == b""
    (entry,) = kit.admin.get("/api/v1/jobs/42/logs").json()["entries"]
    assert (entry["key"], entry["command"], entry["out"]) == ("foo", ["ls", "-a"], "<log payload>")
    assert (entry["exitCode"], entry["durationMs"], entry["startTime"]) == (
        123,
        23123,
        "2020-04-20T15:29:17Z",
    )
    name = "mark_complete_general_access_token" if general_token else "mark_complete"
    r = deadbeef.replay(name, token)
    assert r.status_code == 204 and r.content == b""
    assert kit.get_job(42)["state"] == "completed"


@pytest.mark.parametrize(("name", "state"), [("mark_errored", "errored"), ("mark_failed", "failed")])
def test_client_mark_errored_and_failed(kit: Kit, deadbeef: Executor, name: str, state: str) -> None:
    jobs(kit, {42: "test_queue"})
    job = take(deadbeef, "test_queue")
    r = deadbeef.replay(name, job["token"])
    assert r.status_code == 204 and r.content == b""
    got = kit.get_job(42)
    assert got["state"] == state and got["error"] == "OH NO"


# -- error statuses ----------------------------------------------------------------------------
# Where corral's status differs from Sourcegraph's, and why Sourcegraph's executor cannot tell:
# both are "error" to baseclient.go's Do. corral keeps a status that says whose fault it is (400 for
# the caller's, 409 for a lost attempt, which corral's own executor acts on) and its own message.
DIVERGENCES = {
    "Invalid worker hostname (dequeue)": (400, "a malformed request is the caller's fault"),
    "Invalid worker hostname (heartbeat)": (400, "as above"),
    "Invalid worker hostname (multi-queue heartbeat)": (400, "as above"),
    "Job IDs by queue contains name not in queue names": (400, "as above"),
    "Queue names missing": (400, "as above"),
}


@pytest.mark.parametrize("case", HANDLER["errors"], ids=lambda c: c["name"])
def test_errors_as_sourcegraphs_handler(kit: Kit, test_executor: Executor, case: dict[str, Any]) -> None:
    r = test_executor.post(case["path"], case["body"])
    if case["name"] == "Invalid queue name":
        # corral serves any well-formed queue name (queues are made by their first job; an executor
        # may wait on one before): nothing to dequeue. A malformed name is an error (below).
        assert r.status_code == 204 and r.content == b""
        return
    status, _why = DIVERGENCES.get(case["name"], (case["status"], ""))
    assert r.status_code == status, r.text
    assert reaction(r.status_code) == reaction(case["status"]) == "error"
    body = r.json()
    # Sourcegraph's message, and corral's clearer wording around it where it has one.
    sg = case["response"]["error"]
    assert body["error"] == sg or sg.split(" '")[0].split(" (")[0] in body["error"], (sg, body)


def test_job_route_errors(kit: Kit, deadbeef: Executor) -> None:
    """validateJobRequest (queuehandler.go) and the handler's unknown-job answers, replayed."""
    jobs(kit, {1: "test_queue", 2: "test_queue"})
    job, other = take(deadbeef, "test_queue"), take(deadbeef, "test_queue")
    path = "/.executors/queue/test_queue/addExecutionLogEntry"
    body = {**CLIENT["add_log_entry"]["body"], "jobId": 1}

    def call(headers: dict[str, str], b: dict[str, Any] = body) -> httpx.Response:
        return deadbeef.post(path, b, headers)

    good = deadbeef.job_headers(1, job["token"])
    cases: list[tuple[str, dict[str, str], int, int]] = [  # (what, headers, Sourcegraph's, corral's)
        ("no Authorization", {k: v for k, v in good.items() if k != "Authorization"}, 401, 401),
        ("an unknown job token", {**good, "Authorization": "Bearer nope"}, 401, 401),
        ("a wrong executor token", {**good, "Authorization": "token-executor nope"}, 403, 403),
        ("no job id header", {k: v for k, v in good.items() if k != JOB_ID_HEADER}, 400, 400),
        ("a job id header that is no number", {**good, JOB_ID_HEADER: "x"}, 400, 400),
        ("no executor name header", {**good, EXECUTOR_NAME_HEADER: ""}, 400, 400),
        ("another job's token", {**good, JOB_ID_HEADER: "2"}, 403, 403),
    ]
    for what, headers, sg, ours in cases:
        r = call(headers)
        assert r.status_code == ours, (what, r.status_code, r.text)
        assert reaction(ours) == reaction(sg) == "error"
        assert r.json()["error"], what
    # A token of the batches queue used on another queue's route: 403 (the token's queue differs).
    r = deadbeef.post("/.executors/queue/other/addExecutionLogEntry", body, good)
    assert r.status_code == 403
    # Bad JSON: wrapHandler's 400 ("Failed to unmarshal payload"); corral says what is wrong.
    r = deadbeef.http.post(path, content=b"{not json", headers=good)
    assert r.status_code == 400 and r.json()["error"].startswith("invalid request")
    # A job that is no longer processing (marked, or its attempt lost): Sourcegraph answers 500
    # {"error": "unknown job"} for log entries and 404 null for marks (its token is also deleted:
    # 401); corral 409 naming the job's state, on which corral's executor stops the job.
    assert (
        deadbeef.post(
            path.replace("addExecutionLogEntry", "markComplete"),
            {"executorName": "deadbeef", "jobId": 1},
            good,
        ).status_code
        == 204
    )
    for op in ("addExecutionLogEntry", "markComplete"):
        r = deadbeef.post(f"/.executors/queue/test_queue/{op}", body, good)
        assert r.status_code == 409 and "not processing" in r.json()["error"], (op, r.text)
        assert reaction(409) == reaction(500) == reaction(404)
    assert other["id"] == 2


# -- files -------------------------------------------------------------------------------------
def test_files_as_the_files_client_fetches_them(kit: Kit, test_executor: Executor) -> None:
    """A batches job naming a workspace file by bucket and key (Sourcegraph's route is
    /.executors/files/batch-changes/{spec}/{file}), fetched as apiclient/files/client.go does: HEAD
    (Exists: 200 is there, 404 is not) and GET (the bytes), with the job's token."""
    content = b"\x00\xffA\n"
    assert (
        kit.admin.put("/api/v1/files/batch-changes/spec-rand/file-rand", content=content).status_code == 201
    )
    assert kit.admin.put("/api/v1/files/batch-changes/spec-rand/gone", content=b"x").status_code == 201
    kit.submit(
        files={
            "data.bin": {"bucket": "batch-changes", "key": "spec-rand/file-rand"},
            "gone.txt": {"bucket": "batch-changes", "key": "spec-rand/gone"},
        }
    )
    job = take(test_executor, "batches", version="5.2.0")
    # v2VirtualMachineFile: no content, the bucket and key, modifiedAt always.
    assert job["files"]["data.bin"] == {
        "bucket": "batch-changes",
        "key": "spec-rand/file-rand",
        "modifiedAt": "0001-01-01T00:00:00Z",
    }
    kit.admin.delete("/api/v1/files/batch-changes/spec-rand/gone")
    headers = test_executor.job_headers(job["id"], job["token"])
    r = test_executor.http.head("/.executors/files/batch-changes/spec-rand/file-rand", headers=headers)
    assert reaction(r.status_code, head_of_file=True) == "answer"
    r = test_executor.http.get("/.executors/files/batch-changes/spec-rand/file-rand", headers=headers)
    assert r.status_code == 200 and r.content == content
    assert r.headers["content-type"] == "application/octet-stream"
    r = test_executor.http.head("/.executors/files/batch-changes/spec-rand/gone", headers=headers)
    assert reaction(r.status_code, head_of_file=True) == "absent"
    assert (
        test_executor.http.get("/.executors/files/batch-changes/spec-rand/gone", headers=headers).status_code
        == 404
    )


# -- git ---------------------------------------------------------------------------------------
def test_git_clone_as_clone_go_with_a_blob_filter(kit: Kit, test_executor: Executor, tmp_path: Path) -> None:
    """cmd/executor/internal/worker/workspace/clone.go for a sparse checkout: init, remote add, gc off,
    `-c protocol.version=2 fetch --progress --no-recurse-submodules --filter=blob:none origin <commit>`,
    sparse-checkout, `-c protocol.version=2 checkout --progress --force <commit>`, through a proxy
    that sets Authorization (the job token), X-Sourcegraph-Actor-UID: internal, X-Sourcegraph-Job-ID
    and X-Sourcegraph-Executor-Name (newReverseProxy). The filter is honoured: the blobs outside the
    sparse paths are never sent."""
    source = tmp_path / "source"
    commit = make_git_repo(source, {"keep/a.txt": "wanted\n", "skip/big.bin": "x" * 50_000 + "\n"})
    repo = "github.com/sourcegraph/sparse"
    assert kit.add_repo(repo, source).status_code == 201
    kit.submit(repositoryName=repo, commit=commit, sparseCheckout=["keep/*"])
    job = take(test_executor, "batches", version="5.2.0")
    assert job["sparseCheckout"] == ["keep/*"]
    skipped = git(source, "rev-parse", f"{commit}:skip/big.bin").stdout.strip()

    work = tmp_path / "workspace"
    work.mkdir()
    headers = {
        "Authorization": f"Bearer {job['token']}",
        "X-Sourcegraph-Actor-UID": "internal",
        JOB_ID_HEADER: str(job["id"]),
        EXECUTOR_NAME_HEADER: "test-executor",
    }
    git(work, "init", "--quiet")
    git(work, "remote", "add", "origin", f"{kit.url}/.executors/git/{repo}")
    git(work, "config", "--local", "gc.auto", "0")
    for k, v in headers.items():  # the proxy's headers, on every request (lazy fetches too)
        git(work, "config", "--local", "--add", "http.extraHeader", f"{k}: {v}")
    fetched = git(
        work,
        *("-c", "protocol.version=2", "fetch", "--progress", "--no-recurse-submodules"),
        *("--filter=blob:none", "origin", commit),
    )
    assert "filtering not recognized by server" not in fetched.stderr
    git(work, "config", "--local", "core.sparseCheckout", "1")
    git(work, "sparse-checkout", "set", "--no-cone", "--", "keep/*")
    git(work, "-c", "protocol.version=2", "checkout", "--progress", "--force", commit)
    assert (work / "keep" / "a.txt").read_text() == "wanted\n"
    assert not (work / "skip").exists()
    missing = git(work, "rev-list", "--objects", "--missing=print", commit).stdout.split()
    assert f"?{skipped}" in missing  # never sent: the partial clone worked
