"""Fixtures shared by the end-to-end tests: a real server, and the runtime an executor uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, run_server


@pytest.fixture(params=["shell", "docker"])
def runtime(request: pytest.FixtureRequest) -> str:
    """Each runtime in turn. The shell sandbox is needed by both: CLI steps and the diff run in it."""
    if request.param == "docker":
        require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    return str(request.param)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_server(tmp_path) as s:
        yield s
