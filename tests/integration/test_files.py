"""Files by bucket and key over real HTTP: the producers' file store (/api/v1/files) and the
executors' files API (/.executors/files, as Sourcegraph's frontend serves it), bounds, hostile keys,
and which files a job token may read."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from corral.protocol.producer import MAX_STORED_FILE_BYTES
from tests.serverkit import EXECUTOR, EXECUTOR_SECRET, Kit, job_headers

BLOB = b"\x00\xffA\n" * 3


def error_of(r: Any) -> str:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], r.text
    return str(body["error"])


def put(kit: Kit, bucket: str, key: str, content: bytes) -> Any:
    return kit.admin.put(f"/api/v1/files/{bucket}/{key}", content=content)


def submit_with_file(kit: Kit, bucket: str = "batch-changes", key: str = "spec-1/data.bin") -> dict[str, Any]:
    return kit.submit(files={"data.bin": {"bucket": bucket, "key": key}, "inline.txt": {"content": "x"}})


# -- the producers' file store ----------------------------------------------------------------
def test_put_get_list_delete(kit: Kit) -> None:
    r = put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["bucket"] == "batch-changes" and view["key"] == "spec-1/data.bin"
    assert view["size"] == len(BLOB) and view["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert view["createdAt"] and view["updatedAt"]
    r = kit.admin.get("/api/v1/files/batch-changes/spec-1/data.bin")
    assert r.status_code == 200 and r.content == BLOB
    assert r.headers["content-type"] == "application/octet-stream"
    # Replacing answers 200 and keeps the creation time.
    r = put(kit, "batch-changes", "spec-1/data.bin", b"new")
    assert r.status_code == 200 and r.json()["size"] == 3 and r.json()["createdAt"] == view["createdAt"]
    assert put(kit, "batch-changes", "spec-2/other", b"").status_code == 201  # an empty file is a file
    listed = kit.admin.get("/api/v1/files/batch-changes", params={"prefix": "spec-1/"}).json()
    assert [f["key"] for f in listed] == ["spec-1/data.bin"]
    assert len(kit.admin.get("/api/v1/files/batch-changes").json()) == 2
    assert kit.admin.delete("/api/v1/files/batch-changes/spec-1/data.bin").status_code == 204
    r = kit.admin.get("/api/v1/files/batch-changes/spec-1/data.bin")
    assert r.status_code == 404 and "does not exist" in error_of(r)
    assert kit.admin.delete("/api/v1/files/batch-changes/spec-1/data.bin").status_code == 404


def test_the_file_store_needs_the_admin_token(kit: Kit) -> None:
    for method in ("PUT", "GET", "DELETE"):
        r = kit.anon.request(method, "/api/v1/files/b/k", content=b"x" if method == "PUT" else None)
        assert r.status_code == 401, method
        r = kit.executor.request(method, "/api/v1/files/b/k", content=b"x" if method == "PUT" else None)
        assert r.status_code == 401, method  # the executor token is not a producer's
    assert kit.admin.get("/api/v1/files/b/k").status_code == 404  # nothing was stored


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        ("b", "a//x"),
        ("b", "a/"),
        ("b", "a\\x"),
        ("b", "a%00x"),
        ("b", "sp ace"),
        ("b", "x" * 1025),
        ("b", "s/" + "x" * 256),
        ("Upper", "k"),
        ("-b", "k"),
        ("b" * 64, "k"),
    ],
)
def test_hostile_keys_are_refused(kit: Kit, bucket: str, key: str) -> None:
    r = put(kit, bucket, key, b"x")
    assert r.status_code == 400, (r.status_code, r.text)
    assert "invalid file" in error_of(r) or "1-1024 characters" in error_of(r)
    assert stored_count(kit) == 0  # nothing was written under any name


def stored_count(kit: Kit) -> int:
    with kit.srv.app.state.corral.store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM files").scalar_one())


def test_traversal_in_the_url_is_refused_before_the_router(kit: Kit) -> None:
    """httpx would normalise "..": send the raw path, as a hostile client does."""
    r = kit.admin.put("/api/v1/files/b/a/%2E%2E/%2E%2E/x", content=b"x")
    assert r.status_code == 400 and "invalid file key" in error_of(r)
    assert stored_count(kit) == 0


def test_a_file_over_the_cap_is_413_naming_it(kit: Kit) -> None:
    r = put(kit, "b", "big", b"x" * (MAX_STORED_FILE_BYTES + 1))
    assert r.status_code == 413 and str(MAX_STORED_FILE_BYTES) in error_of(r)
    assert kit.admin.get("/api/v1/files/b/big").status_code == 404
    assert put(kit, "b", "fits", b"x" * 1024).status_code == 201


def test_the_store_as_a_whole_is_bounded(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.server.store.files as files_mod

    monkeypatch.setattr(files_mod, "MAX_STORE_BYTES", 10)
    monkeypatch.setattr(files_mod, "MAX_STORE_FILES", 2)
    assert put(kit, "b", "one", b"12345").status_code == 201
    r = put(kit, "b", "two", b"123456")
    assert r.status_code == 413 and "limit of 10 bytes" in error_of(r)
    assert put(kit, "b", "one", b"1234567890").status_code == 200  # replacing counts the difference
    assert put(kit, "b", "two", b"").status_code == 201
    r = put(kit, "b", "three", b"")
    assert r.status_code == 413 and "its limit is 2" in error_of(r)
    assert stored_count(kit) == 2


# -- jobs naming stored files -----------------------------------------------------------------
def test_a_job_names_a_stored_file(kit: Kit) -> None:
    assert put(kit, "batch-changes", "spec-1/data.bin", BLOB).status_code == 201
    submitted = submit_with_file(kit)
    assert submitted["spec"]["files"]["data.bin"] == {
        "bucket": "batch-changes",
        "key": "spec-1/data.bin",
        "modifiedAt": "0001-01-01T00:00:00Z",
    }
    job = kit.take()
    assert job["files"]["data.bin"] == {
        "bucket": "batch-changes",
        "key": "spec-1/data.bin",
        "modifiedAt": "0001-01-01T00:00:00Z",
    }
    assert base64.b64decode(job["files"]["inline.txt"]["content"]) == b"x"


@pytest.mark.parametrize(
    ("file", "expect"),
    [
        ({"bucket": "batch-changes", "key": "nope"}, "not in the file store: batch-changes/nope"),
        ({"bucket": "batch-changes"}, "both bucket and key"),
        ({"key": "k"}, "both bucket and key"),
        ({"bucket": "b", "key": "k", "content": "x"}, "not several"),
        ({"bucket": "b", "key": "../k"}, "invalid file key"),
        ({"bucket": "B", "key": "k"}, "invalid file bucket"),
    ],
)
def test_a_job_naming_a_missing_or_bad_file_is_refused(kit: Kit, file: dict[str, str], expect: str) -> None:
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs",
        json={"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}], "files": {"f": file}},
    )
    assert r.status_code == 400, r.text
    assert expect in error_of(r)
    assert kit.admin.get("/api/v1/jobs").json() == []


# -- the executors' files API -----------------------------------------------------------------
def test_a_job_token_reads_its_jobs_file(kit: Kit) -> None:
    put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    submit_with_file(kit)
    job = kit.take()
    url = "/.executors/files/batch-changes/spec-1/data.bin"
    r = kit.anon.head(url, headers=job_headers(job))
    assert r.status_code == 200 and r.content == b""
    r = kit.anon.get(url, headers=job_headers(job))
    assert r.status_code == 200 and r.content == BLOB
    assert r.headers["content-type"] == "application/octet-stream"
    # The executor token reads it too (Sourcegraph's job routes accept it).
    r = kit.anon.get(url, headers={"Authorization": f"token-executor {EXECUTOR_SECRET}"})
    assert r.status_code == 200 and r.content == BLOB


def test_a_missing_file_is_404_and_head_says_so_without_a_body(kit: Kit) -> None:
    """apiclient/files/client.go Exists: a 404 on HEAD is "does not exist"."""
    put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    submit_with_file(kit)
    job = kit.take()
    kit.admin.delete("/api/v1/files/batch-changes/spec-1/data.bin")
    url = "/.executors/files/batch-changes/spec-1/data.bin"
    r = kit.anon.head(url, headers=job_headers(job))
    assert r.status_code == 404 and r.content == b""
    r = kit.anon.get(url, headers=job_headers(job))
    assert r.status_code == 404 and "does not exist" in error_of(r)


def test_a_job_token_reads_no_other_file(kit: Kit) -> None:
    """A job token opens only the files its job names: another blob is 404, as if it did not exist."""
    put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    put(kit, "secrets", "other-team/key.pem", b"PRIVATE")
    submit_with_file(kit)
    job = kit.take()
    for url in ("/.executors/files/secrets/other-team/key.pem", "/.executors/files/batch-changes/spec-1/x"):
        r = kit.anon.get(url, headers=job_headers(job))
        assert r.status_code == 404 and b"PRIVATE" not in r.content, url
        assert kit.anon.head(url, headers=job_headers(job)).status_code == 404
    # With the executor token the other blob is there (it is not a job's).
    r = kit.anon.head(
        "/.executors/files/secrets/other-team/key.pem",
        headers={"Authorization": f"token-executor {EXECUTOR_SECRET}"},
    )
    assert r.status_code == 200


def test_files_api_auth(kit: Kit) -> None:
    put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    submit_with_file(kit)
    submit_with_file(kit)
    job, other = kit.take(), kit.take()
    url = "/.executors/files/batch-changes/spec-1/data.bin"
    assert kit.anon.get(url).status_code == 401
    assert kit.anon.get(url, headers={**job_headers(job), "Authorization": "Bearer nope"}).status_code == 401
    assert kit.anon.get(url, headers={**job_headers(job), "X-Sourcegraph-Job-ID": "x"}).status_code == 400
    r = kit.anon.get(url, headers={**job_headers(job), "X-Sourcegraph-Job-ID": str(other["id"])})
    assert r.status_code == 403
    r = kit.anon.get(url, headers={"Authorization": f"token-executor {EXECUTOR_SECRET}x"})
    assert r.status_code == 403  # validateJobRequest: a wrong executor token on a job route
    # Once the job is marked, its token opens nothing.
    assert kit.job_call("batches", "markComplete", job, EXECUTOR).status_code == 204
    r = kit.anon.get(url, headers=job_headers(job))
    assert r.status_code == 401 and "attempt has ended" in error_of(r)
    assert kit.anon.get(url, headers=job_headers(other)).status_code == 200


def test_a_bad_key_on_the_files_api(kit: Kit) -> None:
    put(kit, "batch-changes", "spec-1/data.bin", BLOB)
    submit_with_file(kit)
    job = kit.take()
    url = "/.executors/files/batch-changes/spec-1/%2E%2E/spec-1/data.bin"
    r = kit.anon.get(url, headers=job_headers(job))
    assert r.status_code == 400 and "invalid file key" in error_of(r)
    assert kit.anon.head(url, headers=job_headers(job)).status_code == 404


def test_upload_bodies_are_bounded_before_auth_reads_them(make_kit: Callable[..., Kit]) -> None:
    """The operator's max_body_bytes bounds file puts too; the 413 names the bound."""
    kit = make_kit(max_body_bytes=4096)
    r = put(kit, "b", "k", b"x" * 5000)
    assert r.status_code == 413 and "4096" in error_of(r) and "file" in error_of(r)
