"""Executor secrets end to end: a real server, a real executor (shell runtime) and the CLI.

A job names secrets; its steps see the values (checked by digest, so the value is in no command)
and print them in several forms; the stored log, the job view and the CLI show none of them. The
CLI stores, lists, re-encrypts and removes secrets without ever printing a value."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from corral.protocol.secrets import SecretIn
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import ADMIN, CORRAL, docker_job, logs_text, run_server, start_executor, wait_job
from tests.unit.redact_kit import leaks

VALUE = "ghp_Secr3tValue/with+base64=chars_0123456789"
GLOBAL_VALUE = "global-value-that-must-not-be-used-7f3a"
OTHER = "never-named-secret-value-99c1e2"


def cli(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CORRAL_URL": url, "CORRAL_ADMIN_TOKEN": ADMIN}
    return subprocess.run([CORRAL, *args], env=env, input=stdin, capture_output=True, timeout=60)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.mark.parametrize("runtime", ["shell", "docker"])
def test_a_step_gets_its_secret_and_the_log_shows_none(tmp_path: Path, runtime: str) -> None:
    if runtime == "shell":
        require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    else:
        require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    with run_server(tmp_path) as server:
        c = server.client
        c.add_secret(SecretIn(name="TOKEN", value=GLOBAL_VALUE))
        s = c.add_secret(SecretIn(name="TOKEN", value=VALUE, namespace="user:alice"))
        c.add_secret(SecretIn(name="OTHER", value=OTHER))
        start_executor(server, tmp_path, runtime)
        printed = (
            f'test "$(printf %s "$TOKEN" | sha256sum | cut -c1-64)" = {digest(VALUE)} && echo token-ok; '
            'echo "plain $TOKEN"; printf %s "$TOKEN" | base64 -w 16; printf %s "$TOKEN" | od -An -tx1; '
            'printf "%s" "$TOKEN" | sed "s/_/%5F/g"; echo; env | grep -c "^OTHER=" || true'
        )
        job = c.submit("batches", {**docker_job(printed), "secrets": ["TOKEN"], "namespace": "user:alice"})
        done = wait_job(server, job["id"], timeout=120)
        assert done["state"] == "completed", done
        log = logs_text(server, job["id"])
        assert "token-ok" in log and "plain ${{ secrets.TOKEN }}" in log, log
        lines = log.splitlines()
        assert "0" in lines, log  # the secret the job does not name is not in its env
        texts = {
            "log": log,
            "view": json.dumps(c.get(job["id"])),
            "cli get": cli(server.url, "job", "get", str(job["id"])).stdout.decode(),
            "cli get --json": cli(server.url, "job", "get", "--json", str(job["id"])).stdout.decode(),
            "cli logs --json": cli(server.url, "job", "logs", "--json", str(job["id"])).stdout.decode(),
        }
        for p in server.executors:
            p.terminate()
            p.wait(30)
        texts["executor log"] = (tmp_path / "executor-0.log").read_text(errors="replace")
        for what, text in texts.items():
            for secret in (VALUE, GLOBAL_VALUE, OTHER):
                assert not leaks(secret, text.encode()), (what, secret, text)
        accesses = c.secret_accesses(s.id)
        assert [(a.job_id, a.attempt) for a in accesses] == [(job["id"], 1)]
        assert accesses[0].executor_name  # the executor that was handed it


def test_the_cli_manages_secrets_and_never_prints_a_value(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        url = server.url
        r = cli(url, "secret", "add", "TOKEN", stdin=f"{VALUE}\n".encode())
        assert r.returncode == 0, r.stderr
        assert b"secret TOKEN added (global, id 1)" in r.stdout
        value_file = tmp_path / "value"
        value_file.write_text(OTHER)
        r = cli(
            url, "secret", "add", "TOKEN", "--namespace", "org:acme", "--from-file", str(value_file), "--json"
        )
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        assert made["namespace"] == "org:acme" and set(made) == {
            "id",
            "name",
            "namespace",
            "createdAt",
            "updatedAt",
        }
        # The value went in exactly (one trailing newline of stdin dropped): a job sees it.
        job = server.client.submit("batches", {**docker_job("true"), "secrets": ["TOKEN"]})
        dequeued = server.client.http.post(
            "/.executors/queue/batches/dequeue",
            json={"executorName": "cli-test", "version": "0.0.0"},
            headers={"Authorization": "token-executor e2e-executor-secret-0123456789"},
        ).json()
        assert dequeued["id"] == job["id"] and f"TOKEN={VALUE}" in dequeued["dockerSteps"][0]["env"]
        outputs = [r.stdout + r.stderr]
        r = cli(url, "secret", "list")
        assert r.returncode == 0 and b"(global)" in r.stdout and b"org:acme" in r.stdout, r
        outputs.append(r.stdout)
        r = cli(url, "secret", "list", "--json", "--namespace", "org:acme")
        assert [s["id"] for s in json.loads(r.stdout)] == [made["id"]]
        outputs.append(r.stdout)
        r = cli(url, "secret", "accesses", "1")
        assert r.returncode == 0 and str(job["id"]).encode() in r.stdout and b"cli-test" in r.stdout, r
        outputs.append(r.stdout)
        r = cli(url, "secret", "set", "1", stdin=b"a-new-value-123\n")
        assert r.returncode == 0 and b"has a new value" in r.stdout, r
        r = cli(url, "secret", "reencrypt", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["total"] == 2, r
        r = cli(url, "secret", "add", "bad-name", stdin=b"v")
        assert r.returncode == 2 and b"invalid secret name" in r.stderr, r
        r = cli(url, "secret", "add", "TOKEN", stdin=b"again")
        assert r.returncode == 2 and b"already exists" in r.stderr, r
        r = cli(url, "secret", "add", "EMPTY", stdin=b"")
        assert r.returncode == 2 and b"empty" in r.stderr, r
        r = cli(url, "secret", "remove", "1")
        assert r.returncode == 0 and b"secret 1 removed" in r.stdout, r
        assert [s["id"] for s in json.loads(cli(url, "secret", "list", "--json").stdout)] == [made["id"]]
        r = cli(url, "secret", "keygen")
        assert r.returncode == 0 and len(r.stdout.strip()) == 44, r
        for out in outputs:
            for secret in (VALUE, OTHER):
                assert not leaks(secret, out), out
