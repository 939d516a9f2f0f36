"""Image pulls end to end (docker runtime): a registry that cannot be reached errors the job, which
the server retries (attempt 2 gets the same answer here, and then the job fails with the last
error); a missing image fails the job at once, no retry. Only loopback is ever contacted: the
"unreachable" registry is a closed port on 127.0.0.1 the operator allowed, the missing image's
registry is Debian's docker-registry on 127.0.0.1."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, run_server, start_executor, wait_job
from tests.integration.test_runtime_docker import closed_port, debian_registry

__all__ = ["debian_registry"]  # the fixture, shared with the integration tests
FINAL = ("completed", "failed", "canceled")  # not "errored": the server retries that


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    with run_server(tmp_path, max_attempts=2, retry_backoff=0.2) as s:
        yield s


def executor(server: Server, tmp_path: Path, registry: str) -> None:
    start_executor(
        server,
        tmp_path,
        "docker",
        EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-pull",
        EXECUTOR_DOCKER_ALLOWED_REGISTRIES=registry,
    )


def test_an_unreachable_registry_errors_the_job_and_the_server_retries_it(
    server: Server, tmp_path: Path
) -> None:
    registry = f"127.0.0.1:{closed_port()}"
    executor(server, tmp_path, registry)
    job = server.client.submit("batches", docker_job("echo never", image=f"{registry}/corral/busybox:1"))
    done = wait_job(server, job["id"], FINAL, timeout=60)
    assert done["state"] == "failed", done  # errored twice: max_attempts=2, then failed
    assert done["attempt"] == 2 and done["numFailures"] == 2, done
    assert f"its registry {registry} cannot be reached" in done["error"], done
    assert "connection refused" in done["error"], done
    text = logs_text(server, job["id"])
    assert text.count("cannot be reached") >= 2, text  # each attempt's step log, and the marker


def test_a_missing_image_fails_the_job_without_a_retry(
    server: Server, tmp_path: Path, debian_registry: str
) -> None:
    executor(server, tmp_path, debian_registry)
    image = f"{debian_registry}/corral/nothing-here:1"
    job = server.client.submit("batches", docker_job("echo never", image=image))
    done = wait_job(server, job["id"], FINAL, timeout=60)
    assert done["state"] == "failed", done
    assert done["attempt"] == 1, done
    assert f"image {image!r} not found" in done["error"] and "manifest unknown" in done["error"], done
