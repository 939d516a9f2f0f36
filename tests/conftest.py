"""Shared test fixtures. Capabilities (docker, bubblewrap, ...) are required in CI: there a missing
capability fails the test; on a developer's laptop (CI unset) it skips with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, why: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless `ok`."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"missing capability in CI: {why}")
    pytest.skip(why)


def docker_ok() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def bwrap_ok() -> bool:
    return bool(shutil.which("bwrap")) and os.path.isdir("/sys/fs/cgroup/memory") and os.geteuid() == 0


@pytest.fixture(scope="session")
def docker_available() -> None:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")


@pytest.fixture(scope="session")
def bwrap_available() -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
