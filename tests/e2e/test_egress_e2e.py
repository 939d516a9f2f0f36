"""The egress firewall end to end (issue 12 item 1), in both sandboxes: a real server, a real
`corral executor run` with EXECUTOR_NETWORK=deny-private whose jobs leave through a namespace
topology the test builds (tests/netkit.py: a fake internal host, a fake metadata service, an allowed
host, a fake resolver; nothing links it to the host's network). Probes run inside the job with
busybox's nc (on the host for the shell runtime, in corral/busybox:1 for docker)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.network import egress, netns
from corral.executor.network.policy import NetworkPolicy
from tests import netkit
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, start_executor, stop_executor, wait_job

PROBES = [
    (netkit.ALLOWED, 8080),  # allowed (the entry names this port)
    (netkit.ALLOWED, 8081),  # the allowed host on another port
    (netkit.INTERNAL, 8080),
    (netkit.METADATA, 8080),
    (netkit.GW_ADDRESS, 8080),  # the uplink's own address
    ("10.0.2.2", 8080),  # slirp's gateway (the uplink's loopback)
    (netkit.DNS_NAME, 8080),  # the allowed host by name, through the fake resolver
]
# One connection, 3 s at most: what the peer said, or "failed: <why>". The shell's trace goes off
# first: it goes to stderr, which reaches the log interleaved with stdout, even mid-line.
PROBE = (
    "set +x; "
    'probe() { o=$(busybox nc -w 3 "$1" "$2" </dev/null 2>&1) || o="failed: $o"; echo "probe $1:$2 => $o"; }'
)


@pytest.fixture
def topo() -> Iterator[netkit.Topology]:
    require(netkit.available() is None, netkit.available() or "")
    with netkit.topology() as t:
        yield t


def _egress_env(topo: netkit.Topology) -> dict[str, str]:
    return {
        "EXECUTOR_NETWORK": "deny-private",
        "EXECUTOR_NETWORK_ALLOW": f"{netkit.ALLOWED}:8080",
        "EXECUTOR_NETWORK_UPLINK_NETNS": topo.gw,
    }


def _prefix(server: Server) -> str:
    return f"t{os.getpid()}-{server.url.rsplit(':', 1)[-1].strip('/')}"  # as kit.executor_env


def _probes(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("probe ") and " => " in line:
            target, _, answer = line[len("probe ") :].partition(" => ")
            found[target] = answer
    return found


def _leftovers(prefix: str) -> list[str]:
    names = [n for n in netns.list_names() if n.startswith(prefix + ".")]
    names += [n for n in egress.slirp_pids().values() if n.startswith(prefix + ".")]
    return names


def test_a_network_job_reaches_only_the_allowed_host(
    server: Server, tmp_path: Path, runtime: str, topo: netkit.Topology
) -> None:
    start_executor(server, tmp_path, runtime, **_egress_env(topo))
    script = [PROBE, *(f"probe {a} {p}" for a, p in PROBES), "cut -d: -f1 /proc/net/dev | tr -d ' '"]
    job = server.client.submit("batches", docker_job(*script, network=True))
    state = wait_job(server, job["id"], timeout=90)
    text = logs_text(server, job["id"])
    assert state["state"] == "completed", text
    seen = _probes(text)
    assert seen[f"{netkit.ALLOWED}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
    assert seen[f"{netkit.DNS_NAME}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
    for address, port in PROBES[1:-1]:
        answer = seen[f"{address}:{port}"]
        assert answer.startswith("failed") and "hello" not in answer, (address, port, text)
    # the blocked ones are refused at once by the firewall (admin-prohibited), not timed out
    assert "No route to host" in seen[f"{netkit.INTERNAL}:8080"], text
    assert {"lo", "tap0"} <= set(text.split()), text
    # the allowed host's other port and the internal host are really there (the probe can succeed)
    assert topo.probe(topo.gw, netkit.INTERNAL, 8080).startswith("hello")
    assert topo.probe(topo.gw, netkit.ALLOWED, 8081).startswith("hello")
    assert topo.probe(topo.gw, netkit.METADATA, 8080).startswith("hello")
    assert _leftovers(_prefix(server)) == []  # cleanup removed the namespace and slirp4netns
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=20)
    assert "corral_egress" not in tables.stdout  # the rules lived only in the job's namespace


def test_a_job_without_network_has_only_loopback(
    server: Server, tmp_path: Path, runtime: str, topo: netkit.Topology
) -> None:
    start_executor(server, tmp_path, runtime, **_egress_env(topo))
    job = server.client.submit(
        "batches", docker_job(PROBE, f"probe {netkit.ALLOWED} 8080", "cut -d: -f1 /proc/net/dev | tr -d ' '")
    )
    assert wait_job(server, job["id"], timeout=90)["state"] == "completed"
    text = logs_text(server, job["id"])
    assert _probes(text)[f"{netkit.ALLOWED}:8080"].startswith("failed"), text
    assert "lo" in text.split() and "tap0" not in text.split(), text


def test_a_job_asking_for_network_fails_on_an_executor_without(
    server: Server, tmp_path: Path, runtime: str
) -> None:
    start_executor(server, tmp_path, runtime)  # EXECUTOR_NETWORK unset: none
    job = server.client.submit("batches", docker_job("echo should-not-run", network=True))
    state = wait_job(server, job["id"], timeout=60)
    assert state["state"] == "failed", state
    assert "this executor gives jobs no network (EXECUTOR_NETWORK=none)" in str(state), state
    assert "should-not-run" not in logs_text(server, job["id"])


def test_the_janitor_removes_the_network_of_a_dead_job(
    server: Server, tmp_path: Path, runtime: str, topo: netkit.Topology
) -> None:
    """An executor killed mid-job leaves the job's namespace (and, until it notices, slirp4netns);
    the next executor with the same prefix removes both at start-up."""
    prefix = _prefix(server)
    first = start_executor(server, tmp_path, runtime, **_egress_env(topo))
    job = server.client.submit("batches", docker_job("echo started", "sleep 60", network=True))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _leftovers(prefix):
        time.sleep(0.2)
    assert _leftovers(prefix), "the job's namespace never appeared"
    first.kill()
    first.wait(10)
    assert any(n.startswith(prefix + ".") for n in netns.list_names())
    # another queue: the requeued job is not run again by it
    second = start_executor(server, tmp_path, runtime, EXECUTOR_QUEUE_NAME="other", **_egress_env(topo))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _leftovers(prefix):
        time.sleep(0.2)
    assert _leftovers(prefix) == []
    stop_executor(second)
    server.client.cancel(job["id"])


def test_the_network_sweep_removes_a_stray_namespace_and_its_slirp4netns(
    topo: netkit.Topology, tmp_path: Path
) -> None:
    """What an executor killed with its slirp4netns still running leaves (a slirp4netns started by
    hand here, without the exit fd), and a live job's network, which the sweep leaves alone."""
    owner = f"t{os.getpid()}-sweep"
    dead, alive = netns.job_netns_name(owner, "batches-1"), netns.job_netns_name(owner, "batches-2")
    subprocess.run(["ip", "netns", "add", dead], check=True, capture_output=True, timeout=20)
    slirp = ["slirp4netns", "--configure", "--disable-host-loopback", "--netns-type=path"]
    stray = subprocess.Popen(
        ["ip", "netns", "exec", topo.gw, *slirp, str(netns.path(dead)), "tap0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def main(root: Path) -> list[str]:
        policy = NetworkPolicy.deny_private(uplink=topo.gw)
        await egress.up(owner, "batches-2", policy, root)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and dead not in egress.slirp_pids().values():
                await asyncio.sleep(0.05)
            assert dead in egress.slirp_pids().values()
            removed = await egress.sweep(owner, lambda: {"batches-2"})
            assert netns.exists(alive) and alive in egress.slirp_pids().values()
            return removed
        finally:
            await egress.down(owner, "batches-2")

    try:
        assert asyncio.run(main(tmp_path)) == [dead]
        assert stray.wait(10) is not None
        assert not netns.exists(dead) and not netns.exists(alive)
        assert _leftovers(owner) == []
    finally:
        stray.kill()
        stray.wait(10)
        for name in (dead, alive):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)


def test_a_docker_jobs_shell_sandbox_steps_share_its_namespace(topo: netkit.Topology, tmp_path: Path) -> None:
    """A docker job's CLI steps and diff run in the shell sandbox: it enters the namespace the docker
    runtime made from the job's pause container (one firewall, one slirp4netns per job), and the
    cleanups of both runtimes leave nothing."""
    require(docker_ok() and bwrap_ok(), "docker, bubblewrap, cgroup v1 and root are needed")
    from corral.executor.runtimes.base import JobSpace, Limits, Step
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.shell import ShellRuntime

    owner = f"t{os.getpid()}-shared"
    root = tmp_path / "job"
    (root / "workspace").mkdir(parents=True)
    root.chmod(0o700)
    space = JobSpace(
        job_id=7,
        queue="batches",
        root=root,
        workspace=root / "workspace",
        uid=1000,
        gid=1000,
        limits=Limits(cpus=1, memory_bytes=256 * 1024**2, pids=256, disk_bytes=0),
        network=NetworkPolicy.deny_private([f"{netkit.ALLOWED}:8080"], uplink=topo.gw),
        kill_grace=1.0,
        owner=owner,
    )
    script = "; ".join([PROBE, f"probe {netkit.ALLOWED} 8080", f"probe {netkit.INTERNAL} 8080"])

    async def main() -> tuple[str, str]:
        docker = DockerRuntime(owner=owner, pull=False)
        shell = ShellRuntime(cgroup_parent=f"corral-{owner}")
        outs: list[list[bytes]] = [[], []]
        try:
            await docker.prepare(space)
            await shell.prepare(space)
            assert list(egress.slirp_pids().values()).count(f"{owner}.batches-7") == 1
            for i, (rt, image) in enumerate(((docker, "corral/busybox:1"), (shell, None))):
                step = Step(
                    key=f"step.{i}", kind="docker", index=i, image=image, argv=("/bin/sh", "-c", script)
                )
                result = await rt.run_step(space, step, outs[i].append)
                assert result.exit_code == 0, outs[i]
        finally:
            await docker.cleanup(space)
            await shell.cleanup(space)
            await docker.aclose()
        docker_text, shell_text = (b"".join(o).decode(errors="replace") for o in outs)
        return docker_text, shell_text

    try:
        for text in asyncio.run(main()):
            seen = _probes(text)
            assert seen[f"{netkit.ALLOWED}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
            assert "No route to host" in seen[f"{netkit.INTERNAL}:8080"], text
        assert _leftovers(owner) == []
    finally:
        subprocess.run(
            [
                "rmdir",
                *(
                    f"/sys/fs/cgroup/{c}/corral-{owner}"
                    for c in ("memory", "cpu", "cpuacct", "pids", "freezer")
                ),
            ],
            capture_output=True,
            timeout=20,
        )
