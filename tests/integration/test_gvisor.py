"""The docker runtime under gVisor (Debian's runsc, registered by scripts/start-dockerd.sh) on the
real Docker Engine: steps run in gVisor's kernel with and without a network interface, limits and the
workspace work, what a failed runsc start leaves running is ended by cleanup and by the janitor
(only ours), and a runtime dockerd does not know stops the executor before it starts.

No test sends traffic anywhere: the network test only looks at the interfaces inside the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.errors import RuntimeFailure
from corral.executor.network import NetworkPolicy
from corral.executor.runtimes.base import LABEL_JOB, JobSpace, Limits, Step, StepResult
from corral.executor.runtimes.docker import DockerRuntime, gvisor
from corral.executor.workspace.host import job_root_name
from tests.conftest import docker_ok, require
from tests.serverkit import EXECUTOR_SECRET, RunningServer

pytestmark = pytest.mark.docker

RUNSC_STATE = "/var/run/docker/runtime-runc/moby"  # runsc's state files, by container id

IMAGE = "corral/busybox:1"
RUNSC = "runsc"
HOSTNET = "runsc-hostnet"
OWNER = f"t{random.randrange(16**8):08x}-gv"
MIB = 1024**2
CORRAL = str(Path(sys.executable).with_name("corral"))
NO_SERVER = "http://127.0.0.1:9"  # loopback, nothing listens: the executor stops before asking


def _registered() -> set[str]:
    p = subprocess.run(
        ["docker", "info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return set(p.stdout.split())


@pytest.fixture(scope="module")
def gvisor_available() -> None:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(shutil.which("runsc") is not None, "runsc is not installed (scripts/setup.sh installs it)")
    have = _registered()
    require({RUNSC, HOSTNET} <= have, f"dockerd lacks runsc/runsc-hostnet (has {sorted(have)}): run setup")


def _runtime(owner: str = OWNER) -> DockerRuntime:
    return DockerRuntime(owner=owner, runtime=RUNSC, network_runtime=HOSTNET, pull=False)


@pytest.fixture
async def rt(gvisor_available: None) -> AsyncIterator[DockerRuntime]:
    runtime = _runtime()
    yield runtime
    await runtime.aclose()


@pytest.fixture
async def make_space(rt: DockerRuntime, tmp_path: Path) -> AsyncIterator[Callable[..., JobSpace]]:
    """JobSpaces whose roots are named as the executor names them (the janitor reads the name back)."""
    spaces: list[JobSpace] = []

    def make(owner: str = OWNER, **kw: Any) -> JobSpace:
        job_id = random.randrange(10**8, 10**9)
        root = tmp_path / job_root_name(owner, "gvisor", job_id, 1, f"{random.randrange(16**6):06x}")
        workspace = root / "workspace"
        workspace.mkdir(parents=True)
        root.chmod(0o700)
        kw.setdefault("kill_grace", 1.0)
        kw.setdefault("limits", Limits(cpus=1, memory_bytes=256 * MIB, pids=256))
        space = JobSpace(job_id=job_id, queue="gvisor", root=root, workspace=workspace, owner=owner, **kw)
        spaces.append(space)
        return space

    yield make
    cleaner = _runtime()
    for space in spaces:
        await cleaner.cleanup(space)
    await cleaner.janitor(set())  # our owner's orphans of every job here
    await cleaner.aclose()


def _step(*argv: str, index: int = 0) -> Step:
    return Step(key=f"step.docker.{index}", kind="docker", index=index, image=IMAGE, argv=argv)


async def _run(rt: DockerRuntime, space: JobSpace, script: str) -> tuple[StepResult, str]:
    chunks: list[bytes] = []
    await rt.prepare(space)
    result = await rt.run_step(space, _step("/bin/sh", "-c", script), chunks.append)
    return result, b"".join(chunks).decode(errors="replace")


async def test_step_runs_in_gvisor_with_the_workspace(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    (space.workspace / "in.txt").write_text("from the host\n")
    result, out = await _run(
        rt,
        space,
        "uname -r; dmesg | head -n 1; cat /data/in.txt; echo written > /data/out.txt; "
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1",
    )
    assert result.exit_code == 0, out
    lines = out.split("\n")
    assert lines[0] == "4.4.0", out  # gVisor's kernel, not the host's
    assert "Starting gVisor" in lines[1], out
    assert "from the host" in out
    assert (space.workspace / "out.txt").read_text() == "written\n"
    assert (space.workspace / "out.txt").stat().st_uid == space.uid
    assert [x.strip() for x in lines[3:] if x.strip()] == ["lo"], out  # runsc --network=none: lo only


async def test_memory_limit_holds_under_gvisor(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    # pids 1024 (the default): under runsc the pids cgroup also counts the sandbox's own host
    # threads (about 60 at rest), see the pids test
    space = make_space(limits=Limits(cpus=1, memory_bytes=64 * MIB, pids=1024))
    result, out = await _run(rt, space, "x=$(head -c 300m /dev/zero | tr '\\0' x); echo survived")
    assert result.exit_code == 137, out
    assert result.oom_killed
    assert "survived" not in out


async def test_pids_limit_holds_under_gvisor(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    """The host's pids cgroup bounds the whole sandbox: gVisor's threads and, on the ptrace platform,
    one host process per guest process. A job past it ends the sandbox (runsc's Go runtime cannot
    make a thread: exit 2), so the fork burst never completes; a few processes under it still work."""
    limits = Limits(cpus=1, memory_bytes=256 * MIB, pids=128)
    few, out = await _run(rt, make_space(limits=limits), "for i in 1 2 3; do sleep 1 & done; wait; echo done")
    assert few.exit_code == 0 and "done" in out, out
    many, out = await _run(
        rt, make_space(limits=limits), "for i in $(seq 200); do sleep 5 & done; wait; echo done"
    )
    assert many.exit_code != 0, out
    assert "done" not in out


async def test_step_with_a_network_interface_runs_under_runsc_hostnet(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """NetworkPolicy.open(): the docker runtime's bridge, entered with runsc --network=host (the old
    runsc refuses its own netstack there). Only the interfaces are looked at: nothing is sent."""
    space = make_space(network=NetworkPolicy.open())
    result, out = await _run(rt, space, "uname -r; dmesg | head -n 1; ip -4 addr show eth0")
    assert result.exit_code == 0, out
    assert out.startswith("4.4.0\n"), out
    assert "Starting gVisor" in out
    assert "eth0" in out and "inet " in out, out


async def _failed_start(rt: DockerRuntime, space: JobSpace, fifo: Path) -> set[str]:
    """A runsc start that fails: an operator mount of a FIFO, which runsc's gofer cannot serve
    (docker-init is PID 1, so a missing entrypoint is the step's exit 127, not a failed start).
    Returns the container ids made."""
    if not fifo.exists():
        os.mkfifo(fifo)
    failing = DockerRuntime(
        owner=rt.owner,
        runtime=RUNSC,
        network_runtime=HOSTNET,
        pull=False,
        additional_mounts=[f"type=bind,source={fifo},target=/fifo"],
    )
    failing._sandboxed = rt._sandboxed  # what `rt` made is what it must clean up
    before = set(rt._sandboxed)
    await rt.prepare(space)
    try:
        with pytest.raises(RuntimeFailure, match="starting sandbox"):
            await failing.run_step(space, _step("/bin/true"), lambda _b: None)
    finally:
        await failing.aclose()
    made = set(rt._sandboxed) - before
    assert len(made) == 1
    return made


def _left(ids: set[str]) -> list[gvisor.ShimProcess]:
    return gvisor.find(ids)


async def _gone(ids: set[str], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _left(ids):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_cleanup_ends_what_a_failed_start_left(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    ids = await _failed_start(rt, space, space.root / "fifo")
    left = _left(ids)
    # the failure this is about: the container is removed, its shim keeps running
    assert [p.kind for p in left] and all(p.container_id in ids for p in left), left
    assert gvisor.SHIM in {p.kind for p in left}
    await rt.cleanup(space)
    assert await _gone(ids), _left(ids)
    assert not set(rt._sandboxed) & ids
    (cid,) = ids
    # (removed by the shim on SIGTERM, or by the `... delete` containerd runs once the shim died:
    # a moment after the processes are gone; CI once looked while that delete still ran)
    deadline = time.monotonic() + 10.0
    while any(cid in name for name in os.listdir(RUNSC_STATE)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(cid in name for name in os.listdir(RUNSC_STATE)), (
        "runsc's state files of the container are left"
    )


async def test_janitor_after_a_restart_ends_only_our_stale_orphans(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """An executor that died after a failed start: a new one (same owner, nothing in memory) finds the
    shim by its bundle's job root; while the job is live, and for another owner, it is left alone."""
    ours = make_space()
    other_owner = f"t{random.randrange(16**8):08x}-gx"
    theirs = make_space(owner=other_owner)
    ours_ids = await _failed_start(rt, ours, ours.root / "fifo")
    other = _runtime(other_owner)
    try:
        their_ids = await _failed_start(other, theirs, theirs.root / "fifo")
        restarted = _runtime()
        try:
            assert await restarted.janitor({ours.labels[LABEL_JOB]}) == []
            assert _left(ours_ids) and _left(their_ids)
            removed = await restarted.janitor(set())
            assert any(r.startswith(gvisor.SHIM) for r in removed), removed
            assert await _gone(ours_ids), _left(ours_ids)
            assert _left(their_ids), "another owner's orphan was ended"
        finally:
            await restarted.aclose()
        await other.cleanup(theirs)
        assert await _gone(their_ids)
    finally:
        await other.aclose()


async def test_a_live_jobs_sandbox_is_never_ended(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """Janitors run while a runsc step runs: ours with the job live, another owner's with nothing
    live. The container exists, so nothing of it is an orphan: the step runs to its end."""
    space = make_space()
    await rt.prepare(space)
    out: list[bytes] = []
    task = asyncio.create_task(rt.run_step(space, _step("/bin/sh", "-c", "sleep 2; echo end"), out.append))
    restarted, other = _runtime(), _runtime(f"t{random.randrange(16**8):08x}-gx")
    try:
        # (all three, each seen by its cmdline: CI once saw the shim and the sandbox a moment before
        # the gofer's cmdline could be read)
        kinds = {gvisor.SHIM, "runsc-sandbox", "runsc-gofer"}
        for _ in range(200):
            if rt._sandboxed and {p.kind for p in _left(set(rt._sandboxed))} >= kinds:
                break
            await asyncio.sleep(0.05)
        running = _left(set(rt._sandboxed))
        assert {p.kind for p in running} >= kinds, running
        assert await restarted.janitor({space.labels[LABEL_JOB]}) == []
        assert await other.janitor(set()) == []
        result = await task
        assert result.exit_code == 0 and b"end" in b"".join(out)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await restarted.aclose()
        await other.aclose()


# --- a runtime dockerd does not know stops the executor -------------------------------------------


async def test_check_names_a_missing_runtime_and_the_entry_to_add(docker_available: None) -> None:
    rt = DockerRuntime(runtime="corral-no-such-runtime", network_runtime="runsc-hostnet-missing")
    try:
        problems = await rt.check()
    finally:
        await rt.aclose()
    text = "\n".join(problems)
    assert "'corral-no-such-runtime' is not registered" in text, text
    assert '"runtimes": {"corral-no-such-runtime": {"path": "/usr/bin/corral-no-such-runtime"}}' in text
    assert "'runsc-hostnet-missing' is not registered" in text
    assert "runc" in text  # what dockerd has is listed


def _executor_env(tmp: Path, url: str, **env: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXECUTOR_FRONTEND_URL": url,
        "EXECUTOR_FRONTEND_PASSWORD": "gvisor-test-secret-0123456789",
        "EXECUTOR_QUEUE_NAME": "batches",
        "EXECUTOR_RUNTIME": "docker",
        "EXECUTOR_WORKSPACE_ROOT": str(tmp / "ws"),
        "EXECUTOR_VM_PREFIX": OWNER,
        "EXECUTOR_CLI_PATH": CORRAL,
        **env,
    }


def test_validate_and_run_refuse_a_runtime_dockerd_lacks(docker_available: None, tmp_path: Path) -> None:
    env = _executor_env(tmp_path, NO_SERVER, EXECUTOR_DOCKER_RUNTIME="gvisor-not-registered")
    v = subprocess.run([CORRAL, "executor", "validate"], env=env, capture_output=True, text=True, timeout=120)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "'gvisor-not-registered' is not registered with the Docker Engine" in v.stdout + v.stderr
    r = subprocess.run([CORRAL, "executor", "run"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "runtime docker is not ready" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "'gvisor-not-registered' is not registered" in r.stdout + r.stderr


def test_validate_passes_with_runsc_and_names_both_runtimes(
    gvisor_available: None, tmp_path: Path, server: RunningServer
) -> None:
    env = _executor_env(
        tmp_path, server.url, EXECUTOR_DOCKER_RUNTIME="runsc", EXECUTOR_FRONTEND_PASSWORD=EXECUTOR_SECRET
    )
    v = subprocess.run([CORRAL, "executor", "validate"], env=env, capture_output=True, text=True, timeout=120)
    out = v.stdout + v.stderr
    assert v.returncode == 0, out
    assert "OCI runtime runsc / with network runsc-hostnet" in out, out


def test_start_dockerd_is_idempotent_with_dockerd_running(gvisor_available: None) -> None:
    """setup's dockerd step with dockerd up and the runtimes registered: nothing rewritten or reloaded."""
    daemon = Path("/etc/docker/daemon.json")
    before = daemon.read_bytes()
    script = Path(__file__).resolve().parents[2] / "scripts" / "start-dockerd.sh"
    for _ in range(2):
        p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "reloading dockerd" not in p.stdout and "starting dockerd" not in p.stdout, p.stdout
    assert daemon.read_bytes() == before
    assert {RUNSC, HOSTNET} <= _registered()


def test_telemetry_reports_the_runtimes(gvisor_available: None) -> None:
    rt = _runtime()
    telemetry = rt.telemetry()
    assert telemetry["dockerRuntime"] == RUNSC
    assert telemetry["dockerNetworkRuntime"] == HOSTNET
    assert telemetry["dockerVersion"]
    assert DockerRuntime().telemetry()["dockerRuntime"] == "runc"
