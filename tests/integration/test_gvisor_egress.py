"""A runsc job behind the egress firewall (EXECUTOR_NETWORK=deny-private): the docker runtime puts a
gVisor step (runtime runsc-hostnet, so the host kernel's stack inside the job's namespace carries its
traffic and the namespace's nftables apply) into the job's pause-container namespace, and it reaches
only what the policy allows. Every address probed lives in namespaces the test builds
(tests/netkit.py); nothing links them to the host's network."""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.executor.network import NetworkPolicy, egress, netns
from corral.executor.runtimes.base import JobSpace, Limits, Step
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.workspace.host import job_root_name
from tests import netkit
from tests.conftest import docker_ok, require

pytestmark = pytest.mark.docker

OWNER = f"t{random.randrange(16**8):08x}-ge"
PROBE = 'probe() { o=$(nc -w 3 "$1" "$2" </dev/null 2>&1) || o="failed: $o"; echo "probe $1:$2 => $o"; }'


@pytest.fixture
def topo() -> Iterator[netkit.Topology]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(shutil.which("runsc") is not None, "runsc is not installed (scripts/setup.sh installs it)")
    require(netkit.available() is None, netkit.available() or "")
    with netkit.topology(f"cgv{random.randrange(16**4):04x}") as t:
        yield t


@pytest.fixture
async def rt(topo: netkit.Topology) -> AsyncIterator[DockerRuntime]:
    runtime = DockerRuntime(owner=OWNER, runtime="runsc", network_runtime="runsc-hostnet", pull=False)
    problems = await runtime.check()
    require(not problems, "; ".join(problems))
    yield runtime
    await runtime.aclose()


def _probes(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("probe ") and " => " in line:
            target, _, answer = line[len("probe ") :].partition(" => ")
            found[target] = answer
    return found


async def test_a_runsc_job_gets_the_filtered_egress(
    rt: DockerRuntime, topo: netkit.Topology, tmp_path: Path
) -> None:
    job_id = random.randrange(10**8, 10**9)
    root = tmp_path / job_root_name(OWNER, "gvegress", job_id, 1, "abcdef")
    (root / "workspace").mkdir(parents=True)
    root.chmod(0o700)
    space = JobSpace(
        job_id=job_id,
        queue="gvegress",
        root=root,
        workspace=root / "workspace",
        limits=Limits(cpus=1, memory_bytes=256 * 1024**2, pids=1024),
        network=NetworkPolicy.deny_private([f"{netkit.ALLOWED}:8080"], uplink=topo.gw),
        kill_grace=1.0,
        owner=OWNER,
    )
    script = "; ".join(
        [
            PROBE,
            "uname -r",
            "dmesg | head -n 1",
            f"probe {netkit.ALLOWED} 8080",
            f"probe {netkit.ALLOWED} 8081",
            f"probe {netkit.INTERNAL} 8080",
            f"probe {netkit.METADATA} 8080",
            f"probe {netkit.GW_ADDRESS} 8080",
            "cut -d: -f1 /proc/net/dev | tr -d ' '",
        ]
    )
    chunks: list[bytes] = []
    try:
        await rt.prepare(space)
        step = Step(
            key="step.docker.0",
            kind="docker",
            index=0,
            image="corral/busybox:1",
            argv=("/bin/sh", "-c", script),
        )
        result = await rt.run_step(space, step, chunks.append)
    finally:
        await rt.cleanup(space)
    text = b"".join(chunks).decode(errors="replace")
    assert result.exit_code == 0, text
    assert text.startswith("4.4.0\n") and "Starting gVisor" in text, text  # in gVisor's kernel
    seen = _probes(text)
    assert seen[f"{netkit.ALLOWED}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
    for target in (f"{netkit.ALLOWED}:8081", f"{netkit.INTERNAL}:8080", f"{netkit.METADATA}:8080"):
        assert seen[target].startswith("failed") and "hello" not in seen[target], (target, text)
    assert seen[f"{netkit.GW_ADDRESS}:8080"].startswith("failed"), text
    assert "No route to host" in seen[f"{netkit.INTERNAL}:8080"], text  # refused by the firewall
    assert "tap0" in text.split(), text  # the namespace's interface, not gVisor's netstack
    # the blocked hosts are really there: only the firewall kept the job from them
    assert topo.probe(topo.gw, netkit.INTERNAL, 8080).startswith("hello")
    assert topo.probe(topo.gw, netkit.ALLOWED, 8081).startswith("hello")
    assert [n for n in netns.list_names() if n.startswith(OWNER + ".")] == []
    assert [n for n in egress.slirp_pids().values() if n.startswith(OWNER + ".")] == []
