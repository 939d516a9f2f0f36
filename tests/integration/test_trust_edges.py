"""Trust edges of the server (issue 12 item 6), over real HTTP: what an executor may do to jobs it does
not hold, what a job token opens and for how long, forged tokens, and result poisoning.

Every refusal is checked twice: the status, and that the store is unchanged afterwards (the job's
view, its log, its result). The attacks and the guard each one meets:

| attack                                                      | answer | guard                         |
|-------------------------------------------------------------|--------|-------------------------------|
| executor token + a made-up executorName, a job A holds      | 409    | store Jobs.fence (name)       |
| B's job token, naming A's job in the body or header         | 403    | auth / routers.queue._job_call|
| heartbeat / cancelWatch naming A's job ids                  | none known, lease not renewed | Jobs.renew |
| job 1's token on job 2's repository, file, log, result      | 403/404| git, files, _job_call         |
| a token after its attempt ended (each way one ends)         | 401/409| auth.live_job, fence          |
| a token of attempt 1 after a requeue                        | 401/409| auth.live_job, fence (attempt)|
| forged tokens (random, the stored hash, empty)              | 401    | auth (sha256 lookup)          |
| a result over a bound, undeclared files, bad base64         | 413/400| server.uploads.check_result   |
| a result for another job or after the job ended             | 403/409| _job_call, fence              |
| a corral executor two minor versions from the server        | 400/exit| versions.skew_problem        |
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import __version__
from corral.errors import ServerError, VersionSkew
from corral.executor.client import QueueClient
from corral.executor.settings import ExecutorSettings
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from corral.protocol.versions import SKEW_RULE, parse_semver
from corral.server.store import SqlStore
from corral.server.uploads import MAX_EXIT_CODES, MAX_RESULT_DIFF, MAX_RESULT_FILE, MAX_RESULT_FILES_TOTAL
from tests.serverkit import EXECUTOR_SECRET, Kit, job_headers, make_git_repo

A, B = "exec-a-5d1c", "exec-b-made-up"  # B: any holder of the executor secret may call itself anything
REPO_1, REPO_2 = "github.com/acme/one", "github.com/acme/two"
MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], r.text
    return str(body["error"])


def snapshot(kit: Kit, job_id: int) -> tuple[Any, ...]:
    """All a write could change: the job's view, its log, its result (or the 404 saying none)."""
    result = kit.admin.get(f"/api/v1/jobs/{job_id}/result")
    logs = kit.admin.get(f"/api/v1/jobs/{job_id}/logs").json()
    return kit.get_job(job_id), logs, result.status_code, result.content


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Every job-scoped write, with a body that would succeed for the job's holder.
WRITES: list[tuple[str, dict[str, Any]]] = [
    ("addExecutionLogEntry", {"key": "evil", "command": ["x"], "out": "planted\n"}),
    ("updateExecutionLogEntry", {"entryId": 1, "key": "evil", "command": [], "out": "planted\n"}),
    ("appendExecutionLogEntry", {"entryId": 1, "offset": 3, "data": "planted"}),
    ("uploadResult", {"exitCodes": [0], "diff": "planted\n", "files": {"out.txt": b64(b"planted")}}),
    ("markComplete", {}),
    ("markErrored", {"errorMessage": "planted"}),
    ("markFailed", {"errorMessage": "planted"}),
]
OPS = [op for op, _ in WRITES]


def write(
    kit: Kit, op: str, job: dict[str, Any], executor: str, headers: dict[str, str] | None
) -> httpx.Response:
    body = dict(WRITES[OPS.index(op)][1])
    return kit.job_call("batches", op, job, executor, headers=headers, **body)


def executor_headers(kit: Kit) -> dict[str, str]:
    return dict(kit.executor.headers)


@pytest.fixture
def world(kit: Kit, tmp_path: Path) -> dict[str, Any]:
    """Two repositories, two stored files, job 1 (repo one, file one) held by A with a log entry,
    job 2 (repo two, file two) held by B."""
    c1 = make_git_repo(tmp_path / "one", {"README.md": "one\n"})
    c2 = make_git_repo(tmp_path / "two", {"SECRET.md": "two\n"})
    assert kit.add_repo(REPO_1, tmp_path / "one").status_code == 201
    assert kit.add_repo(REPO_2, tmp_path / "two").status_code == 201
    assert kit.admin.put("/api/v1/files/b/one", content=b"file one").status_code == 201
    assert kit.admin.put("/api/v1/files/b/two", content=b"file two").status_code == 201
    kit.submit(
        repositoryName=REPO_1, commit=c1, files={"f": {"bucket": "b", "key": "one"}}, outputs=["out.txt"]
    )
    kit.submit(
        repositoryName=REPO_2, commit=c2, files={"f": {"bucket": "b", "key": "two"}}, outputs=["out.txt"]
    )
    one, two = kit.take(executor=A), kit.take(executor=B)
    assert (one["id"], two["id"]) == (1, 2)
    entry = kit.job_call("batches", "addExecutionLogEntry", one, A, key="k", command=[]).json()
    assert entry == 1
    r = kit.job_call("batches", "appendExecutionLogEntry", one, A, entryId=1, offset=0, data="abc")
    assert r.json() == {"offset": 3}
    return {"one": one, "two": two}


# -- another executor's jobs ------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_a_made_up_executor_name_cannot_write_for_a_job_another_executor_holds(
    kit: Kit, world: dict[str, Any], op: str
) -> None:
    """B holds the shared secret (as every executor does) and calls itself whatever it likes: it can
    dequeue, but every write about A's job is refused, with or without corral's attempt field."""
    one = world["one"]
    before = snapshot(kit, one["id"])
    r = write(kit, op, one, B, executor_headers(kit))
    assert r.status_code == 409 and "not processing for executor" in error_of(r), (op, r.text)
    r = kit.job_call(
        "batches", op, one, B, headers=executor_headers(kit), attempt=1, **WRITES[OPS.index(op)][1]
    )
    assert r.status_code == 409, (op, r.text)
    # B's own job token, pointed at A's job (body only, then header and body).
    r = write(kit, op, one, B, {**job_headers(world["two"], B)})
    assert r.status_code == 403 and "another job" in error_of(r), (op, r.text)
    assert snapshot(kit, one["id"]) == before
    # The guard is not a blanket refusal: A's own call goes through.
    r = write(kit, op, one, A, job_headers(one, A))
    assert r.status_code in (200, 204), (op, r.text)


def test_a_made_up_executor_name_can_dequeue_but_claims_no_other_lease(
    kit: Kit, world: dict[str, Any]
) -> None:
    one = world["one"]
    kit.submit()
    assert kit.take(executor="anyone-at-all")["id"] == 3  # the protocol: any holder of the secret dequeues
    store = kit.srv.store
    beat = store.get_job(one["id"]).last_heartbeat_at
    time.sleep(0.02)
    hb = kit.heartbeat("batches", [one["id"]], executor=B)
    assert hb["knownIds"] is None and hb["cancelIds"] is None
    assert store.get_job(one["id"]).last_heartbeat_at == beat  # A's lease was not renewed by B
    r = kit.executor.post(
        "/.executors/queue/heartbeat",
        json={
            "executorName": B,
            "queueNames": ["batches"],
            "jobIdsByQueue": [{"queueName": "batches", "jobIds": ["1"]}],
        },
    )
    assert r.status_code == 200 and r.json()["knownIds"] is None
    assert store.get_job(one["id"]).last_heartbeat_at == beat
    # A cancel of A's job is A's to hear, not B's.
    assert kit.admin.post(f"/api/v1/jobs/{one['id']}/cancel").status_code == 200
    hb = kit.heartbeat("batches", [one["id"]], executor=B)
    assert hb["cancelIds"] is None
    r = kit.executor.post(
        "/.executors/queue/cancelWatch", json={"executorName": B, "jobIds": [1], "waitSeconds": 0}
    )
    assert r.status_code == 200 and r.json()["cancelIds"] == []
    assert kit.heartbeat("batches", [one["id"]], executor=A)["cancelIds"] == ["1"]
    assert store.get_job(one["id"]).last_heartbeat_at != beat  # ... and A's own heartbeat renews it


# -- what a job token opens -------------------------------------------------------------------
def git_refs(kit: Kit, repo: str, headers: dict[str, str]) -> httpx.Response:
    return kit.anon.get(
        f"/.executors/git/{repo}/info/refs", params={"service": "git-upload-pack"}, headers=headers
    )


def get_file(kit: Kit, key: str, headers: dict[str, str], method: str = "GET") -> httpx.Response:
    return kit.anon.request(method, f"/.executors/files/b/{key}", headers=headers)


def test_a_job_token_opens_only_its_own_jobs_repository_files_log_and_result(
    kit: Kit, world: dict[str, Any]
) -> None:
    one, two = world["one"], world["two"]
    h1 = job_headers(one, A)
    assert git_refs(kit, REPO_1, h1).status_code == 200
    assert get_file(kit, "one", h1).content == b"file one"
    before = snapshot(kit, two["id"])
    r = git_refs(kit, REPO_2, h1)
    assert r.status_code == 403 and REPO_2 in error_of(r)
    # Job 2's file: as if it did not exist (404), GET and HEAD.
    assert get_file(kit, "two", h1).status_code == 404
    assert get_file(kit, "two", h1, "HEAD").status_code == 404
    # Job 1's token with job 2's id in the header (the header must match the token).
    for key, expect in (("two", 403), ("one", 403)):
        assert get_file(kit, key, {**h1, JOB_ID_HEADER: "2"}).status_code == expect
    assert git_refs(kit, REPO_2, {**h1, JOB_ID_HEADER: "2"}).status_code == 403
    # Job 1's token on every write of job 2 (job 2's id in the body, or in the body and header).
    for op in OPS:
        for headers in (h1, {**h1, JOB_ID_HEADER: "2", EXECUTOR_NAME_HEADER: B}):
            r = write(kit, op, two, B, headers)
            assert r.status_code == 403, (op, r.text)
    assert snapshot(kit, two["id"]) == before


# -- when a job token stops working -----------------------------------------------------------
def _end_by_mark(op: str) -> Callable[[Kit, dict[str, Any]], None]:
    def end(kit: Kit, job: dict[str, Any]) -> None:
        assert kit.job_call("batches", op, job, A, errorMessage="end").status_code == 204

    return end


def _end_by_cancel(kit: Kit, job: dict[str, Any]) -> None:
    assert kit.admin.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    assert kit.job_call("batches", "markFailed", job, A, errorMessage="canceled").status_code == 204
    assert kit.get_job(job["id"])["state"] == "canceled"


ENDS: dict[str, Callable[[Kit, dict[str, Any]], None]] = {
    "completed": _end_by_mark("markComplete"),
    "failed": _end_by_mark("markFailed"),
    "errored": _end_by_mark("markErrored"),
    "canceled": _end_by_cancel,
}


def assert_dead(kit: Kit, job: dict[str, Any], executor: str = A) -> None:
    """The token opens nothing any more: git and files 401, every write 409, nothing changes."""
    h = job_headers(job, executor)
    before = snapshot(kit, job["id"])
    r = git_refs(kit, REPO_1, h)
    assert r.status_code == 401 and "no longer valid" in error_of(r)
    r = get_file(kit, "one", h)
    assert r.status_code == 401 and "no longer valid" in error_of(r)
    assert get_file(kit, "one", h, "HEAD").status_code == 401
    for op in OPS:
        r = write(kit, op, job, executor, h)
        assert r.status_code == 409, (op, r.text)
    assert snapshot(kit, job["id"]) == before


@pytest.mark.parametrize("end", list(ENDS))
def test_a_job_token_dies_when_its_job_leaves_processing(kit: Kit, world: dict[str, Any], end: str) -> None:
    one = world["one"]
    ENDS[end](kit, one)
    assert_dead(kit, one)


def test_a_requeued_jobs_new_attempt_has_a_new_token_and_the_old_one_is_dead(
    make_kit: Callable[..., Kit], tmp_path: Path
) -> None:
    clock = FakeClock()
    kit = make_kit(SqlStore(f"sqlite:///{tmp_path / 'requeue.db'}", clock=clock), stalled_after=15.0)
    c1 = make_git_repo(tmp_path / "one", {"README.md": "one\n"})
    assert kit.add_repo(REPO_1, tmp_path / "one").status_code == 201
    assert kit.admin.put("/api/v1/files/b/one", content=b"file one").status_code == 201
    kit.submit(
        repositoryName=REPO_1, commit=c1, files={"f": {"bucket": "b", "key": "one"}}, outputs=["out.txt"]
    )
    old = kit.take(executor=A)
    assert kit.job_call("batches", "addExecutionLogEntry", old, A, key="k", command=[]).json() == 1
    assert git_refs(kit, REPO_1, job_headers(old, A)).status_code == 200
    clock.t += 60  # A went silent: the resetter requeues the job
    kit.wait_state(old["id"], "queued")
    assert_dead(kit, old)  # while it waits
    new = kit.take(executor=A)  # the same executor takes it again: attempt 2, its own token
    assert new["attempt"] == 2 and new["token"] != old["token"]
    assert_dead(kit, old)  # while attempt 2 runs, on the same executor
    h = job_headers(new, A)
    assert git_refs(kit, REPO_1, h).status_code == 200 and get_file(kit, "one", h).content == b"file one"
    assert kit.job_call("batches", "markComplete", new, A).status_code == 204
    assert_dead(kit, new)


# -- forged tokens ----------------------------------------------------------------------------
def test_forged_job_tokens_are_refused(kit: Kit, world: dict[str, Any]) -> None:
    one = world["one"]
    before = snapshot(kit, one["id"])
    forged = {
        "random": secrets.token_urlsafe(32),
        "one character off": one["token"][:-1] + ("A" if one["token"][-1] != "A" else "B"),
        "the stored hash": hashlib.sha256(one["token"].encode()).hexdigest(),
        "a prefix": one["token"][:20],
        "followed by another word": one["token"] + " x",
    }
    for what, token in forged.items():
        h = {**job_headers(one, A), "Authorization": f"Bearer {token}"}
        assert git_refs(kit, REPO_1, h).status_code == 401, what
        assert get_file(kit, "one", h).status_code == 401, what
        for op in OPS:
            assert write(kit, op, one, A, h).status_code == 401, (what, op)
    for header in ("Bearer", "bearer " + one["token"], "Basic " + one["token"], "token-executor"):
        h = {**job_headers(one, A), "Authorization": header}
        assert write(kit, "markComplete", one, A, h).status_code in (401, 403), header
        assert git_refs(kit, REPO_1, h).status_code in (401, 403), header
    assert snapshot(kit, one["id"]) == before


# -- result poisoning -------------------------------------------------------------------------
def upload(kit: Kit, job: dict[str, Any], **body: Any) -> httpx.Response:
    return kit.job_call("batches", "uploadResult", job, A, **{"exitCodes": [0], **body})


@pytest.mark.parametrize(
    ("what", "body", "status", "words"),
    [
        ("a diff over the bound", {"diff": "+" + "x" * MAX_RESULT_DIFF}, 413, str(MAX_RESULT_DIFF)),
        (
            "a file over the bound",
            {"files": {"out.txt": b64(b"x" * (MAX_RESULT_FILE + 1))}},
            413,
            str(MAX_RESULT_FILE),
        ),
        ("an undeclared file", {"files": {"../../etc/cron.d/x": b64(b"planted")}}, 400, "did not declare"),
        (
            "a file beside the declared one",
            {"files": {"out.txt": b64(b"ok"), "extra": b64(b"x")}},
            400,
            "did not declare",
        ),
        ("content that is not base64", {"files": {"out.txt": "not base64!"}}, 400, "not base64"),
        ("too many exit codes", {"exitCodes": [0] * (MAX_EXIT_CODES + 1)}, 413, str(MAX_EXIT_CODES)),
    ],
)
def test_a_poisoned_result_is_refused_and_nothing_is_stored(
    kit: Kit, world: dict[str, Any], what: str, body: dict[str, Any], status: int, words: str
) -> None:
    one = world["one"]
    before = snapshot(kit, one["id"])
    r = upload(kit, one, **body)
    assert r.status_code == status and words in error_of(r), (what, r.status_code, r.text[:300])
    assert snapshot(kit, one["id"]) == before
    assert kit.admin.get(f"/api/v1/jobs/{one['id']}/result").status_code == 404


def test_result_files_are_bounded_together(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    kit.submit(outputs=["a", "b"])
    job = kit.take(executor=A)
    half = b"x" * (MAX_RESULT_FILES_TOTAL // 2 + 1)
    r = upload(kit, job, files={"a": b64(half), "b": b64(half)})
    assert r.status_code == 413 and str(MAX_RESULT_FILES_TOTAL) in error_of(r)
    assert kit.admin.get(f"/api/v1/jobs/{job['id']}/result").status_code == 404
    r = upload(kit, job, files={"a": b64(half)}, diff="d" * (MAX_RESULT_DIFF - 1))  # at the bounds: stored
    assert r.status_code == 204, r.text[:300]
    assert kit.admin.get(f"/api/v1/jobs/{job['id']}/result").json()["files"] == {"a": b64(half)}


def test_a_result_for_another_job_or_after_the_end_is_refused(kit: Kit, world: dict[str, Any]) -> None:
    one, two = world["one"], world["two"]
    good = {"files": {"out.txt": b64(b"ok")}}
    before = snapshot(kit, two["id"])
    r = kit.job_call("batches", "uploadResult", two, A, headers=job_headers(one, A), exitCodes=[0], **good)
    assert r.status_code == 403
    r = kit.job_call("batches", "uploadResult", two, B, headers=executor_headers(kit), exitCodes=[0], **good)
    assert r.status_code == 204  # B's own, with the executor token: fine (the control)
    assert kit.job_call("batches", "markComplete", one, A).status_code == 204
    ended = snapshot(kit, one["id"])
    r = upload(kit, one, **good)
    assert r.status_code == 409 and "not processing" in error_of(r)
    r = kit.job_call("batches", "uploadResult", one, A, headers=executor_headers(kit), exitCodes=[0], **good)
    assert r.status_code == 409
    assert snapshot(kit, one["id"]) == ended
    assert kit.admin.get(f"/api/v1/jobs/{one['id']}/result").status_code == 404
    assert snapshot(kit, two["id"])[3] != before[3]  # B's upload was stored (the control)


# -- version skew -----------------------------------------------------------------------------
SKEWED = "0.3.0"  # two minor versions from corral's own 0.1.0


@pytest.fixture
def skewed_kit(make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Kit]:
    """A real server built as corral SKEWED (its dequeue's rule and its X-Corral-Version)."""
    import corral.server.app
    import corral.server.routers.queue

    assert parse_semver(__version__).minor + 2 == parse_semver(SKEWED).minor
    monkeypatch.setattr(corral.server.routers.queue, "__version__", SKEWED)
    monkeypatch.setattr(corral.server.app, "__version__", SKEWED)
    return make_kit


def client_for(kit: Kit, tmp_path: Path) -> QueueClient:
    settings = ExecutorSettings(
        frontend_url=kit.url,
        frontend_password=EXECUTOR_SECRET,
        queues=["batches"],
        name=A,
        workspace_root=tmp_path,
    )
    return QueueClient(settings, retry_for=0)


def test_the_server_refuses_a_skewed_corral_executor_naming_both_versions_and_the_rule(
    skewed_kit: Callable[..., Kit],
) -> None:
    kit = skewed_kit()
    kit.submit()
    r = kit.dequeue(version=__version__)  # corral's User-Agent: corral's rule
    assert r.status_code == 400
    msg = error_of(r)
    assert __version__ in msg and SKEWED in msg and SKEW_RULE in msg and "upgrade the executor" in msg
    assert kit.get_job(1)["state"] == "queued"
    # One minor version apart is fine.
    assert kit.dequeue(version="0.2.0").status_code == 200
    # A Sourcegraph executor (its own User-Agent) keeps Sourcegraph's rules: no skew rule.
    kit.submit()
    r = kit.anon.post(
        "/.executors/queue/batches/dequeue",
        json={"executorName": "sg", "version": "5.2.0"},
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}", "User-Agent": "Go-http-client/1.1"},
    )
    assert r.status_code == 200 and r.json()["version"] == 2


@pytest.mark.parametrize("extensions", [True, False])
async def test_corral_executor_refuses_a_skewed_server_at_start_up(
    skewed_kit: Callable[..., Kit], tmp_path: Path, extensions: bool
) -> None:
    """The start-up ping (a heartbeat) tells the executor the server's version, with corral's
    extensions on or off (off, the executor sends the development version, which the server's own
    rule lets through: the executor's check is then the only one)."""
    kit = skewed_kit(extensions=extensions)
    kit.submit()
    client = client_for(kit, tmp_path)
    try:
        with pytest.raises(VersionSkew) as err:
            await client.heartbeat([], {})
        assert client.server_version == SKEWED
        msg = err.value.message
        assert __version__ in msg and SKEWED in msg and SKEW_RULE in msg and "upgrade the executor" in msg
        with pytest.raises((VersionSkew, ServerError)) as err2:  # the server's 400, or the executor's own
            await client.dequeue()
        assert SKEWED in str(err2.value) and __version__ in str(err2.value)
    finally:
        await client.aclose()
    if extensions:
        assert kit.get_job(1)["state"] == "queued"  # refused by the server before it was taken


async def test_corral_executor_works_with_a_server_of_its_version(kit: Kit, tmp_path: Path) -> None:
    kit.submit()
    client = client_for(kit, tmp_path)
    try:
        await client.heartbeat([], {})
        assert client.server_version == __version__
        job = await client.dequeue()
    finally:
        await client.aclose()
    assert job is not None and job.id == 1
