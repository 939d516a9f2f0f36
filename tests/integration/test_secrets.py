"""Executor secrets over real HTTP: the API (/api/v1/secrets), encryption at rest (the raw rows),
associated data, key rotation, namespace resolution, the hand-off at dequeue (step env,
redactedValues, DOCKER_AUTH_CONFIG -> dockerAuthConfig), the access log, and bounds. SQLite and
PostgreSQL (tests/postgreskit.py: fails in CI without it, skips elsewhere)."""

from __future__ import annotations

import base64
import json
import logging
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from corral.errors import ConfigError
from corral.protocol.secrets import MAX_SECRET_VALUE_BYTES
from corral.server.app import create_app
from corral.server.secretbox import KEY_ENV, KEY_FILE, new_key
from corral.server.store.tables import secrets as secrets_table
from tests.postgreskit import fresh_database_url
from tests.serverkit import SIMPLE_STEPS, Kit, serve, settings_for

VALUE = "s3cr3t-Value/+=42"
OTHER = "0ther-val:ue"


def forms(value: str) -> list[str]:
    """The value and the encodings a careless server might leak it in."""
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        raw.hex(),
        json.dumps(value)[1:-1],
    ]


def assert_absent(text: str, *values: str) -> None:
    for v in values:
        for f in forms(v):
            assert f not in text, f"{f!r} (a form of a secret) in {text[:500]!r}"


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text
    return str(body["error"])


def add(kit: Kit, name: str, value: str, namespace: str | None = None) -> dict[str, Any]:
    r = kit.admin.post("/api/v1/secrets", json={"name": name, "value": value, "namespace": namespace})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def env_of(job: dict[str, Any]) -> list[list[str]]:
    return [s.get("env") or [] for s in [*(job.get("dockerSteps") or []), *(job.get("cliSteps") or [])]]


@pytest.fixture(params=["sqlite", "postgres"])
def dbkit(request: pytest.FixtureRequest, make_kit: Callable[..., Kit]) -> Kit:
    if request.param == "postgres":
        kit = make_kit(database_url=fresh_database_url())
        assert kit.srv.store.engine.dialect.name == "postgresql"
        return kit
    return make_kit()


# -- the API ----------------------------------------------------------------------------------
def test_create_list_delete_and_no_read_shows_a_value(dbkit: Kit) -> None:
    kit = dbkit
    seen: list[str] = []
    r = kit.admin.post("/api/v1/secrets", json={"name": "TOKEN", "value": VALUE, "namespace": None})
    assert r.status_code == 201, r.text
    seen.append(r.text)
    g = r.json()
    assert set(g) == {"id", "name", "namespace", "createdAt", "updatedAt"}
    assert g["name"] == "TOKEN" and g["namespace"] is None
    u = add(kit, "TOKEN", OTHER, "user:alice")
    assert u["namespace"] == "user:alice" and u["id"] != g["id"]
    # The same name twice in one scope is refused, naming the way to change it.
    r = kit.admin.post("/api/v1/secrets", json={"name": "TOKEN", "value": "x", "namespace": "user:alice"})
    assert r.status_code == 409 and "already exists" in error_of(r)
    seen.append(r.text)
    listed = kit.admin.get("/api/v1/secrets")
    seen.append(listed.text)
    assert [(s["name"], s["namespace"]) for s in listed.json()] == [("TOKEN", None), ("TOKEN", "user:alice")]
    assert all(set(s) == {"id", "name", "namespace", "createdAt", "updatedAt"} for s in listed.json())
    only = kit.admin.get("/api/v1/secrets", params={"namespace": "user:alice"}).json()
    assert [s["id"] for s in only] == [u["id"]]
    assert [s["id"] for s in kit.admin.get("/api/v1/secrets", params={"scope": "global"}).json()] == [g["id"]]
    # A job naming it: its views show the name, never the value.
    job = kit.submit(secrets=["TOKEN"], namespace="user:alice")
    assert job["spec"]["secrets"] == ["TOKEN"]
    seen.append(kit.admin.get(f"/api/v1/jobs/{job['id']}").text)
    seen.append(kit.admin.get("/api/v1/jobs").text)
    took = kit.take()
    seen.append(kit.admin.get(f"/api/v1/jobs/{job['id']}").text)
    seen.append(kit.admin.get(f"/api/v1/secrets/{u['id']}/accesses").text)
    r = kit.admin.put(f"/api/v1/secrets/{g['id']}", json={"value": "n3w-" + VALUE})
    assert r.status_code == 200 and r.json()["updatedAt"] >= g["updatedAt"]
    seen.append(r.text)
    seen.append(kit.admin.get("/openapi.json").text)
    for text in seen:
        assert_absent(text, VALUE, OTHER, "n3w-" + VALUE)
    assert f"TOKEN={OTHER}" in env_of(took)[0]  # the executor got it (namespace over global)
    assert kit.admin.delete(f"/api/v1/secrets/{u['id']}").status_code == 204
    assert kit.admin.delete(f"/api/v1/secrets/{u['id']}").status_code == 404
    assert [s["id"] for s in kit.admin.get("/api/v1/secrets").json()] == [g["id"]]
    # The access log outlives the secret.
    assert len(kit.admin.get(f"/api/v1/secrets/{u['id']}/accesses").json()) == 1


def test_the_secrets_api_needs_the_admin_token(kit: Kit) -> None:
    body = {"name": "A", "value": "v", "namespace": None}
    for client in (kit.anon, kit.executor):
        assert client.post("/api/v1/secrets", json=body).status_code == 401
        assert client.get("/api/v1/secrets").status_code == 401
        assert client.delete("/api/v1/secrets/1").status_code == 401
        assert client.post("/api/v1/secrets/reencrypt").status_code == 401
    assert kit.admin.get("/api/v1/secrets").json() == []
    assert kit.admin.get("/api/v1/secrets", params={"scope": "bogus"}).status_code == 400
    r = kit.admin.get("/api/v1/secrets", params={"namespace": "team"})
    assert r.status_code == 400 and "invalid namespace" in error_of(r)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "1ABC", "value": "v"}, "invalid secret name"),
        ({"name": "A-B", "value": "v"}, "invalid secret name"),
        ({"name": "A" * 129, "value": "v"}, "invalid secret name"),
        ({"name": "ÄB", "value": "v"}, "invalid secret name"),
        ({"name": "A", "value": ""}, "empty"),
        ({"name": "A", "value": "a\x00b"}, "NUL"),
        ({"name": "A", "value": "x" * (MAX_SECRET_VALUE_BYTES + 1)}, f"limit of {MAX_SECRET_VALUE_BYTES}"),
        ({"name": "A", "value": "v", "namespace": "team"}, "invalid namespace"),
        ({"name": "A", "value": "v", "namespace": "user:"}, "invalid namespace"),
        ({"name": "A", "value": "v", "namespace": "user:a/b"}, "invalid namespace"),
        ({"name": "A", "value": "v", "extra": 1}, "extra"),
        ({"name": "DOCKER_AUTH_CONFIG", "value": "not json"}, "not JSON"),
        ({"name": "DOCKER_AUTH_CONFIG", "value": '{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}'}, "base64"),
    ],
)
def test_bad_secrets_are_refused(kit: Kit, body: dict[str, Any], words: str) -> None:
    r = kit.admin.post("/api/v1/secrets", json=body)
    assert r.status_code == 400, r.text
    assert words in error_of(r)
    assert_absent(r.text, "bm9jb2xvbg==")  # a refused value is never echoed
    assert kit.admin.get("/api/v1/secrets").json() == []


# -- at rest ----------------------------------------------------------------------------------
def raw_rows(kit: Kit) -> list[Any]:
    with kit.srv.store.engine.connect() as conn:
        return list(conn.execute(select(secrets_table)))


def test_the_database_holds_ciphertext_only(dbkit: Kit) -> None:
    add(dbkit, "TOKEN", VALUE)
    add(dbkit, "TOKEN2", VALUE, "org:acme")
    rows = raw_rows(dbkit)
    assert len(rows) == 2
    for row in rows:
        blob = bytes(row.sealed)
        for f in forms(VALUE):
            assert f.encode() not in blob
        assert len(blob) == 1 + 12 + len(VALUE.encode()) + 16  # format, nonce, ciphertext, tag
        assert len(row.key_id) == 16 and VALUE not in str(tuple(row))
    assert bytes(rows[0].sealed)[13:] != bytes(rows[1].sealed)[13:]  # a fresh nonce each time
    if dbkit.srv.store.engine.dialect.name == "sqlite":
        db = dbkit.srv.settings.data_dir / "corral.db"
        dbkit.srv.store.engine.dispose()
        for path in db.parent.glob("corral.db*"):
            assert VALUE.encode() not in path.read_bytes(), path


def test_a_ciphertext_moved_to_another_row_does_not_open(dbkit: Kit) -> None:
    """Associated data binds a value to its row: copy A's ciphertext into B, and B fails to open."""
    a = add(dbkit, "ALPHA", VALUE)
    b = add(dbkit, "BETA", OTHER)
    job = dbkit.submit(secrets=["BETA"])
    with dbkit.srv.store.engine.begin() as conn:
        row = conn.execute(select(secrets_table).where(secrets_table.c.id == a["id"])).one()
        conn.execute(
            update(secrets_table)
            .where(secrets_table.c.id == b["id"])
            .values(sealed=row.sealed, key_id=row.key_id)
        )
    r = dbkit.dequeue()
    assert r.status_code == 204, r.text  # no job: the attempt is errored (retried later), not run
    failed = dbkit.wait_state(job["id"], "errored")
    assert f"secret BETA (global, id {b['id']}) does not decrypt" in failed["error"]
    assert_absent(json.dumps(failed), VALUE, OTHER)
    assert dbkit.admin.get(f"/api/v1/secrets/{b['id']}/accesses").json() == []  # nothing handed out
    r = dbkit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, "secrets": ["BETA"]})
    assert r.status_code == 400 and "does not decrypt" in error_of(r)  # refused at submit too
    assert_absent(r.text, VALUE, OTHER)


def test_the_key_file_is_made_once_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    data = tmp_path / "d"
    with serve(settings_for(data)) as srv:
        kit = Kit(srv)
        add(kit, "TOKEN", VALUE)
        kit.close()
    key_file = data / KEY_FILE
    st = key_file.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    key = key_file.read_text()
    assert len(base64.b64decode(key.strip(), validate=True)) == 32
    assert [p.name for p in data.iterdir() if p.name.startswith(".secrets-key")] == []  # no temp file left
    with serve(settings_for(data)) as srv:  # the same key again: the secret still opens
        kit = Kit(srv)
        kit.submit(secrets=["TOKEN"])
        assert f"TOKEN={VALUE}" in env_of(kit.take())[0]
        kit.close()
    assert key_file.read_text() == key


def test_a_symlinked_key_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text(new_key())
    (data / KEY_FILE).symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open the secrets key file"):
        create_app(settings_for(data))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not-base64!", "not base64"),
        (base64.b64encode(b"short").decode(), "5 bytes, not 32"),
        (",", "is empty"),
    ],
)
def test_a_bad_key_stops_the_server_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError, match=words) as info:
        create_app(settings_for(tmp_path / "d"))
    assert value not in str(info.value) or value == ","


# -- rotation ---------------------------------------------------------------------------------
def test_rotation_reencrypts_and_the_old_key_can_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = new_key(), new_key()
    data = tmp_path / "d"
    monkeypatch.setenv(KEY_ENV, old)
    with serve(settings_for(data)) as srv:
        kit = Kit(srv)
        ids = [add(kit, f"S{i}", f"{VALUE}-{i}", None if i % 2 else "user:bob")["id"] for i in range(5)]
        old_ids = {r.key_id for r in raw_rows(kit)}
        job = kit.submit(secrets=["S1"])
        kit.close()
    assert len(old_ids) == 1
    # Only the new key: the server refuses to start (every job those secrets go to would fail),
    # naming how many and the key's fingerprint (review 12b H3).
    monkeypatch.setenv(KEY_ENV, new)
    with pytest.raises(ConfigError) as info:
        create_app(settings_for(data))
    assert "5 of the database's 5 executor secrets" in str(info.value)
    assert next(iter(old_ids)) in str(info.value) and old not in str(info.value)
    # New first, old second: everything opens; re-encrypt moves every value to the new key.
    monkeypatch.setenv(KEY_ENV, f"{new},{old}")
    with serve(settings_for(data)) as srv:
        kit = Kit(srv)
        assert env_of(kit.take())[0][-1] == f"S1={VALUE}-1"
        assert job["id"]
        before = {r.id: bytes(r.sealed) for r in raw_rows(kit)}
        r = kit.admin.post("/api/v1/secrets/reencrypt")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reencrypted"] == 5 and body["total"] == 5 and body["keyId"] not in old_ids
        assert new not in r.text and old not in r.text
        rows = raw_rows(kit)
        assert {row.key_id for row in rows} == {body["keyId"]}
        assert all(bytes(row.sealed) != before[row.id] for row in rows)
        again = kit.admin.post("/api/v1/secrets/reencrypt").json()
        assert again["reencrypted"] == 0 and again["total"] == 5
        kit.close()
    # The old key dropped: every secret still opens.
    monkeypatch.setenv(KEY_ENV, new)
    with serve(settings_for(data)) as srv:
        kit = Kit(srv)
        kit.submit(secrets=[f"S{i}" for i in range(5)], namespace="user:bob")
        env = env_of(kit.take())[0]
        assert [e for e in env if e.startswith("S")] == [f"S{i}={VALUE}-{i}" for i in range(5)]
        assert len(ids) == 5
        kit.close()


# -- resolution and hand-off ------------------------------------------------------------------
def test_namespace_overrides_global(dbkit: Kit) -> None:
    kit = dbkit
    add(kit, "TOKEN", "global-value")
    add(kit, "TOKEN", "alice-value", "user:alice")
    add(kit, "ONLY_GLOBAL", "g2")
    add(kit, "ONLY_ACME", "acme", "org:acme")
    cases = [
        (
            {"namespace": "user:alice", "secrets": ["TOKEN", "ONLY_GLOBAL"]},
            ["TOKEN=alice-value", "ONLY_GLOBAL=g2"],
        ),
        (
            {"namespace": "org:acme", "secrets": ["TOKEN", "ONLY_ACME"]},
            ["TOKEN=global-value", "ONLY_ACME=acme"],
        ),
        ({"secrets": ["TOKEN"]}, ["TOKEN=global-value"]),
    ]
    for fields, want in cases:
        kit.submit(**fields)
        job = kit.take()
        for env in env_of(job):
            assert env[-len(want) :] == want, (fields, env)
    # A namespace's secret is not another namespace's, nor the global scope's.
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**_steps(), "secrets": ["ONLY_ACME"]})
    assert r.status_code == 400 and "ONLY_ACME" in error_of(r) and "global scope" in error_of(r)
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**_steps(), "secrets": ["ONLY_ACME"], "namespace": "org:other"}
    )
    assert r.status_code == 400 and "org:other or the global scope" in error_of(r)


def _steps() -> dict[str, Any]:
    return {
        "dockerSteps": [{"image": "alpine:3", "commands": ["true"], "env": ["A=1"]}],
        "cliSteps": [{"command": ["batch", "exec"]}],
    }


def test_every_step_gets_the_named_secrets_and_they_are_redacted(kit: Kit) -> None:
    add(kit, "TOKEN", VALUE)
    add(kit, "UNNAMED", OTHER)
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs",
        json={**_steps(), "secrets": ["TOKEN", "TOKEN"], "redactedValues": {"mine": "[MINE]"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["secrets"] == ["TOKEN"]
    job = kit.take()
    assert env_of(job) == [["A=1", f"TOKEN={VALUE}"], [f"TOKEN={VALUE}"]]
    assert job["redactedValues"] == {"mine": "[MINE]", VALUE: "${{ secrets.TOKEN }}"}
    assert_absent(json.dumps(job), OTHER)  # a secret the job does not name never reaches it
    stored = kit.srv.store.get_job(job["id"]).spec
    assert_absent(json.dumps(stored), VALUE)  # the stored job keeps names only


def test_missing_secrets_are_refused_at_submit_and_a_deleted_one_fails_the_job(kit: Kit) -> None:
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**_steps(), "secrets": ["NOPE", "ALSO_NOPE"]})
    assert r.status_code == 400 and "NOPE, ALSO_NOPE" in error_of(r)
    for bad in (["1X"], ["a-b"], ["X" * 129]):
        r = kit.admin.post("/api/v1/queues/batches/jobs", json={**_steps(), "secrets": bad})
        assert r.status_code == 400 and "invalid secret name" in error_of(r)
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**_steps(), "secrets": [f"S{i}" for i in range(101)]}
    )
    assert r.status_code == 400
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**_steps(), "secrets": ["X"], "namespace": "team"}
    )
    assert r.status_code == 400 and "invalid namespace" in error_of(r)
    assert kit.admin.get("/api/v1/jobs").json() == []
    s = add(kit, "TOKEN", VALUE)
    job = kit.submit(secrets=["TOKEN"])
    assert kit.admin.delete(f"/api/v1/secrets/{s['id']}").status_code == 204
    r = kit.dequeue()
    assert r.status_code == 500 and "TOKEN" in error_of(r)
    failed = kit.wait_state(job["id"], "failed")
    assert "secrets that do not exist" in failed["error"] and "TOKEN" in failed["error"]
    assert kit.dequeue().status_code == 204  # it did not run without its secret


def test_secrets_within_the_redaction_bounds(kit: Kit) -> None:
    big = "v" * MAX_SECRET_VALUE_BYTES
    for i in range(17):
        add(kit, f"BIG{i}", big[:-2] + f"{i:02d}")
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**_steps(), "secrets": [f"BIG{i}" for i in range(17)]}
    )
    assert r.status_code == 400 and "over the limit of 1048576" in error_of(r)
    kit.submit(secrets=[f"BIG{i}" for i in range(10)])
    assert len(kit.take()["redactedValues"]) == 10


DOCKER_SECRET = {"auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"ns-user:ns-pass").decode()}}}
DOCKER_GLOBAL = {
    "auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(b"global:pw").decode()},
        "127.0.0.1:5001": {"username": "u1", "password": "p-global-5001"},
    }
}


def test_docker_auth_config_secret_becomes_the_jobs_docker_auth_config(dbkit: Kit) -> None:
    kit = dbkit
    g = add(kit, "DOCKER_AUTH_CONFIG", json.dumps(DOCKER_GLOBAL))
    n = add(kit, "DOCKER_AUTH_CONFIG", json.dumps(DOCKER_SECRET), "org:acme")
    # Not named: it still becomes dockerAuthConfig (as Sourcegraph's transformRecord), never an env var.
    kit.submit()
    job = kit.take()
    assert job["dockerAuthConfig"] == DOCKER_GLOBAL
    assert all(not e for e in env_of(job))
    assert json.dumps(DOCKER_GLOBAL) in job["redactedValues"] and "p-global-5001" in job["redactedValues"]
    # The namespace's wins over the global one.
    kit.submit(namespace="org:acme")
    assert kit.take()["dockerAuthConfig"] == DOCKER_SECRET
    # A job's own dockerAuthConfig: the secret's registries win, the job's other registries stay.
    own = {
        "auths": {
            "127.0.0.1:5000": {"auth": base64.b64encode(b"job:job").decode()},
            "127.0.0.1:5002": {"identitytoken": "job-token-5002"},
        }
    }
    kit.submit(namespace="org:acme", dockerAuthConfig=own)
    got = kit.take()["dockerAuthConfig"]["auths"]
    assert got == {
        "127.0.0.1:5000": DOCKER_SECRET["auths"]["127.0.0.1:5000"],
        "127.0.0.1:5002": own["auths"]["127.0.0.1:5002"],
    }
    # Named in `secrets`: refused (registry credentials serve the pulls; steps never see them).
    body = {**SIMPLE_STEPS, "namespace": "org:acme", "secrets": ["DOCKER_AUTH_CONFIG"]}
    r = kit.admin.post("/api/v1/queues/batches/jobs", json=body)
    assert r.status_code == 400 and "never given to steps" in r.text, r.text
    # Each hand-off is recorded: the global one once, the namespace's twice.
    assert len(kit.admin.get(f"/api/v1/secrets/{g['id']}/accesses").json()) == 1
    assert len(kit.admin.get(f"/api/v1/secrets/{n['id']}/accesses").json()) == 2
    view = kit.admin.get("/api/v1/jobs").text
    assert_absent(view, "p-global-5001", DOCKER_SECRET["auths"]["127.0.0.1:5000"]["auth"])


def test_a_v1_job_has_no_docker_auth_config(kit: Kit) -> None:
    """Sourcegraph executors before 4.x get v1 jobs, which have no dockerAuthConfig: nothing handed."""
    s = add(kit, "DOCKER_AUTH_CONFIG", json.dumps(DOCKER_SECRET))
    kit.submit()
    r = kit.executor.post(
        "/.executors/queue/batches/dequeue",
        json={"executorName": "sg-exec", "version": ""},
        headers={"User-Agent": "Go-http-client/1.1"},
    )
    assert r.status_code == 200, r.text
    assert "dockerAuthConfig" not in r.json()
    assert kit.admin.get(f"/api/v1/secrets/{s['id']}/accesses").json() == []


def test_each_dequeue_records_an_access(dbkit: Kit) -> None:
    kit = dbkit
    s = add(kit, "TOKEN", VALUE, "user:alice")
    job = kit.submit(secrets=["TOKEN"], namespace="user:alice", maxAttempts=3)
    first = kit.take(executor="exec-one")
    r = kit.job_call("batches", "markErrored", first, executor="exec-one", errorMessage="boom")
    assert r.status_code == 204, r.text
    with kit.srv.store.engine.begin() as conn:  # skip the retry backoff
        conn.exec_driver_sql(f"UPDATE jobs SET process_after = NULL WHERE id = {job['id']}")
    second = kit.take(executor="exec-two")
    assert second["id"] == job["id"] and second["attempt"] == 2
    accesses = kit.admin.get(f"/api/v1/secrets/{s['id']}/accesses").json()
    assert [(a["jobId"], a["attempt"], a["executorName"]) for a in accesses] == [
        (job["id"], 2, "exec-two"),
        (job["id"], 1, "exec-one"),
    ]
    assert all(a["name"] == "TOKEN" and a["namespace"] == "user:alice" and a["accessedAt"] for a in accesses)
    assert kit.admin.get("/api/v1/secrets/999/accesses").json() == []


def test_a_job_without_secrets_is_unchanged(kit: Kit) -> None:
    """No secret anywhere: the Job is exactly what it was (Sourcegraph's fixtures stay byte for byte)."""
    kit.submit(redactedValues={"a": "b"})
    job = kit.take()
    assert job["redactedValues"] == {"a": "b"} and job["dockerAuthConfig"] == {}


@pytest.mark.parametrize("sid", ["0", "-1", "99999999999999999999", "abc", "1.5"])
def test_hostile_secret_ids_are_refused_cleanly(kit: Kit, sid: str) -> None:
    for method, path, body in (
        ("PUT", f"/api/v1/secrets/{sid}", {"value": "v"}),
        ("DELETE", f"/api/v1/secrets/{sid}", None),
        ("GET", f"/api/v1/secrets/{sid}/accesses", None),
    ):
        r = kit.admin.request(method, path, json=body)
        assert r.status_code in (400, 404, 405), (method, path, r.status_code, r.text)


def test_no_value_reaches_the_servers_log(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    """Every path, the failing ones too, at DEBUG: the server logs no value in any form."""
    caplog.set_level(logging.DEBUG)
    a = add(kit, "ALPHA", VALUE)
    add(kit, "DOCKER_AUTH_CONFIG", json.dumps(DOCKER_SECRET))
    kit.submit(secrets=["ALPHA"])
    kit.take()
    kit.admin.post("/api/v1/secrets", json={"name": "ALPHA", "value": VALUE})  # 409
    kit.admin.post("/api/v1/secrets", json={"name": "bad-name", "value": VALUE})  # 400
    kit.admin.post(
        "/api/v1/secrets", json={"name": "DOCKER_AUTH_CONFIG", "value": VALUE, "namespace": "org:x"}
    )
    kit.admin.put(f"/api/v1/secrets/{a['id']}", json={"value": OTHER, "extra": VALUE})  # 400
    kit.submit(secrets=["ALPHA"])
    with kit.srv.store.engine.begin() as conn:
        conn.execute(
            update(secrets_table).where(secrets_table.c.id == a["id"]).values(sealed=b"\x01" + b"x" * 40)
        )
    kit.dequeue()  # fails the job: the value does not open
    kit.admin.post("/api/v1/secrets/reencrypt")
    assert logging.getLogger("corral.server").isEnabledFor(logging.DEBUG)  # a record would be caught
    assert_absent(caplog.text, VALUE, OTHER, DOCKER_SECRET["auths"]["127.0.0.1:5000"]["auth"])


def test_concurrent_creates_of_one_name_make_one_secret(dbkit: Kit) -> None:
    body = {"name": "RACE", "value": VALUE, "namespace": "org:acme"}
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: dbkit.admin.post("/api/v1/secrets", json=body).status_code, range(16))
        )
    assert sorted(codes) == [201] + [409] * 15, codes
    assert len(raw_rows(dbkit)) == 1


# -- review 12b -------------------------------------------------------------------------------
REGISTRY_PASSWORD = "Reg1stryPassw0rd-zz9"


def test_every_secret_form_of_docker_auth_config_is_redacted(kit: Kit) -> None:
    """H2: a step that decodes `auth` prints user:password; a Sourcegraph executor redacts only
    redactedValues, so the decoded forms must be there (a user name alone is not: S7)."""
    config = {
        "auths": {
            "127.0.0.1:5999": {"auth": base64.b64encode(f"ci-bot:{REGISTRY_PASSWORD}".encode()).decode()},
            "127.0.0.1:5998": {"username": "deployer", "password": "pw-5998-secret"},
            "127.0.0.1:5997": {"identitytoken": "idtoken-5997-secret"},
        }
    }
    add(kit, "DOCKER_AUTH_CONFIG", json.dumps(config))
    kit.submit()  # not named: every v2 job gets it as dockerAuthConfig
    redacted = kit.take()["redactedValues"]
    mask = "${{ secrets.DOCKER_AUTH_CONFIG }}"
    for form in (
        json.dumps(config),
        config["auths"]["127.0.0.1:5999"]["auth"],
        f"ci-bot:{REGISTRY_PASSWORD}",
        REGISTRY_PASSWORD,
        "pw-5998-secret",
        "deployer:pw-5998-secret",
        "idtoken-5997-secret",
    ):
        assert redacted.get(form) == mask, form
    assert "ci-bot" not in redacted and "deployer" not in redacted


def test_a_missing_key_file_is_not_replaced_while_secrets_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """H3: the generated key file gone (a restored database, a replica's empty data dir): the
    server refuses to start and makes no new key file."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    data = tmp_path / "d"
    with serve(settings_for(data)) as srv:
        kit = Kit(srv)
        add(kit, "TOKEN", VALUE)
        add(kit, "OTHER", OTHER, "org:acme")
        kit.close()
    (data / KEY_FILE).unlink()
    with pytest.raises(ConfigError, match="does not exist, but the database holds 2 executor secrets"):
        create_app(settings_for(data))
    assert not (data / KEY_FILE).exists()


def test_a_secret_that_does_not_open_at_dequeue_errors_the_job_for_a_retry(dbkit: Kit) -> None:
    """H3: a key gone while the server runs (another replica rotated; the row's key not in this
    ring): the dequeue hands out nothing (204, not 500), the attempt is errored (retried), the
    message names the secret; the job never runs without it and is not failed for good."""
    kit = dbkit
    s = add(kit, "TOKEN", VALUE, "user:alice")
    job = kit.submit(secrets=["TOKEN"], namespace="user:alice", maxAttempts=3)
    with kit.srv.store.engine.begin() as conn:
        conn.execute(
            update(secrets_table).where(secrets_table.c.id == s["id"]).values(key_id="00000000deadbeef")
        )
    r = kit.dequeue()
    assert r.status_code == 204, r.text
    errored = kit.wait_state(job["id"], "errored")
    assert (
        f"secret TOKEN (user:alice, id {s['id']})" in errored["error"]
        and "00000000deadbeef" in errored["error"]
    )
    assert_absent(errored["error"], VALUE)
    assert kit.dequeue().status_code == 204  # backoff: not handed out again at once, and not run
    assert kit.admin.get(f"/api/v1/secrets/{s['id']}/accesses").json() == []


def test_a_rotation_never_undoes_a_value_set_meanwhile() -> None:
    """H4 (PostgreSQL, READ COMMITTED): `set_value` commits between reseal's read and write; the
    reseal's compare-and-swap misses, it reads again, and the new value stays."""
    from corral.server.secretbox import Keyring, associated_data
    from corral.server.store import SqlStore
    from corral.server.store.secrets import SealedSecret

    store = SqlStore(fresh_database_url())
    store.migrate()
    old, new = new_key(), new_key()
    ring1, ring2 = Keyring.parse(old), Keyring.parse(f"{new},{old}")

    def aad(sid: int) -> bytes:
        return associated_data(sid, "TOKEN", None)

    info = store.secrets.create("TOKEN", None, lambda sid: ring1.seal("v1-old-value", aad(sid)))
    opened, go = threading.Event(), threading.Event()
    reads: list[str] = []

    def reseal(s: SealedSecret) -> tuple[bytes, str]:
        plain = ring2.open(s.sealed, aad(s.info.id), s.info.key_id, "TOKEN")
        reads.append(plain)
        opened.set()
        assert go.wait(10)
        return ring2.seal(plain, aad(s.info.id))

    with ThreadPoolExecutor(1) as pool:
        resealed = pool.submit(store.secrets.reseal, info.id, ring2.primary_id, reseal)
        assert opened.wait(10)
        store.secrets.set_value(info.id, lambda sid: ring1.seal("v2-NEW-value", aad(sid)))  # old key
        go.set()
        assert resealed.result(timeout=20) is True
    got = store.secrets.get(info.id)
    assert got.info.key_id == ring2.primary_id
    assert ring2.open(got.sealed, aad(info.id), got.info.key_id, "TOKEN") == "v2-NEW-value"
    assert reads == ["v1-old-value", "v2-NEW-value"]  # read again after the swap missed
    store.close()


def test_the_secrets_fanned_out_into_every_step_are_bounded(kit: Kit) -> None:
    """H5: 16 x 60 KiB named by 100 steps was a 99 MB dequeue answer (over the executor's 64 MiB):
    400 at submit naming the numbers; a value grown after submit fails the job at dequeue."""
    value = "ab" * 30 * 1024  # 60 KiB
    ids = [add(kit, f"BIG{i}", value[:-2] + f"{i:02d}")["id"] for i in range(16)]
    steps = {"dockerSteps": [{"image": "corral/busybox:1", "commands": ["true"]}] * 100}
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**steps, "secrets": [f"BIG{i}" for i in range(16)]}
    )
    assert r.status_code == 400, r.text
    assert "in each of its 100 steps" in error_of(r) and "over the limit of 8388608" in error_of(r)
    assert_absent(r.text, value)
    small = {"dockerSteps": [{"image": "corral/busybox:1", "commands": ["true"]}] * 8}
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**small, "secrets": [f"BIG{i}" for i in range(16)]}
    )
    assert r.status_code == 201, r.text  # 16 x 60 KiB x 8 steps: under the bound
    # Within the bound at submit, over it at dequeue (values replaced by bigger ones meanwhile).
    for i in range(4):
        add(kit, f"SMALL{i}", f"small-{i}")
    r = kit.admin.post(
        "/api/v1/queues/batches/jobs", json={**steps, "secrets": [f"SMALL{i}" for i in range(4)]}
    )
    assert r.status_code == 201, r.text
    late = r.json()["id"]
    assert len(kit.take()["dockerSteps"]) == 8  # the first job, handed out
    small_ids = [s["id"] for s in kit.admin.get("/api/v1/secrets").json() if s["name"].startswith("SMALL")]
    for sid in small_ids:
        assert kit.admin.put(f"/api/v1/secrets/{sid}", json={"value": value}).status_code == 200
    r = kit.dequeue()
    assert r.status_code == 500 and "over the limit of 8388608" in error_of(r)
    failed = kit.wait_state(late, "failed")
    assert "in each of its 100 steps" in failed["error"]
    assert len(ids) == 16


@pytest.mark.parametrize("method", ["post", "put"])
def test_a_lone_surrogate_in_a_value_is_a_clean_400(kit: Kit, method: str) -> None:
    """S3: no UTF-8 form: 400 naming why (was a 500 with a traceback)."""
    body = '{"name": "SURR", "value": "abc-secretpart-\\ud800-tail"}'
    if method == "put":
        sid = add(kit, "SURR", "fine")["id"]
        body = '{"value": "abc-secretpart-\\ud800-tail"}'
        r = kit.admin.put(
            f"/api/v1/secrets/{sid}", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = kit.admin.post("/api/v1/secrets", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "lone surrogate" in r.text and "secretpart" not in r.text


def test_a_deleted_secrets_id_is_never_reused(dbkit: Kit) -> None:
    """S4: SQLite gave a new secret the deleted one's id, and so its access log."""
    kit = dbkit
    a = add(kit, "PROD_DEPLOY_KEY", VALUE)
    kit.submit(secrets=["PROD_DEPLOY_KEY"])
    kit.take()
    assert len(kit.admin.get(f"/api/v1/secrets/{a['id']}/accesses").json()) == 1
    assert kit.admin.delete(f"/api/v1/secrets/{a['id']}").status_code == 204
    b = add(kit, "HARMLESS", OTHER)
    assert b["id"] > a["id"]
    assert kit.admin.get(f"/api/v1/secrets/{b['id']}/accesses").json() == []
    assert len(kit.admin.get(f"/api/v1/secrets/{a['id']}/accesses").json()) == 1
