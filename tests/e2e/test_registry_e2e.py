"""Private registries end to end: a real server, a real executor (docker runtime) and Debian's
docker-registry with htpasswd on 127.0.0.1. A job's `dockerAuthConfig` pulls its image; a wrong one
fails the job at once (no retry) with "unauthorized", and neither the job's log nor its view as the
producer reads it holds the password or its base64 `auth`; a later job without credentials cannot use
the image the first job pulled, until the executor user's ~/.docker/config.json (HOME is a temp dir,
empty at first) holds credentials for it."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, run_server, start_executor, wait_job
from tests.registrykit import Registry, password, run_registry, untag

FINAL = ("completed", "failed", "canceled")  # not "errored": the server retries that
USER = "alice"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path / "registry", {USER: password()}) as reg:
        yield reg


@pytest.fixture
def server(tmp_path: Path, registry: Registry) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    home = tmp_path / "home"
    home.mkdir()
    with run_server(tmp_path, max_attempts=2, retry_backoff=0.2) as s:
        start_executor(
            s,
            tmp_path,
            "docker",
            EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-reg",
            EXECUTOR_DOCKER_ALLOWED_REGISTRIES=registry.address,
            HOME=str(home),
        )
        yield s


def test_docker_auth_config_pulls_and_a_wrong_one_fails_redacted(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    image = registry.push("corral/busybox:1", f"jobs/e2e{secrets.token_hex(4)}")
    try:
        pw, auth = registry.users[USER], registry.auth(USER)
        good = registry.config(USER)
        # the step prints the credentials in two forms: the log must hide both
        job = server.client.submit(
            "batches",
            docker_job(f"echo pw={pw} auth={auth}; echo ran-$((1+1))", image=image, dockerAuthConfig=good),
        )
        done = wait_job(server, job["id"], FINAL, timeout=60)
        text = logs_text(server, job["id"])
        assert done["state"] == "completed", (done, text)
        assert "ran-2" in text and "pw=" in text, text
        assert pw not in text and auth not in text, text
        assert done["spec"]["dockerAuthConfig"] == {"auths": {registry.address: "<redacted>"}}, done

        # a wrong password (also the image's tag, so that the error text holds it)
        wrong = password()
        bad_image = image.rsplit(":", 1)[0] + f":{wrong}"
        bad = registry.config(USER, wrong)
        job = server.client.submit("batches", docker_job("echo never", image=bad_image, dockerAuthConfig=bad))
        done = wait_job(server, job["id"], FINAL, timeout=60)
        text = logs_text(server, job["id"])
        assert done["state"] == "failed" and done["attempt"] == 1, done  # the job's fault: no retry
        assert "not found: unauthorized" in done["error"], done
        assert "unauthorized" in text and "never" not in text.replace("echo never", ""), text
        # the view, less the step the producer itself wrote the password into (its image name)
        view = json.dumps({**done, "spec": {**done["spec"], "dockerSteps": None}})
        bad_auth = bad["auths"][registry.address]["auth"]
        for form in (wrong, bad_auth, f"{USER}:{wrong}", base64.b64encode(wrong.encode()).decode()):
            assert form not in done["error"] and form not in text, (form, done["error"], text)
            assert form not in view, view

        # a job without credentials: the image is local now, but it was pulled with job A's own
        job = server.client.submit("batches", docker_job("echo never", image=image))
        done = wait_job(server, job["id"], FINAL, timeout=60)
        assert done["state"] == "failed" and done["attempt"] == 1, done
        assert f"image {image!r} not found: unauthorized" in done["error"], done
        assert "no credentials for" in done["error"], done

        # the executor user's ~/.docker/config.json (read per job): the operator's, for every job
        (tmp_path / "home" / ".docker").mkdir()
        (tmp_path / "home" / ".docker" / "config.json").write_text(json.dumps(good))
        job = server.client.submit("batches", docker_job("echo from-home", image=image))
        done = wait_job(server, job["id"], FINAL, timeout=60)
        assert done["state"] == "completed", (done, logs_text(server, job["id"]))
        assert "from-home" in logs_text(server, job["id"])
    finally:
        untag(image)
