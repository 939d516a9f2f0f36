"""gVisor's pure parts: which orphaned shim/runsc processes are ours to end (docker/gvisor.py), the
step runtimes EXECUTOR_DOCKER_RUNTIME / _NETWORK_RUNTIME give, the start-up check's message, and the
daemon.json merge scripts/start-dockerd.sh runs (scripts/docker-runtimes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.executor.runtimes.docker import gvisor
from corral.executor.runtimes.docker.runtime import _runtime_problems
from corral.executor.runtimes.docker.settings import DockerSettings
from corral.executor.settingsbase import from_env

CID = "a" * 64
OTHER = "b" * 64
BUNDLE = f"/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{CID}"
MERGE = Path(__file__).resolve().parents[2] / "scripts" / "docker-runtimes.py"


def _proc(cid: str = CID, kind: str = gvisor.SHIM, pid: int = 10) -> gvisor.ShimProcess:
    return gvisor.ShimProcess(pid, kind, cid, None, b"x")


# --- which processes -------------------------------------------------------------------------------


def test_classify_reads_shims_and_runsc_by_their_container_id() -> None:
    shim = f"/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0-id\0{CID}\0-address\0/x.sock\0".encode()
    p = gvisor._classify(os.getpid(), shim)
    assert p is not None and p.kind == gvisor.SHIM and p.container_id == CID
    assert p.bundle is None  # this process's cwd is not the container's bundle
    gofer = f"runsc-gofer\0--root=/var/run/docker/runtime-runc/moby\0gofer\0--bundle\0{BUNDLE}\0".encode()
    g = gvisor._classify(1, gofer)
    assert g is not None and (g.kind, g.container_id, g.bundle) == ("runsc-gofer", CID, BUNDLE)
    sandbox = f"runsc-sandbox\0--network=none\0boot\0--bundle={BUNDLE}\0{CID}\0".encode()
    s = gvisor._classify(1, sandbox)
    assert s is not None and s.kind == "runsc-sandbox" and s.container_id == CID


@pytest.mark.parametrize(
    "cmdline",
    [
        f"/usr/bin/containerd-shim-runc-v2\0-namespace\0k8s.io\0-id\0{CID}\0",  # not dockerd's
        # containerd's clean-up after a shim died: it removes the state files, and must run to its end
        f"/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0-address\0/x.sock\0-publish-binary\0"
        f"/usr/bin/containerd\0-id\0{CID}\0-bundle\0{BUNDLE}\0delete\0",
        "/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0-id\0../../etc\0",  # not an id
        f"runsc-gofer\0gofer\0--bundle\0/tmp/elsewhere/{CID}\0",  # not a moby bundle
        f"runsc-gofer\0gofer\0--bundle\0/tmp/ws/moby/{CID}\0",  # a moby bundle, not dockerd's
        f"runsc-gofer\0gofer\0--bundle\0{BUNDLE}/../../../../../../../tmp/moby/{CID}\0",
        f"runsc\0do\0/bin/sh\0{CID}\0",  # a user's runsc, no bundle
        f"/bin/sleep\0--bundle={BUNDLE}\0",  # not a shim or runsc at all
        "",
    ],
)
def test_classify_ignores_what_is_not_dockers(cmdline: str) -> None:
    assert gvisor._classify(1, cmdline.encode()) is None


def test_parse_job_root_reads_the_executors_names() -> None:
    assert gvisor.parse_job_root("own-1.batches-42-1-abc123") == ("own-1", "batches-42")
    assert gvisor.parse_job_root("own.my-queue-7-2-ff") == ("own", "my-queue-7")
    for name in ("job-42", "own.batches", "own.a.b-1-1-x", ".batches-1-1-x", "workspace"):
        assert gvisor.parse_job_root(name) is None, name


def test_bundle_job_reads_the_workspace_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "moby"
    monkeypatch.setattr(gvisor, "BUNDLE_PARENTS", (str(parent),))
    bundle = parent / CID
    bundle.mkdir(parents=True)
    mounts = [
        {"destination": "/proc", "source": "proc"},
        {"destination": "/data", "source": "/var/lib/corral/ws/own.batches-42-1-abc/workspace"},
    ]
    (bundle / "config.json").write_text(json.dumps({"mounts": mounts}))
    assert gvisor.bundle_job(str(bundle)) == ("own", "batches-42")
    (bundle / "config.json").write_text("{not json")
    assert gvisor.bundle_job(str(bundle)) is None
    assert gvisor.bundle_job(str(parent / OTHER)) is None  # no such bundle
    assert gvisor.bundle_job(None) is None
    # a bundle outside dockerd's directory is never read
    elsewhere = tmp_path / "elsewhere" / "moby" / CID
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text(json.dumps({"mounts": mounts}))
    assert gvisor.bundle_job(str(elsewhere)) is None


def test_bundle_job_never_blocks_on_a_fifo_or_follows_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "moby"
    monkeypatch.setattr(gvisor, "BUNDLE_PARENTS", (str(parent),))
    (parent / CID).mkdir(parents=True)
    os.mkfifo(parent / CID / "config.json")
    assert gvisor.bundle_job(str(parent / CID)) is None  # returns at once: no writer needed
    (parent / OTHER).mkdir()
    target = tmp_path / "real.json"
    target.write_text(
        json.dumps({"mounts": [{"destination": "/data", "source": "/w/own.q-1-1-a/workspace"}]})
    )
    (parent / OTHER / "config.json").symlink_to(target)
    assert gvisor.bundle_job(str(parent / OTHER)) is None


def test_orphans_only_ours_whose_container_is_gone_and_job_not_live() -> None:
    procs = [_proc(CID), _proc(OTHER, pid=11)]
    ours = {CID: "q-1"}
    # the container still exists: never an orphan, whoever's
    assert gvisor.orphans(procs, {CID, OTHER}, ours, {}, "own", set()) == []
    # gone and ours, job not live
    assert gvisor.orphans(procs, set(), ours, {}, "own", set()) == [procs[0]]
    # gone and ours, but the job is live (e.g. a step between create and start)
    assert gvisor.orphans(procs, set(), ours, {}, "own", {"q-1"}) == []
    # known from the bundle: ours by owner, another owner's left alone, unknown left alone
    jobs = {CID: ("own", "q-1"), OTHER: ("someone-else", "q-2")}
    assert gvisor.orphans(procs, set(), {}, jobs, "own", set()) == [procs[0]]
    assert gvisor.orphans(procs, set(), {}, {CID: None}, "own", set()) == []
    assert gvisor.orphans(procs, set(), {}, jobs, None, set()) == []  # no owner: only what we made


def test_end_never_signals_a_pid_that_runs_something_else() -> None:
    me = gvisor.ShimProcess(os.getpid(), gvisor.SHIM, CID, None, b"not my command line\0")
    assert gvisor.end([me], grace=0.1) == []  # and this test process is still here


def test_end_ends_a_matching_process() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        # Popen returns when exec has begun; its argv pages may not be set up yet (cmdline reads
        # empty for a moment on a loaded machine), so wait for the real command line
        raw = b""
        for _ in range(500):
            raw = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            if raw == b"sleep\x0060\x00":
                break
            time.sleep(0.01)
        assert raw == b"sleep\x0060\x00"
        proc = gvisor.ShimProcess(child.pid, "runsc-gofer", CID, None, raw)
        assert gvisor.end([proc], grace=2.0) == [proc]
        assert child.wait(timeout=5) == -9  # runsc processes get SIGKILL
    finally:
        child.kill()
        child.wait()


# --- settings and the start-up check --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (None, None)),
        ({"EXECUTOR_DOCKER_RUNTIME": "runsc"}, ("runsc", "runsc-hostnet")),
        ({"EXECUTOR_DOCKER_RUNTIME": "kata"}, ("kata", "kata")),
        (
            {"EXECUTOR_DOCKER_RUNTIME": "runsc", "EXECUTOR_DOCKER_NETWORK_RUNTIME": "runsc-net"},
            ("runsc", "runsc-net"),
        ),
        ({"EXECUTOR_DOCKER_NETWORK_RUNTIME": "runsc-hostnet"}, (None, "runsc-hostnet")),
    ],
)
def test_step_runtimes(env: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    settings, problems = from_env(DockerSettings, env)
    assert problems == [] and settings is not None
    assert settings.step_runtimes() == expected


def test_a_runtime_name_is_checked() -> None:
    _, problems = from_env(DockerSettings, {"EXECUTOR_DOCKER_RUNTIME": "runsc --debug"})
    assert problems and "EXECUTOR_DOCKER_RUNTIME" in problems[0] and "runtime name" in problems[0]


def test_a_missing_runtime_names_the_entry_to_add() -> None:
    info = {"Runtimes": {"runc": {"path": "runc"}, "old": {"path": "/nonexistent/old-runtime"}}}
    problems = _runtime_problems(info, ["runsc", "runsc-hostnet", "runc", "old", "runsc"])
    assert len(problems) == 3, problems
    assert "'runsc' is not registered with the Docker Engine (it has old, runc)" in problems[0]
    entry = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none"]}}
    assert json.dumps({"runtimes": entry}) in problems[0]
    assert '"--network=host"' in problems[1]
    assert "'old' is registered, but /nonexistent/old-runtime does not exist" in problems[2]


def test_a_network_runtime_with_gvisors_own_network_stack_is_refused(tmp_path: Path) -> None:
    """netstack would send a deny-private job's packets past its namespace's nftables rules."""
    runsc = tmp_path / "runsc"
    runsc.touch()
    own = {"path": str(runsc), "runtimeArgs": ["--platform=ptrace", "--network=sandbox"]}
    host = {"path": str(runsc), "runtimeArgs": ["--platform=ptrace", "--network=host"]}
    info = {"Runtimes": {"runc": {"path": "runc"}, "gv": own, "gv-host": host}}
    problems = _runtime_problems(info, ["gv", "gv"], network="gv")
    assert len(problems) == 1 and "would bypass the egress firewall" in problems[0], problems
    assert _runtime_problems(info, ["gv", "gv-host"], network="gv-host") == []
    assert _runtime_problems(info, ["gv"], network=None) == []  # without network netstack has only lo


# --- the daemon.json merge ------------------------------------------------------------------------


def _merge(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MERGE), str(path), "/usr/bin/runsc"], capture_output=True, text=True, timeout=30
    )


def test_merge_adds_both_runtimes_and_keeps_everything_else(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"log-level": "warn", "runtimes": {"kata": {"path": "/usr/bin/kata"}}}))
    first = _merge(daemon)
    assert first.returncode == 0 and first.stdout.strip() == "changed", first.stderr
    config = json.loads(daemon.read_text())
    assert config["log-level"] == "warn" and config["runtimes"]["kata"] == {"path": "/usr/bin/kata"}
    assert config["runtimes"]["runsc"]["runtimeArgs"] == ["--platform=ptrace", "--network=none"]
    assert config["runtimes"]["runsc-hostnet"]["runtimeArgs"] == ["--platform=ptrace", "--network=host"]
    before = daemon.read_bytes()
    again = _merge(daemon)
    assert again.returncode == 0 and again.stdout == ""  # idempotent: nothing written
    assert daemon.read_bytes() == before


def test_merge_keeps_an_operators_entry_and_refuses_broken_json(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    mine = {"path": "/opt/runsc", "runtimeArgs": ["--debug"]}
    daemon.write_text(json.dumps({"runtimes": {"runsc": mine}}))
    out = _merge(daemon)
    assert out.returncode == 0 and "keeping the existing runtime 'runsc'" in out.stderr
    config = json.loads(daemon.read_text())
    assert config["runtimes"]["runsc"] == mine and "runsc-hostnet" in config["runtimes"]
    daemon.write_text('{"runtimes": ')
    broken = _merge(daemon)
    assert broken.returncode != 0 and "not valid JSON" in broken.stderr
    assert daemon.read_text() == '{"runtimes": '
    missing = tmp_path / "new" / "daemon.json"
    assert _merge(missing).returncode == 0 and "runsc" in json.loads(missing.read_text())["runtimes"]


@pytest.mark.parametrize(
    ("runtime", "network_runtime", "policy", "expected"),
    [
        (None, None, None, 256),  # runc: the job's pids exactly
        ("runsc", "runsc-hostnet", None, 256 + 128),  # gVisor's own host threads get headroom
        ("runsc", "runsc-hostnet", "open", 256 + 128),  # the network runtime is gVisor too
        ("", "runsc-hostnet", None, 256),  # no network: the default runtime (runc) runs the step
    ],
)
def test_the_pids_limit_leaves_headroom_for_gvisors_own_threads(
    tmp_path: Path, runtime: str | None, network_runtime: str | None, policy: str | None, expected: int
) -> None:
    from corral.executor.network import NetworkPolicy
    from corral.executor.runtimes.base import JobSpace, Limits, Step
    from corral.executor.runtimes.docker.containers import ContainerOptions, container_config

    network = NetworkPolicy.open() if policy == "open" else NetworkPolicy.none()
    space = JobSpace(
        job_id=1, queue="q", root=tmp_path, workspace=tmp_path / "w", limits=Limits(pids=256), network=network
    )
    step = Step(key="step.docker.0", kind="docker", index=0, image="corral/busybox:1", argv=("/bin/sh",))
    options = ContainerOptions(runtime=runtime or None, network_runtime=network_runtime)
    assert container_config(space, step, 1.0, options)["HostConfig"]["PidsLimit"] == expected
