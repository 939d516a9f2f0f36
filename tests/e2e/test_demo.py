"""The main job: `corral demo` end to end, as a new user runs it."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import CORRAL


@pytest.mark.parametrize("runtime", ["docker", "shell"])
def test_demo_runs_a_batch_change(runtime: str) -> None:
    if runtime == "docker":
        require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    else:
        require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed")
    p = subprocess.run([CORRAL, "demo", "--runtime", runtime], capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    for repo in ("local/api", "local/web", "local/docs"):
        assert f"✓ {repo}" in out, out
    assert "+Add your domain to the allowlist." in out  # the replacement, in the printed diff
    assert "▶ step.docker.0" in out and "setup.git.fetch" in out  # live logs were streamed
    if runtime == "docker":
        # corral-fmt ran in the container: the trailing tab is gone from the changed line
        assert "+Add your domain to the allowlist.\n" in out
