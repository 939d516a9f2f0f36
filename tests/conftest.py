"""Shared test fixtures. Capabilities (docker, bubblewrap, ...) are required in CI: there a missing
capability fails the test; on a developer's laptop (CI unset) it skips with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _unmount_below(root: str) -> None:
    """Unmount job workspace filesystems left below root: an executor a test killed with SIGKILL
    leaves its loop mounts (its janitor would remove them on its next start, which never comes).
    The mounts of another pytest session that still runs on this host are its own: left alone."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(root + "/")), key=len, reverse=True):
        if not _in_live_session(root, point):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _in_live_session(root: str, point: str) -> bool:
    """Whether `point` is in the pytest-N directory of another pytest process still running (pytest
    keeps its pid in pytest-N/.lock while the session runs)."""
    numbered = point[len(root) + 1 :].split("/", 1)[0]
    try:
        pid = int((Path(root) / numbered / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session", autouse=True)
def _no_workspace_mounts_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Before and after the session: pytest deletes old temp dirs, which fails on a mount point."""
    root = str(tmp_path_factory.getbasetemp().parent)
    if os.geteuid() == 0:
        _unmount_below(root)
    yield
    if os.geteuid() == 0:
        _unmount_below(root)


@pytest.fixture
def kube_cluster(tmp_path: Path, docker_available: None) -> Iterator[Any]:
    """The Kubernetes stand-in (tests/kubekit): API server, Job controller, Docker-backed kubelet.
    At teardown a call outside the shipped Role, or a failure of the stand-in itself, fails the test."""
    from tests.kubekit import run_cluster

    with run_cluster(tmp_path / "kube") as cluster:
        yield cluster
        cluster.check_clean()
