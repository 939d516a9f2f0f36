"""Custom CA certificates (issue 13): a job that must trust a private CA uses a job image that has it,
made the way the README says (COPY the CA into /usr/local/share/ca-certificates/, RUN
update-ca-certificates). The CA here is made up by the test (tests/imagekit.py), the images are built
locally from corral/busybox:1 with no registry and no network.

In one microVM: a step in the image with the CA verifies a server certificate that CA signed
against the system bundle and the hashed certificate directory (OK), and the same certificate
fails verification in the step of the image without it. The same image, unchanged, does the same
in the docker runtime. The VM has no network, so the check is on the certificate file, delivered
as a job file into the workspace as a producer would."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import imagekit
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, logs_text, run_server, start_executor, wait_job
from tests.e2e.microvmkit import qemu_left, require_microvms, vm_dirs

# what the step runs: the system bundle, then OpenSSL's default store (/usr/lib/ssl/certs, the
# hashed directory update-ca-certificates rehashes), each with its exit status (steps run with set -e)
VERIFY = (
    "rc=0; openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt server.crt || rc=$?; "
    "echo bundle-rc=$rc; rc=0; openssl verify server.crt || rc=$?; echo default-rc=$rc"
)


@dataclass(frozen=True)
class Images:
    ca: imagekit.CA
    with_ca: str
    without_ca: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("ca-images")
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    ca = imagekit.make_ca(tmp / "ca")
    base = f"corral-test/tls-base:{tag}"
    with_ca = f"corral-test/tls-with-ca:{tag}"
    try:
        imagekit.build_tls_base(base, tmp)
        imagekit.build_with_ca(with_ca, base, ca, tmp)
        yield Images(ca, with_ca, base)
    finally:
        imagekit.remove_image(with_ca)
        imagekit.remove_image(base)


def _job(images: Images) -> dict[str, Any]:
    return {
        "dockerSteps": [
            {"image": images.with_ca, "commands": [VERIFY]},
            {"image": images.without_ca, "commands": [VERIFY]},
        ],
        "files": {"server.crt": {"content": images.ca.server_cert.read_text()}},
    }


def _check_outputs(server: Server, job_id: int) -> None:
    done = wait_job(server, job_id, timeout=300)
    text = logs_text(server, job_id)
    assert done["state"] == "completed", (done, text)
    entries = {e["key"]: e for e in server.client.logs(job_id)["entries"]}
    trusted, untrusted = entries["step.docker.0"]["out"], entries["step.docker.1"]["out"]
    assert "bundle-rc=0" in trusted and "default-rc=0" in trusted, trusted
    assert trusted.count("server.crt: OK") == 2, trusted
    assert "bundle-rc=2" in untrusted and "default-rc=2" in untrusted, untrusted
    assert "unable to get local issuer certificate" in untrusted and "server.crt: OK" not in untrusted


def test_an_image_with_the_custom_ca_trusts_it_in_the_microvm_and_one_without_does_not(
    images: Images, tmp_path: Path
) -> None:
    require_microvms()
    prefix = f"t{secrets.token_hex(4)}-fcca"
    with run_server(tmp_path, max_attempts=1) as server:
        start_executor(server, tmp_path, "firecracker", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_MEMORY="256M")
        job = server.client.submit("batches", _job(images))
        _check_outputs(server, job["id"])
    assert not qemu_left(prefix)
    assert not vm_dirs(tmp_path / "ws")


def test_the_same_image_trusts_the_ca_in_the_docker_runtime(images: Images, tmp_path: Path) -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the diff's shell sandbox)")
    with run_server(tmp_path, max_attempts=1) as server:
        start_executor(server, tmp_path, "docker", EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-dkca")
        job = server.client.submit("batches", _job(images))
        _check_outputs(server, job["id"])
