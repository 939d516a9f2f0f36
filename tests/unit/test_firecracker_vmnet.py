"""The NIC of a firecracker job's VM (`vmnet`, `vm.qemu_argv`): no VM boots here (the VMs are in
tests/e2e/test_firecracker_egress.py)."""

from __future__ import annotations

import os
from pathlib import Path

from corral.executor.network.policy import NetworkPolicy
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.firecracker import vmnet
from corral.executor.runtimes.firecracker.assets import Assets
from corral.executor.runtimes.firecracker.vm import VMConfig, qemu_argv


def test_the_vm_of_a_job_with_network_gets_a_nic_in_its_namespace() -> None:
    """qemu's command line (no VM boots): nsenter into the job's namespace, one user-mode NIC with
    nothing forwarded in, the guest's addresses on the kernel command line; none without network."""
    a = Assets(Path("/a"), Path("/a/vmlinux"), Path("/a/initramfs.img"), "6.1.0-0-amd64")
    root = Path("/nonexistent/job")

    def argv(policy: NetworkPolicy) -> list[str]:
        space = JobSpace(7, "batches", root, root / "workspace", owner="own", network=policy)
        return qemu_argv(VMConfig(name="vm", assets=a, nic=vmnet.nic(space)))

    filtered = argv(NetworkPolicy.deny_private(uplink="up"))
    assert filtered[:3] == ["/usr/bin/nsenter", "--net=/run/netns/own.batches-7", "--"]
    assert os.path.basename(filtered[3]).startswith("qemu-system")
    netdev = filtered[filtered.index("-netdev") + 1]
    assert netdev.startswith("user,") and "ipv6=off" in netdev
    assert not any(k in netdev for k in ("hostfwd", "guestfwd", "smb", "tftp", "bootfile"))
    assert "virtio-net-device,netdev=n0" in filtered
    cmdline = filtered[filtered.index("-append") + 1].split()
    assert "corral.net=10.0.3.15/24,10.0.3.2,10.0.2.3" in cmdline

    opened = argv(NetworkPolicy.open())  # the host's network: no namespace, qemu's own resolver
    assert os.path.basename(opened[0]).startswith("qemu-system") and "-netdev" in opened
    assert "corral.net=10.0.3.15/24,10.0.3.2,10.0.3.3" in opened[opened.index("-append") + 1].split()

    none = argv(NetworkPolicy.none())
    assert "-netdev" not in none and not any("virtio-net" in x for x in none)
    assert not any(x.startswith("corral.net=") for x in none[none.index("-append") + 1].split())
