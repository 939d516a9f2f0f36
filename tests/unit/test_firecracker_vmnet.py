"""The NIC of a firecracker job's VM (`vmnet`, `vm.qemu_argv`): no VM boots here (the VMs are in
tests/e2e/test_firecracker_egress.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from corral.executor.network.policy import NetworkPolicy
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.firecracker import vmnet
from corral.executor.runtimes.firecracker.assets import Assets
from corral.executor.runtimes.firecracker.vm import VMConfig, qemu_argv
from tests.conftest import require


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


def test_net_root_replaces_what_the_image_has_and_never_follows_it(tmp_path: Path) -> None:
    """guest/net.sh's net_root, run by busybox here: the image's symlinked /etc and /etc/resolv.conf
    are replaced in the step's root, what they pointed at is untouched (init writes as root, outside
    the step's chroot); without a NIC it changes nothing."""
    busybox = shutil.which("busybox") or ""
    require(bool(busybox), "busybox-static is not installed (scripts/setup.sh)")
    body = (Path(vmnet.__file__).parent / "guest" / "net.sh").read_text()
    func = body[body.index("net_root() {") :]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "resolv.conf").write_text("nameserver 10.255.255.53\n")

    def run(root: Path, nic: str) -> None:
        sh = f'die() {{ echo "die: $*"; exit 1; }}\n{func}\nNET_IF={nic} NET_DNS=10.0.2.3\nnet_root "$1"\n'
        subprocess.run([busybox, "sh", "-c", sh, "-", str(root)], check=True, timeout=20)

    linked = tmp_path / "r1"
    linked.mkdir()
    (linked / "etc").symlink_to(outside)
    run(linked, "eth0")
    assert not (linked / "etc").is_symlink()
    assert (linked / "etc" / "resolv.conf").read_text() == "nameserver 10.0.2.3\noptions ndots:0\n"
    assert (outside / "resolv.conf").read_text() == "nameserver 10.255.255.53\n"

    target = tmp_path / "r2"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "resolv.conf").symlink_to(outside / "resolv.conf")
    run(target, "eth0")
    assert not (target / "etc" / "resolv.conf").is_symlink()
    assert (outside / "resolv.conf").read_text() == "nameserver 10.255.255.53\n"

    untouched = tmp_path / "r3"
    (untouched / "etc").mkdir(parents=True)
    (untouched / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    run(untouched, "")  # no NIC
    assert (untouched / "etc" / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"
