"""A job microVM's directory: made generic before its job is known, the job staged into it late.

Every VM (warm or cold: one code path) boots from an executor-made directory ``<vms>/<name>/``
(mode 0700; `<vms>` is next to the image cache, so its hard links work):

    scratch.ext4  the scratch disk (virtio-blk "scratch"), as large as the job's disk limit
    log/console.log  the kernel's serial console, on a tmpfs of CONSOLE_LOG_MAX bytes: a guest whose
                  root writes to ttyS0 without end fills that, not the host's disk (qemu drops what
                  no longer fits; the guest runs on)
    job/          the 9p share "job", READ-ONLY in qemu, empty at boot; `stage` puts in it
      ctl/job.sh    what init runs (guestjob.py)
      steps/        a copy of the job's step scripts
      img/<serial>.ext4  a HARD LINK of each image's cached disk (images.py): the VM sees its
                    job's images and no other; on another filesystem (EXDEV) a read-only bind
                    mount of the file instead
    cli/          the 9p share "cli", READ-ONLY in qemu, empty at boot; for a job with CLI steps
      usr/, cliroot/, cli0/...  read-only bind mounts of the host's /usr and the CLIs'
                    installations (clistep.py), bound at job time: a job without CLI steps (a
                    VM whose guest kernel a docker step broke included) sees nothing of the host
    rw/           the 9p share "rw": a read-only bind mount of itself, so that a guest can write
      ws/         nowhere in it but here: the mount point of the job's workspace, bound at job
                    time (qemu's 9p walks with O_NOFOLLOW, so a symlink would not do; it crosses
                    mounts, `multidevs=remap` keeps inode numbers apart)

Why the image links sit in a read-only share: a hard link IS the cache's file. In a writable share
the guest's root (init, or a step that broke the guest kernel) could rewrite an image every later
job runs from; qemu refuses every write to a `readonly=on` share, whoever asks. The workspace's bind
is the only thing the guest can write besides its scratch disk, and both are bounded by the job's
disk limit (the workspace's quota filesystem, the scratch disk's size). qemu serves the shares as
root with security_model=passthrough: what the guest's root asks for in `rw/ws` (a setuid-root file,
a device node where qemu allows one, any owner) is made on the host. So every bind here is nosuid,
nodev and noexec: nothing the guest made works through the path qemu serves, also for a job
without a disk limit, whose workspace has no nosuid/nodev filesystem of its own.

After the job `remove` unmounts every mount under the directory (found in /proc/self/mountinfo,
deepest first, lazily, never following a link) and deletes it without following links; the janitor
does the same for the directories of VMs it does not know (a killed executor's).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "MOUNTINFO",
    "VMDir",
    "bind",
    "mounts_under",
    "unmount_all",
]

MOUNTINFO = "/proc/self/mountinfo"
MKFS_TIMEOUT_S = 120.0
CONSOLE_LOG_MAX = 1024 * 1024  # bytes of the kernel's serial console kept on the host per VM
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 8, 32, 4096
# every bind into a VM's directory: qemu (root on the host) creates what the guest asks for in a
# passthrough share, device nodes and setuid files included; on these mounts none of them works
# on the host, whatever filesystem the workspace is on (a job without a disk limit has no own one)
_INERT = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None
) -> None:
    src = source.encode() if source is not None else None
    kind, opts = (v.encode() if v is not None else None for v in (fstype, data))
    if _libc.mount(src, target.encode(), kind, ctypes.c_ulong(flags), opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} on {target}: {os.strerror(e)}")


def bind(source: Path, target: Path, *, readonly: bool, directory: bool = True) -> None:
    """Bind `source` on `target` (both executor-made or executor-checked paths), opened with
    O_NOFOLLOW and mounted through /proc/self/fd, so a link swapped in is never followed; the bind
    is nosuid, nodev and noexec (see _INERT), and read-only with `readonly`."""
    kind = os.O_DIRECTORY if directory else 0
    src = os.open(source, _PATH | kind)
    try:
        dst = os.open(target, _PATH | kind)
        try:
            _mount(f"/proc/self/fd/{src}", f"/proc/self/fd/{dst}", _MS_BIND)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    # a bind takes no flags: remount the new mount (target resolves to it now)
    dst = os.open(target, _PATH | kind)
    try:
        flags = _MS_BIND | _MS_REMOUNT | _INERT | (_MS_RDONLY if readonly else 0)
        _mount(None, f"/proc/self/fd/{dst}", flags)
    finally:
        os.close(dst)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(top: Path, mountinfo: str = MOUNTINFO) -> list[Path]:
    """Mount points strictly below `top` (absolute), deepest first."""
    prefix = str(top).rstrip("/") + "/"
    found = []
    try:
        with open(mountinfo) as f:
            for line in f:
                parts = line.split(" ", 5)
                if len(parts) > 4 and (point := _unescape(parts[4])).startswith(prefix):
                    found.append(Path(point))
    except OSError:
        return []
    return sorted(set(found), key=lambda p: (-len(p.parts), str(p)))


def unmount_all(top: Path) -> list[Path]:
    """Lazily unmount every mount below `top` (a mount stacked twice is unmounted twice)."""
    done: list[Path] = []
    for _ in range(64):  # bounded: each round removes at least one mount or stops
        points = mounts_under(top)
        if not points:
            break
        progressed = False
        for p in points:
            if _libc.umount2(str(p).encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW) == 0:
                done.append(p)
                progressed = True
        if not progressed:
            break
    return done


class VMDir:
    """One VM's directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def scratch(self) -> Path:
        return self.path / "scratch.ext4"

    @property
    def console_log(self) -> Path:
        return self.path / "log" / "console.log"

    @property
    def job(self) -> Path:
        return self.path / "job"

    @property
    def rw(self) -> Path:
        return self.path / "rw"

    @property
    def cli(self) -> Path:
        return self.path / "cli"

    def make(self, disk_bytes: int) -> None:
        """The generic part, before qemu starts: directories, the scratch disk, rw made read-only."""
        self.path.mkdir(mode=0o700)
        log = self.console_log.parent
        log.mkdir(mode=0o700)
        fd = os.open(log, _PATH | os.O_DIRECTORY)
        try:
            size = f"size={CONSOLE_LOG_MAX},nr_inodes=16,mode=0700"
            _mount("corral-console", f"/proc/self/fd/{fd}", _INERT, "tmpfs", size)
        finally:
            os.close(fd)
        self.job.mkdir(mode=0o700)
        self.cli.mkdir(mode=0o700)
        (self.rw / "ws").mkdir(mode=0o755, parents=True)
        with self.scratch.open("wb") as f:
            f.truncate(disk_bytes)
        argv = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E"]
        argv += ["lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", str(self.scratch)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=MKFS_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise OSError(errno.EIO, f"mkfs.ext4: {proc.stderr.strip()[-300:]}")
        bind(self.rw, self.rw, readonly=True)

    def stage(
        self,
        *,
        job_sh: str,
        scripts: Path,
        images: Mapping[str, Path],
        workspace: Path,
        cli: Sequence[tuple[str, Path]] = (),
    ) -> None:
        """The job, after boot and before `go`: job.sh, the step scripts, its images, its workspace,
        and for a job with CLI steps the directories of their root (`cli`: tag -> host directory,
        each bound read-only at cli/<tag>)."""
        ctl, img = self.job / "ctl", self.job / "img"
        ctl.mkdir(mode=0o700)
        img.mkdir(mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(ctl / "job.sh", flags, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(job_sh)
        # executor-written scripts (space.scripts): copied, so the share holds no path outside it
        shutil.copytree(scripts, self.job / "steps", symlinks=True)
        for serial, disk in images.items():
            link = img / f"{serial}.ext4"
            try:
                os.link(disk, link, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                os.close(os.open(link, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400))
                bind(disk, link, readonly=True, directory=False)
        for tag, directory in cli:
            (self.cli / tag).mkdir(mode=0o755)
            bind(directory, self.cli / tag, readonly=True)
        bind(workspace, self.rw / "ws", readonly=False)

    def remove(self) -> None:
        """Unmount what is mounted below the directory, then delete it (links never followed).
        OSError, deleting nothing, while a mount is left (rmtree would walk into it)."""
        unmount_all(self.path)
        left = mounts_under(self.path)
        if left:
            raise OSError(errno.EBUSY, f"cannot unmount {', '.join(map(str, left))}")
        shutil.rmtree(self.path, ignore_errors=True)
