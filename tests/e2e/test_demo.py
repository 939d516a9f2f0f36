"""The main job: `corral demo` end to end, as a new user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import CORRAL
from tests.e2e.localkit import (
    foreign_container,
    running,
    server_processes,
    wait_exit,
    wait_for_text,
    with_group_killed,
)


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
    assert "▶ step.docker.0" in out and "✓ setup: git init," in out  # live logs were streamed
    assert "mentions of whitelist in: ./README.md ./server.py" in out
    # corral-fmt (or its stand-in on the host) ran: the trailing tab is gone from the changed line
    assert "+Add your domain to the allowlist.\n" in out
    # output a new user can read: no git progress, no shell trace of the pipelines, no dead URL
    assert "Counting objects" not in out and "remote:" not in out, out
    assert not re.search(r"^\S+\s+│\s+\+ (?!set -e$)", out, re.M), out  # a `set -x` trace line
    assert "http://127.0.0.1" not in out, out
    assert "--keep" in out


def test_the_demo_leaves_another_executors_container_alone() -> None:
    """On an executor host: a container of a production executor (default prefix `executor`),
    labelled as job 1 like the demo's first job, survives the demo."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    with foreign_container(job="batches-1", owner="executor") as theirs:
        p = subprocess.run(
            [CORRAL, "demo", "--runtime", "docker"], capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert running(theirs), "the demo removed another executor's container"


def test_demo_keep_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`corral demo --keep` serves until told to stop: SIGTERM stops it with exit 0 and no
    `corral server` left behind."""
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed")
    data = tmp_path / "demo"
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CORRAL, "demo", "--runtime", "shell", "--keep", "--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_text(log, "press Ctrl-C to stop it", proc)
        text = log.read_text()
        assert "export CORRAL_URL=http://127.0.0.1:" in text  # with --keep the URL is live, and shown
        assert server_processes(data)
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc)
        text = log.read_text()
        assert code == 0, text
        assert server_processes(data) == [], "the demo's server was left running"
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            with_group_killed(proc)
