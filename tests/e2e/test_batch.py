"""`corral batch run SPEC.yaml`: the same steps in several local repositories, one diff each."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import CORRAL, make_repo
from tests.e2e.localkit import (
    containers,
    foreign_container,
    job_state,
    prefix_of,
    processes_with,
    running,
    server_processes,
    wait_exit,
    wait_for_text,
    with_group_killed,
)


def test_batch_run_with_an_embedded_server(tmp_path: Path) -> None:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    make_repo(tmp_path / "one", {"a.txt": "color\n"})
    make_repo(tmp_path / "two", {"b.txt": "color and more color\n"})
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: spelling\n"
        "repositories: [{path: one}, {path: two}]\n"
        "steps:\n"
        "  - image: corral/busybox:1\n"
        "    run: |\n"
        "      sed -i 's/color/colour/g' *.txt\n"
        "timeout: 2m\n"
    )
    p = subprocess.run(
        [CORRAL, "batch", "run", str(spec), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "✓ local/one" in out and "✓ local/two" in out
    assert "+colour" in out and "+colour and more colour" in out


def test_batch_run_rejects_a_bad_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nrepositories: []\nsteps: [{image: a}]\n")
    p = subprocess.run([CORRAL, "batch", "run", str(spec)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "invalid batch spec" in p.stderr and "run" in p.stderr


def _spec(tmp_path: Path, run: str, repos: str = "[{path: one}]") -> Path:
    make_repo(tmp_path / "one", {"a.txt": "color\n"})
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: t\nrepositories: {repos}\nsteps:\n  - image: corral/busybox:1\n    run: |\n"
        + "".join(f"      {line}\n" for line in run.splitlines())
    )
    return spec


def test_a_local_run_never_touches_another_executors_containers(tmp_path: Path) -> None:
    """The embedded executor owns a prefix of its own: a container of a production executor (the
    default prefix `executor`), labelled as the very job id the local run gets, survives the run's
    start-up janitor and its final sweep."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    spec = _spec(tmp_path, "sed -i 's/color/colour/' a.txt")
    data = tmp_path / "data"
    with foreign_container(job="batches-1", owner="executor") as theirs:
        p = subprocess.run(
            [CORRAL, "batch", "run", str(spec), "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = p.stdout + p.stderr
        assert p.returncode == 0, out
        assert "+colour" in out
        assert running(theirs), "the local run removed another executor's container"
        prefix = prefix_of(data)
        assert prefix.startswith("local-") and prefix != "executor"
        assert "janitor" not in out, out
        assert containers(f"dev.corral.owner={prefix}") == []  # and nothing of its own is left


@pytest.mark.parametrize(
    ("runtime", "signum"),
    [("docker", signal.SIGINT), ("docker", signal.SIGTERM), ("shell", signal.SIGINT)],
)
def test_an_interrupted_local_run_cancels_its_job_and_leaves_nothing(
    tmp_path: Path, runtime: str, signum: int
) -> None:
    """Ctrl-C (SIGINT to the run's process group, as a terminal sends it) or SIGTERM (to the run
    alone): the run cancels its job, stops its executor and server and exits 128+signal; no
    `corral server`, no container of its prefix, no step process is left, and the job is canceled."""
    if runtime == "docker":
        require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    else:
        require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed")
    marker = f"sleep-{signum}-{runtime}"
    spec = _spec(tmp_path, f"echo {marker} started\nexec sleep 299")
    data = tmp_path / "data"
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CORRAL, "batch", "run", str(spec), "--data-dir", str(data), "--runtime", runtime],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    try:
        wait_for_text(log, f"{marker} started", proc)
        assert server_processes(data), "the run's server should be up while the job runs"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # what the terminal does on Ctrl-C
        else:
            proc.send_signal(signum)
        code = wait_exit(proc)
        text = log.read_text(errors="replace")
        assert code == 128 + signum, text
        assert "canceled jobs: 1" in text, text
        assert server_processes(data) == [], "a corral server was left running"
        assert processes_with("sleep 299") == [], "the job's step still runs"
        if runtime == "docker":
            assert containers(f"dev.corral.owner={prefix_of(data)}") == [], "a job container was left"
        assert job_state(data / "corral.db", 1) == "canceled"
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            with_group_killed(proc)


def test_a_spec_naming_an_unknown_repository_submits_nothing(tmp_path: Path) -> None:
    """The whole spec is checked first: a bad entry after good ones leaves nothing queued (the
    server is never even started)."""
    make_repo(tmp_path / "two", {"b.txt": "x\n"})
    spec = _spec(tmp_path, "true", repos="[{path: one}, {path: two}, {name: acme/docs}, {path: nowhere}]")
    data = tmp_path / "data"
    p = subprocess.run(
        [CORRAL, "batch", "run", str(spec), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "nothing was submitted" in p.stderr
    assert "acme/docs is not known to the server this run starts" in p.stderr
    assert "repositories[3] (nowhere): no such directory" in p.stderr
    assert not (data / "corral.db").exists()


def test_the_readmes_batch_spec_runs_locally(tmp_path: Path) -> None:
    """The spec the README shows, as a new user copies it, next to the repositories it names."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("A batch spec for `corral batch run`") :]
    spec_text = section[section.index("```yaml\n") + 8 : section.index("\n```", section.index("```yaml"))]
    for name in ("api", "web", "docs"):
        make_repo(tmp_path / name, {"notes.md": f"{name}: add it to the whitelist\n"})
    work = tmp_path / "batch"
    work.mkdir()
    (work / "spec.yaml").write_text(spec_text)
    p = subprocess.run(
        [CORRAL, "batch", "run", "spec.yaml", "--data-dir", str(tmp_path / "data")],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    for repo in ("local/api", "local/web", "acme/docs"):
        assert f"✓ {repo}" in out, out
    assert "+docs: add it to the allowlist" in out, out


def test_a_killed_local_run_leaves_no_server_and_the_next_run_cleans_up_after_it(tmp_path: Path) -> None:
    """SIGKILL gives a run no chance to clean up: its server dies with it (PR_SET_PDEATHSIG), and
    the next run in the same data dir (same prefix) removes the container it left, says so, and
    cancels the job it left instead of running it again."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    spec = _spec(tmp_path, "echo killed-run started\nexec sleep 299")
    data = tmp_path / "data"
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CORRAL, "batch", "run", str(spec), "--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_text(log, "killed-run started", proc)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30
        while server_processes(data):
            assert time.monotonic() < deadline, "the killed run's server is still running"
            time.sleep(0.1)
        prefix = prefix_of(data)
        left = containers(f"dev.corral.owner={prefix}")
        assert left, "a SIGKILLed run cannot remove its container: the next run must"
        quick = tmp_path / "quick.yaml"
        quick.write_text(spec.read_text().replace("echo killed-run started\n      exec sleep 299", "true"))
        p = subprocess.run(
            [CORRAL, "batch", "run", str(quick), "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out_text = p.stdout + p.stderr
        assert p.returncode == 0, out_text
        assert f"janitor (owner {prefix}): removed docker" in out_text, out_text
        assert "canceled 1 job(s) an earlier run left unfinished in this data dir: 1" in out_text, out_text
        assert containers(f"dev.corral.owner={prefix}") == []
        assert processes_with("sleep 299") == []
        assert job_state(data / "corral.db", 2) == "completed"
    finally:
        if proc.poll() is None:
            with_group_killed(proc)
        for cid in (
            containers(f"dev.corral.owner={prefix_of(data)}") if (data / "executor-prefix").exists() else []
        ):
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)
