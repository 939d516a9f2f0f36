"""What a job microVM's guest root can make of its workspace share, seen from the host (review R2).

qemu serves the shares as root with security_model=passthrough, so whatever the guest's root asks
for in its writable share happens on the host: device nodes (mknod), setuid files, any owner. The
workspace of a job without a disk limit has no filesystem of its own (no nosuid/nodev quota mount),
so the VM's binds (shares.bind) are nosuid, nodev and noexec themselves: what the guest made there
is inert on every path qemu uses. One VM boot: the guest's root makes a setuid-root copy of
busybox in /ws (and tries a device node), and a step still runs a script from its workspace
(noexec on the host does not reach the guest, which reads the file over 9p)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from corral.executor.runtimes.firecracker import assets as fc_assets
from corral.executor.runtimes.firecracker import shares
from corral.executor.runtimes.firecracker.console import Control, Output
from corral.executor.runtimes.firecracker.guestjob import GuestStep, job_script
from corral.executor.runtimes.firecracker.shares import VMDir, mounts_under, unmount_all
from corral.executor.runtimes.firecracker.vm import VM, Disk, Share, VMConfig
from tests.conftest import require

BUSYBOX = "/bin/busybox"


@pytest.fixture
def root() -> Iterator[Path]:
    """Outside pytest's temporary root (every pytest session unmounts below it) and on the host's
    root filesystem (no nosuid or nodev of its own: as a workspace without a disk limit)."""
    require(os.geteuid() == 0, "bind mounts need root")
    top = Path(tempfile.mkdtemp(prefix="corral-fc-shares-", dir="/var/tmp"))
    yield top
    unmount_all(top)
    shutil.rmtree(top, ignore_errors=True)


def _flags(path: Path) -> set[str]:
    f = os.statvfs(path).f_flag
    return {n for n, bit in (("ro", os.ST_RDONLY), ("nosuid", os.ST_NOSUID), ("nodev", os.ST_NODEV),
                              ("noexec", os.ST_NOEXEC)) if f & bit}


def _workspace(top: Path) -> Path:
    ws = top / "job" / "workspace"
    ws.mkdir(parents=True)
    (top / "job" / "scripts").mkdir()
    assert "nodev" not in _flags(ws) and "nosuid" not in _flags(ws)  # the hole this test is about
    return ws


def _image(top: Path) -> Path:
    """An image disk holding busybox as /bin/sh (no Docker needed)."""
    image_root = top / "rootfs"
    (image_root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, image_root / "bin" / "busybox")
    (image_root / "bin" / "sh").symlink_to("busybox")
    image = top / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(image_root), str(image), "16M"], check=True)
    return image


async def _run(
    top: Path,
    assets: fc_assets.Assets,
    name: str,
    job_sh: str,
    image: Path,
    ws: Path,
    on_host: Callable[[VMDir], Awaitable[None]] | None = None,
) -> tuple[list[str], bytes]:
    """Boot a generic VM as the runtime does, stage `job_sh` with the image as img0 and `ws`, say go;
    the control events and the steps' output. `on_host` runs once the VM is off, its directory still
    staged. Nothing of the VM remains after."""
    d = VMDir(top / f"vm-{name}")
    d.make(64 * 1024**2)
    vm = VM(
        VMConfig(
            name=f"corral-test-{os.getpid()}-{name}",
            assets=assets,
            memory_mib=256,
            disks=[Disk("scratch", d.scratch, readonly=False)],
            shares=[Share("job", d.job), Share("rw", d.rw, readonly=False)],
            console_log=d.console_log,
        )
    )
    out, events = b"", []
    try:
        await vm.start()
        async with asyncio.timeout(120):
            await vm.wait_ready()
            d.stage(job_sh=job_sh, scripts=top / "job" / "scripts", images={"img0": image}, workspace=ws)
            await vm.go()
            async for ev in vm.events():
                if isinstance(ev, Control):
                    events.append(ev.event)
                elif isinstance(ev, Output) and events and events[-1].startswith("start "):
                    out += ev.data
            assert await vm.wait() == 0, vm.stderr
        if on_host is not None:
            await on_host(d)
    finally:
        await vm.kill()
        d.remove()
    assert not d.path.exists() and not mounts_under(d.path)
    return events, out


def test_the_workspace_bound_into_a_vm_is_nosuid_nodev_noexec(root: Path) -> None:
    ws = _workspace(root)
    d = VMDir(root / "vm")
    d.make(8 * 1024**2)
    d.stage(job_sh="", scripts=root / "job" / "scripts", images={}, workspace=ws)
    assert _flags(d.rw) == {"ro", "nosuid", "nodev", "noexec"}
    assert _flags(d.rw / "ws") == {"nosuid", "nodev", "noexec"}
    # what a guest's root gets qemu to make in the share (qemu: root, passthrough), made here directly
    os.mknod(ws / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    shutil.copy(BUSYBOX, ws / "suid")
    os.chmod(ws / "suid", 0o4755)
    with pytest.raises(PermissionError):
        os.open(d.rw / "ws" / "null", os.O_RDONLY)  # nodev: qemu cannot open the host's device
    with pytest.raises(PermissionError):
        subprocess.run([str(d.rw / "ws" / "suid"), "true"], check=False)
    (d.rw / "ws" / "written").write_text("ok")  # still the job's writable workspace
    d.remove()
    assert not d.path.exists() and mounts_under(root) == []
    assert (ws / "written").read_text() == "ok"


async def test_a_guest_root_makes_devices_and_setuid_files_that_stay_inert_and_steps_still_exec(
    root: Path,
) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    assets = fc_assets.ensure_assets().assets
    ws = _workspace(root)
    (ws / "run.sh").write_text("#!/bin/sh\necho ran from the workspace\n")
    os.chmod(ws / "run.sh", 0o755)
    image = _image(root)
    # job.sh is sourced by init, as the guest's root: the part a step that broke the kernel controls
    # (qemu 7.2 with the fix of CVE-2023-2861 removes a device node the guest makes at once: it
    # cannot set its mode without opening it; an older qemu keeps it: then it must be inert)
    guest_root = (
        "mknod -m 666 /ws/null c 1 3 2>/dev/null\n"
        "cp /bin/busybox /ws/suid && chown 0:0 /ws/suid && chmod 4755 /ws/suid || die 'no setuid file'\n"
    )
    steps = [GuestStep(0, "img0", ["/data/run.sh"], uid=4242, gid=4242, env={"PATH": "/bin"})]

    async def on_host(d: VMDir) -> None:
        # on the host: qemu made what the guest asked for (a setuid-root file)...
        suid = (ws / "suid").stat()
        assert suid.st_mode & 0o4000 and suid.st_uid == 0
        # ...and none of it works through the share qemu serves
        if (ws / "null").exists():
            with pytest.raises(PermissionError):
                os.open(d.rw / "ws" / "null", os.O_RDONLY)
        with pytest.raises(PermissionError):
            subprocess.run([str(d.rw / "ws" / "suid"), "true"], check=False)

    events, out = await _run(root, assets, "suid", guest_root + job_script(steps), image, ws, on_host)
    assert events[:2] == ["start 0", "end 0 0 0 0 0"], (events, out)
    assert out == b"ran from the workspace\n"


async def test_a_step_that_fills_the_workspace_is_reported_as_a_full_disk(root: Path) -> None:
    """The workspace is the host's quota filesystem (EXECUTOR_FIRECRACKER_DISK_SPACE) seen over 9p:
    a step that fills it, not its scratch disk, is a full disk too (before: only its exit code)."""
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    assets = fc_assets.ensure_assets().assets  # this tree's guest scripts
    ws = _workspace(root)
    quota = root / "job" / "disk.img"
    with quota.open("wb") as f:
        f.truncate(8 * 1024**2)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(quota)], check=True)
    subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(quota), str(ws)], check=True)
    os.chown(ws, 4242, 4242)
    image = _image(root)
    fill = "dd if=/dev/zero of=/data/big bs=1M count=64 2>/dev/null; echo dd=$?; true"
    steps = [GuestStep(0, "img0", ["/bin/sh", "-c", fill], uid=4242, gid=4242, env={"PATH": "/bin"})]
    events, out = await _run(root, assets, "fill", job_script(steps), image, ws)
    assert events[0] == "start 0" and events[1].startswith("end 0 0 0 1"), (events, out)
    assert b"dd=1" in out


async def test_a_guest_flooding_the_kernel_console_fills_a_bounded_log_not_the_host_disk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's serial console goes to a file on the host (why a VM died): a guest's root writing
    to ttyS0 without end filled the host's disk; now a tmpfs of CONSOLE_LOG_MAX bytes (64 KiB here:
    the serial port is slow under TCG), and the VM still runs its job to the end."""
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    assets = fc_assets.ensure_assets().assets
    monkeypatch.setattr(shares, "CONSOLE_LOG_MAX", 64 * 1024, raising=False)
    ws = _workspace(root)
    image = _image(root)
    flood = f"head -c {shares.CONSOLE_LOG_MAX * 2} /dev/zero | tr '\\0' x > /dev/ttyS0\n"
    steps = [GuestStep(0, "img0", ["/bin/sh", "-c", "echo after"], env={"PATH": "/bin"})]
    sizes: list[int] = []

    async def on_host(d: VMDir) -> None:
        sizes.append(d.console_log.stat().st_size)

    events, out = await _run(root, assets, "flood", flood + job_script(steps), image, ws, on_host)
    assert events[:2] == ["start 0", "end 0 0 0 0 0"] and out == b"after\n", (events, out)
    assert 0 < sizes[0] <= shares.CONSOLE_LOG_MAX


async def test_a_job_without_cli_steps_sees_nothing_of_the_hosts_usr_even_as_guest_root(root: Path) -> None:
    """CLI steps run in a root of the host's /usr and the CLIs' installations. Those were 9p shares of
    every VM from boot, so a docker step that broke the guest's kernel could mount them and read all
    of the host's /usr (qemu reads as root: whatever a file's mode); now they are bound into the VM's
    read-only "cli" share only when a job with CLI steps is staged. A VM booted by the runtime and
    staged with no CLI steps: its root finds no share but "cli", and that one empty."""
    from corral.executor.runtimes.base import Limits
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    fc_assets.ensure_assets()
    ws = _workspace(root)
    owner = f"t{os.getpid()}-cli"
    docker = DockerRuntime(pull=False, owner=owner)
    limits = Limits(memory_bytes=256 * 1024**2, disk_bytes=64 * 1024**2)
    rt = FirecrackerRuntime(
        docker, owner=owner, cache_dir=root / "c", vm_dir=root / "vms", limits=limits, cli_dir=root / "cli"
    )
    probe = (
        "for t in usr cliroot cli0 cli; do mkdir -p /tmp/m$t\n"
        "  if mount -t 9p -o trans=virtio,version=9p2000.L,ro $t /tmp/m$t 2>/dev/null\n"
        '  then mark "seen $t $(ls -A /tmp/m$t | wc -l)"; umount /tmp/m$t; else mark "none $t"; fi\n'
        "done\n"
    )
    events: list[str] = []
    guest = await rt._boot(rt.shape)
    try:
        guest.dir.stage(job_sh=probe, scripts=root / "job" / "scripts", images={}, workspace=ws)
        async with asyncio.timeout(120):
            await guest.vm.go()
            async for ev in guest.vm.events():
                if isinstance(ev, Control):
                    events.append(ev.event)
    finally:
        await rt._discard(guest)
        await docker.aclose()
    assert events == ["none usr", "none cliroot", "none cli0", "seen cli 0", "done"], events
    assert not guest.dir.path.exists() and mounts_under(root) == []
