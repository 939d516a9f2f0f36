"""What the firecracker end-to-end tests share: the capabilities a microVM job needs, and where a
job's VM leaves traces on the host (qemu processes by name in /proc, the VM's directory, found from
its qemu's command line, job directories under the workspace root, mounts)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from corral.executor.runtimes.firecracker.assets import DEFAULT_ASSETS_DIR, ensure_assets
from corral.executor.runtimes.firecracker.vm import qemu_processes
from tests.conftest import bwrap_ok, docker_ok, require

__all__ = ["mounts_below", "pid_alive", "qemu_left", "require_microvms", "vm_dir_of", "vm_dirs"]


def require_microvms() -> None:
    """Docker (image pulls and exports), the shell sandbox (the diff), qemu and the VM assets."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the diff's shell sandbox)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    require(
        (DEFAULT_ASSETS_DIR / "manifest.json").exists(),
        "the microVM assets are not installed (corral executor install firecracker; scripts/setup.sh)",
    )
    if not _assets_checked:
        # the initramfs of this tree's guest scripts (the executor refuses another): a no-op when
        # in place, a rebuild after guest/*.sh changed
        ensure_assets(install_packages=False)
        _assets_checked.append(True)


_assets_checked: list[bool] = []


def qemu_left(prefix: str) -> dict[int, str]:
    """pid -> VM name of the qemu processes of the executor whose EXECUTOR_VM_PREFIX is `prefix`."""
    return qemu_processes(f"corral-fc.{prefix}.")


def vm_dir_of(pid: int) -> Path | None:
    """The directory of a running VM: where its scratch disk is (qemu's -drive file=.../scratch.ext4)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in argv:
        for part in arg.decode(errors="replace").split(","):
            if part.startswith("file=") and part.endswith("/scratch.ext4"):
                return Path(part.removeprefix("file=")).parent
    return None


def mounts_below(*roots: Path) -> list[str]:
    """Mount points at or below any of `roots` (a workspace's loop mount, a VM share's bind mount)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points for r in roots if p == str(r) or p.startswith(f"{r}/")]


def vm_dirs(workspace_root: Path) -> list[Path]:
    """The job directories (and their VM directories) left under an executor's workspace root."""
    if not workspace_root.is_dir():
        return []
    return sorted(p for p in workspace_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
