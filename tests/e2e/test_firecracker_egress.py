"""Networked jobs in the firecracker runtime end to end (issue 13, network): a real server, a real
`corral executor run` (EXECUTOR_RUNTIME=firecracker, EXECUTOR_NETWORK=deny-private) whose job VM's
qemu runs with a user-mode NIC inside the job's namespace behind the egress firewall, which leaves
through the topology the test builds (tests/netkit.py: a fake internal host, a fake metadata
service, an allowed host, a fake resolver; nothing links it to the host's network). Two VM boots:
one job with network, one without. Probes run in the guest with busybox's nc."""

from __future__ import annotations

import gzip
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.network import egress, netns
from corral.executor.runtimes.firecracker import assets as fc_assets
from corral.executor.runtimes.firecracker.vm import qemu_processes
from tests import netkit
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import Server, docker_job, logs_text, run_server, start_executor, wait_job

# One connection, 2 s at most: what the peer said, or "failed: <why>" (the trace off first: it
# reaches the log interleaved with stdout)
PROBE = (
    "set +x; "
    'probe() { o=$(busybox nc -w 2 "$1" "$2" </dev/null 2>&1) || o="failed: $o"; echo "probe $1:$2 => $o"; }'
)


IFACES = r"sed -n 's/^ *\([^ :]*\):.*/if:\1/p' /proc/net/dev"  # the guest's interfaces, one "if:NAME" each


@pytest.fixture
def topo() -> Iterator[netkit.Topology]:
    require(netkit.available() is None, netkit.available() or "")
    with netkit.topology() as t:
        yield t


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the diff's shell sandbox)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    initrd = fc_assets.DEFAULT_ASSETS_DIR / "initramfs.img"
    require(initrd.exists(), "the microVM assets are not installed (corral executor install firecracker)")
    require(
        b"lib/corral/net.sh\0" in gzip.decompress(initrd.read_bytes()),
        "the installed microVM initramfs has no guest/net.sh (run corral executor install firecracker)",
    )
    with run_server(tmp_path, max_attempts=1) as s:
        yield s


def _start(server: Server, tmp_path: Path, topo: netkit.Topology) -> str:
    prefix = f"t{secrets.token_hex(4)}-fcnet"
    start_executor(
        server,
        tmp_path,
        "firecracker",
        EXECUTOR_VM_PREFIX=prefix,
        EXECUTOR_JOB_MEMORY="256M",
        EXECUTOR_FIRECRACKER_WARM_POOL="0",  # a job with network never takes a warm VM: no boot wasted
        EXECUTOR_NETWORK="deny-private",
        EXECUTOR_NETWORK_ALLOW=f"{netkit.ALLOWED}:8080",
        EXECUTOR_NETWORK_UPLINK_NETNS=topo.gw,
    )
    return prefix


def _probes(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("probe ") and " => " in line:
            target, _, answer = line[len("probe ") :].partition(" => ")
            found[target] = answer
    return found


def _interfaces(text: str) -> set[str]:
    return {line.split(":", 1)[1] for line in text.splitlines() if line.startswith("if:")}


def _leftovers(prefix: str) -> list[str]:
    names = [n for n in netns.list_names() if n.startswith(prefix + ".")]
    names += [n for n in egress.slirp_pids().values() if n.startswith(prefix + ".")]
    names += list(qemu_processes(f"corral-fc.{prefix}.").values())
    return names


def test_a_networked_vm_job_reaches_only_the_allowed_host(
    server: Server, tmp_path: Path, topo: netkit.Topology
) -> None:
    prefix = _start(server, tmp_path, topo)
    host_port = int(server.url.rsplit(":", 1)[1])  # the corral server, on the host's loopback
    blocked = [
        (netkit.ALLOWED, 8081),  # the allowed host on a port the entry does not name
        (netkit.INTERNAL, 8080),
        (netkit.METADATA, 8080),
        (netkit.GW_ADDRESS, 8080),  # the uplink's own address (its server answers the gw itself)
        ("10.0.2.2", 8080),  # slirp4netns' gateway: the uplink's loopback
        ("10.0.2.2", host_port),
        ("10.0.3.2", host_port),  # qemu's gateway: the job namespace's loopback, not the host's
        ("127.0.0.1", host_port),  # the guest's own loopback
    ]
    script = [
        PROBE,
        f"probe {netkit.ALLOWED} 8080",
        f"probe {netkit.DNS_NAME} 8080",  # by name: the guest's resolver, through both user-mode stacks
        *(f"probe {a} {p}" for a, p in blocked),
        IFACES,
        "cat /etc/resolv.conf",
    ]
    job = server.client.submit("batches", docker_job(*script, network=True))
    state = wait_job(server, job["id"], timeout=240)
    text = logs_text(server, job["id"])
    assert state["state"] == "completed", (state, text)
    seen = _probes(text)
    assert seen[f"{netkit.ALLOWED}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
    assert seen[f"{netkit.DNS_NAME}:8080"] == f"hello from {netkit.ALLOWED}:8080", text
    for address, port in blocked:
        answer = seen[f"{address}:{port}"]
        assert answer.startswith("failed") and "hello" not in answer, (address, port, text)
    assert _interfaces(text) == {"lo", "eth0"}, text
    assert "nameserver 10.0.2.3" in text, text  # slirp4netns' resolver: the one the rules allow
    # the blocked hosts are there: from the uplink they answer
    assert topo.probe(topo.gw, netkit.INTERNAL, 8080).startswith("hello")
    assert topo.probe(topo.gw, netkit.ALLOWED, 8081).startswith("hello")
    assert topo.probe(topo.gw, netkit.METADATA, 8080).startswith("hello")
    assert _leftovers(prefix) == []  # no qemu, no namespace, no slirp4netns after the job


def test_a_vm_job_without_network_has_only_loopback(
    server: Server, tmp_path: Path, topo: netkit.Topology
) -> None:
    prefix = _start(server, tmp_path, topo)  # an executor that gives network to jobs asking for it
    script = [PROBE, f"probe {netkit.ALLOWED} 8080", IFACES]
    job = server.client.submit("batches", docker_job(*script))
    state = wait_job(server, job["id"], timeout=240)
    text = logs_text(server, job["id"])
    assert state["state"] == "completed", (state, text)
    assert _probes(text)[f"{netkit.ALLOWED}:8080"].startswith("failed"), text
    assert _interfaces(text) == {"lo"}, text
    assert not any(n.startswith(prefix + ".") for n in netns.list_names())  # no namespace was made
    assert _leftovers(prefix) == []

