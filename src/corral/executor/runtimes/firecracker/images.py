"""Docker images as read-only ext4 disks for the microVMs, made once per image id and cached (LRU).

The image is pulled on the host by the docker runtime's machinery (registry checks, the job's own
credentials: they never enter a VM). `ImageDisks.disk(image_id)` then turns it into a disk:

1. `POST /containers/create` (never started) and `GET /containers/{id}/export`: the image's merged
   filesystem as one tar stream, written to a temporary file (at most MAX_IMAGE_BYTES);
2. the tar is unpacked by `safe_extract`: the image is hostile (its author chose every name and
   link), so every entry is created relative to a directory descriptor with O_NOFOLLOW on each
   component; a member below a symlink, "..", an absolute name, a device node or a FIFO is refused
   or skipped; symlinks are created as they are (never followed here), hard links only to files
   already extracted; modes and owners are set on descriptors; sizes and entry counts are bounded;
3. `mkfs.ext4 -d` builds the disk from that directory (no loop mount, no root filesystem access).

The cache is a directory of `<id>.ext4` files plus `<id>.json` (the image's Env), bounded by
`max_bytes`: after each new disk, the least recently used disks that no running VM holds are
removed until the total fits. The cache is shared by every executor of the host (each
EXECUTOR_VM_PREFIX), so "held" is said on the filesystem, not only in one process's memory: while
an executor holds a disk (from `disk` until `release`) it keeps a hard link of it in
`.held/<pid>-<instance>-<id>`, and a VM's directory links the disk too (shares.py); a disk with more than one
link is never evicted, by any executor (before, another executor's eviction could remove a disk this
one had just handed to a job, whose staging then failed, and counted a disk a running VM still
linked as freed). Links of executors that are gone are cleared by the janitor (`clear_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import DockerAPIError, Reason, RuntimeFailure
from corral.executor import safefs
from corral.executor.runtimes.docker.api import DockerAPI

__all__ = ["DEFAULT_CACHE_BYTES", "ImageDisk", "ImageDisks", "safe_extract"]

log = logging.getLogger("corral.executor.runtimes.firecracker")

DEFAULT_CACHE_BYTES = 20 * 1024**3  # the image disk cache (sum of the .ext4 files)
MAX_IMAGE_BYTES = 16 * 1024**3  # one image's exported filesystem
MAX_ENTRIES = 1_000_000  # files, directories and links in one image
# directories an entry lies below: each entry is opened component by component (never following a
# link), so a hostile image of deep names cost entries x depth system calls on the host, hours
# for one image within the byte bounds; real images stay far below (PATH_MAX is 4096 bytes)
MAX_DEPTH = 256
MAX_EXTRACT_S = 600.0  # seconds one image's extraction may take (mkfs has MKFS_TIMEOUT_S of its own)
STOP_POLL_S = 0.1  # seconds between looks at a conversion's stop flag while mkfs runs
EXPORT_CHUNK = 1 << 20
MKFS_TIMEOUT_S = 600.0
HELD_DIR = ".held"  # <cache>/.held/<pid>-<instance>-<id>: a hard link per disk an executor holds
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


@dataclass(frozen=True)
class ImageDisk:
    image_id: str
    path: Path  # the disk (this executor's .held link of it: valid until `release`)
    env: tuple[str, ...]  # the image's Env, NAME=VALUE


class UnsafeImage(ValueError):
    """An image whose filesystem cannot be unpacked safely or within its bounds."""


# --- safe extraction ---------------------------------------------------------------------------------


def _name_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if "\0" in name or any(p == ".." for p in parts):
        raise UnsafeImage(f"image entry {name!r} leaves the image's root")
    if len(parts) > MAX_DEPTH:
        raise UnsafeImage(f"image entry {name[:200]!r}... lies more than {MAX_DEPTH} directories deep")
    return parts


@contextlib.contextmanager
def _parent(root_fd: int, parts: list[str], *, create: bool) -> Iterator[int]:
    """safefs.walk, an image entry below a symlink or a file refused as the image's fault."""
    try:
        with safefs.walk(root_fd, parts, create=create) as fd:
            yield fd
    except safefs.UnsafePath as exc:
        raise UnsafeImage(f"image entry below a symlink or a file: {exc}") from None


def _remove_existing(parent: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeImage(f"image entry {name!r} replaces a directory")
    os.unlink(name, dir_fd=parent)


class Stopped(Exception):
    """The conversion was stopped (its job was cancelled)."""


def safe_extract(
    tar_path: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_seconds: float = MAX_EXTRACT_S,
    stop: threading.Event | None = None,
) -> int:
    """Unpack the tar at tar_path into the empty directory dest (see the module docstring); returns
    the number of entries. Raises UnsafeImage for what it refuses, Stopped once `stop` is set."""
    root_fd = os.open(dest, _DIR)
    dir_modes: list[tuple[list[str], int, int, int]] = []
    total = count = 0
    deadline = time.monotonic() + max_seconds
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                count += 1
                if count > MAX_ENTRIES:
                    raise UnsafeImage(f"the image has more than {MAX_ENTRIES} entries")
                if stop is not None and stop.is_set():
                    raise Stopped()
                if count % 1024 == 0 and time.monotonic() > deadline:
                    raise UnsafeImage(f"unpacking the image took over {max_seconds:g} s ({count} entries)")
                parts = _name_parts(m.name)
                if not parts:
                    continue  # the root itself
                if m.isdir():
                    with _parent(root_fd, parts, create=True):
                        pass
                    dir_modes.append((parts, m.mode & 0o7777, m.uid, m.gid))
                    continue
                if not (m.isreg() or m.issym() or m.islnk()):
                    continue  # devices, FIFOs: the guest makes its own /dev
                with _parent(root_fd, parts[:-1], create=True) as parent:
                    last = parts[-1]
                    _remove_existing(parent, last)
                    if m.issym():
                        os.symlink(m.linkname, last, dir_fd=parent)
                        os.chown(last, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
                    elif m.islnk():
                        src = _name_parts(m.linkname)
                        if not src:
                            raise UnsafeImage(f"hard link {m.name!r} to the root")
                        with _parent(root_fd, src[:-1], create=False) as src_parent:
                            st = os.stat(src[-1], dir_fd=src_parent, follow_symlinks=False)
                            if not stat.S_ISREG(st.st_mode):
                                raise UnsafeImage(f"hard link {m.name!r} to something not a file")
                            os.link(
                                src[-1], last, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False
                            )
                    else:
                        total += m.size
                        if total > max_bytes:
                            raise UnsafeImage(f"the image's files exceed {max_bytes} bytes")
                        _write_member(tar, m, parent, last)
        for parts, mode, uid, gid in reversed(dir_modes):
            with _parent(root_fd, parts, create=False) as fd:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
    except tarfile.TarError as exc:
        raise UnsafeImage(f"the image's export is not a valid tar stream: {exc}") from exc
    finally:
        os.close(root_fd)
    return count


def _write_member(tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, last: str) -> None:
    src = tar.extractfile(m)
    if src is None:
        raise UnsafeImage(f"cannot read {m.name!r} from the export")
    fd = os.open(
        last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
    )
    with os.fdopen(fd, "wb") as out:
        left = m.size
        while left > 0:
            chunk = src.read(min(left, EXPORT_CHUNK))
            if not chunk:
                raise UnsafeImage(f"{m.name!r} is truncated in the export")
            out.write(chunk)
            left -= len(chunk)
        os.fchown(out.fileno(), m.uid, m.gid)
        os.fchmod(out.fileno(), m.mode & 0o7777)


def _mkfs(src: Path, out: Path, entries: int, stop: threading.Event | None = None) -> None:
    used = sum(e.stat(follow_symlinks=False).st_size for e in _walk_entries(src))
    size_mib = max(16, int(used * 1.3 / 1024**2) + entries * 4 // 1024 + 16)
    inodes = max(1024, int(entries * 1.2) + 256)
    argv = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", str(inodes), "-E", "root_owner=0:0"]
    argv += ["-d", str(src), str(out), f"{size_mib}M"]
    deadline = time.monotonic() + MKFS_TIMEOUT_S
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        while True:
            try:
                _, err = proc.communicate(timeout=STOP_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    if stop is not None and stop.is_set():
                        raise Stopped() from None
                    raise
    if proc.returncode != 0:
        raise UnsafeImage(f"mkfs.ext4 failed: {err.strip()[-500:]}")


def _walk_entries(top: Path) -> Iterator[os.DirEntry[str]]:
    stack = [top]  # not recursive: depth is the image's choice (bounded by MAX_DEPTH too)
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                yield e
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))


# --- the cache ----------------------------------------------------------------------------------------


class ImageDisks:
    """Image id -> its ext4 disk, made on first use. One instance serves every job of an executor."""

    def __init__(self, api: DockerAPI, cache_dir: Path, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.api, self.dir, self.max_bytes = api, cache_dir, max_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: dict[str, int] = {}
        self._token = secrets.token_hex(4)  # this cache among the caches of one process (.held names)

    @staticmethod
    def _key(image_id: str) -> str:
        key = image_id.removeprefix("sha256:")
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise RuntimeFailure(f"unexpected image id {image_id!r}", reason=Reason.IMAGE)
        return key

    def _held_link(self, key: str) -> Path:
        # <pid>-<instance>-<key>: two caches of one process (e.g. two runtimes) hold apart
        return self.dir / HELD_DIR / f"{os.getpid()}-{self._token}-{key}"

    def hold(self, image_id: str) -> None:
        """Count one more user of the disk; the first one links it into .held (FileNotFoundError
        when the disk is not in the cache)."""
        n = self._in_use.get(image_id, 0)
        if n == 0:
            key = self._key(image_id)
            (self.dir / HELD_DIR).mkdir(mode=0o700, exist_ok=True)
            link = self._held_link(key)
            with contextlib.suppress(FileNotFoundError):
                link.unlink()  # a link of an earlier process of this pid
            os.link(self.dir / f"{key}.ext4", link, follow_symlinks=False)
        self._in_use[image_id] = n + 1

    def release(self, image_id: str) -> None:
        n = self._in_use.get(image_id, 0) - 1
        if n > 0:
            self._in_use[image_id] = n
            return
        self._in_use.pop(image_id, None)
        with contextlib.suppress(OSError, RuntimeFailure):
            self._held_link(self._key(image_id)).unlink()

    async def disk(self, image_id: str, found: dict[str, Any]) -> ImageDisk:
        """The disk of the image `found` (the Engine's image inspect); held until `release`."""
        key = self._key(image_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        env = [e for e in list((found.get("Config") or {}).get("Env") or []) if isinstance(e, str)]
        async with lock:
            path, meta = self.dir / f"{key}.ext4", self.dir / f"{key}.json"
            env_list = self._hold_cached(image_id, meta)  # held first: then no executor evicts it
            if env_list is None:
                await self._make(image_id, path, env)
                env_list = self._hold_cached(image_id, meta)
                if env_list is None:
                    why = f"the disk of image {image_id[:19]} left the cache as it was made"
                    raise RuntimeFailure(why, reason=Reason.IMAGE)
            with contextlib.suppress(OSError):
                os.utime(path)  # last use, for the LRU
        await asyncio.to_thread(self._evict)
        # the held link, not the cache's name: an executor that evicted the name in the instant
        # between its check of the link count and our link leaves the link (the same file) intact
        return ImageDisk(image_id, self._held_link(key), tuple(env_list))

    def _hold_cached(self, image_id: str, meta: Path) -> list[str] | None:
        """Hold the cached disk and return its Env; None (nothing held) when it is not in the cache."""
        try:
            self.hold(image_id)
        except FileNotFoundError:
            return None
        try:
            return [str(e) for e in json.loads(meta.read_text()).get("env", [])]
        except (OSError, ValueError, AttributeError):
            self.release(image_id)  # half a cache entry: made again
            return None

    async def _make(self, image_id: str, path: Path, env: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        started = time.monotonic()
        # .make-<pid>-: clear_leftovers tells a dead executor's half-made disk from a live one's
        with tempfile.TemporaryDirectory(prefix=f".make-{os.getpid()}-", dir=self.dir) as tmp_name:
            tmp = Path(tmp_name)
            tar = tmp / "export.tar"
            await self._export(image_id, tar)
            root = tmp / "root"
            root.mkdir()
            stop = threading.Event()  # a cancelled job stops the threads before the directory goes
            try:
                entries = await _stopping(stop, safe_extract, tar, root, stop=stop)
                tar.unlink()
                part = tmp / "disk.ext4"
                await _stopping(stop, _mkfs, root, part, entries, stop)
            except (UnsafeImage, OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeFailure(
                    f"cannot convert image {image_id[:19]} to a VM disk: {exc}", reason=Reason.IMAGE
                ) from exc
            # the Env first, whole (another executor may read it as soon as the disk is there)
            meta = tmp / "meta.json"
            meta.write_text(json.dumps({"env": env}))
            os.replace(meta, path.with_suffix(".json"))
            os.replace(part, path)
        log.info(
            "firecracker: made the disk of image %s in %.1f s", image_id[:19], time.monotonic() - started
        )

    async def _export(self, image_id: str, tar: Path) -> None:
        name = f"corral-export-{os.getpid()}-{self._key(image_id)[:12]}-{time.monotonic_ns()}"
        config = {"Image": image_id, "Cmd": ["true"], "Entrypoint": [], "NetworkDisabled": True, "Labels": {}}
        try:
            cid = await self.api.container_create(name, config)
        except DockerAPIError as exc:
            raise RuntimeFailure(
                f"cannot export image {image_id[:19]}: {exc.message}", reason=Reason.IMAGE
            ) from exc
        try:
            written = 0
            with tar.open("wb") as out:
                async with self.api.stream("GET", f"/containers/{cid}/export", read_timeout=300.0) as resp:
                    async for chunk in resp.aiter_bytes(EXPORT_CHUNK):
                        written += len(chunk)
                        if written > MAX_IMAGE_BYTES + MAX_IMAGE_BYTES // 8:
                            raise RuntimeFailure(
                                f"image {image_id[:19]} exports more than {MAX_IMAGE_BYTES} bytes",
                                reason=Reason.IMAGE,
                            )
                        out.write(chunk)
        except DockerAPIError as exc:
            raise RuntimeFailure(
                f"cannot export image {image_id[:19]}: {exc.message}", reason=Reason.IMAGE
            ) from exc
        finally:
            with contextlib.suppress(DockerAPIError):
                await self.api.container_remove(cid)

    def _evict(self) -> list[str]:
        """Remove least recently used disks not in use until the cache fits max_bytes. In use: held
        by this process, or linked elsewhere (another executor's .held link, a VM's directory)."""
        held = {self._key(i) for i in self._in_use}
        disks = []
        for p in self.dir.glob("*.ext4"):
            with contextlib.suppress(OSError):
                st = p.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    disks.append((st.st_mtime, p, st.st_blocks * 512, st.st_nlink))
        total = sum(d[2] for d in disks)
        removed = []
        for _, p, size, links in sorted(disks):
            if total <= self.max_bytes:
                break
            if p.stem in held or links > 1:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                p.with_suffix(".json").unlink(missing_ok=True)
                total -= size
                removed.append(p.stem)
        if removed:
            log.info(
                "firecracker: removed %d image disks from the cache (over %d bytes)",
                len(removed),
                self.max_bytes,
            )
        return removed

    def clear_leftovers(self) -> None:
        """Remove half-made disks killed executors left: .make-<pid>-* directories whose process is
        gone, and the .held links of processes that are gone (or of this one, not held any more).
        The cache is shared by every executor of the host, and the janitor runs while jobs do, so a
        conversion still under way (this executor's or another's) is left alone."""
        if not self.dir.exists():
            return
        for p in self.dir.glob(".make-*"):
            pid = p.name.split("-")[1]
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True)
        held = self.dir / HELD_DIR
        with contextlib.suppress(OSError):
            for e in os.scandir(held):
                pid, _, rest = e.name.partition("-")
                token, _, key = rest.partition("-")
                if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                    continue  # another executor's
                if pid.isdigit() and int(pid) == os.getpid() and (token != self._token or self._holds(key)):
                    continue  # another cache of this process, or held here
                with contextlib.suppress(OSError):
                    os.unlink(e.path)

    def _holds(self, key: str) -> bool:
        """Whether this cache holds the disk `key`."""
        return any(self._key(i) == key for i in self._in_use)


async def _stopping(flag: threading.Event, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn in a thread; when cancelled, set `flag` and wait for the thread to end (it checks the flag
    often) before re-raising: before, the cancel returned at once and the temporary directory's
    removal ran beside the thread still writing into it, failed (ENOTEMPTY, which then replaced the
    cancellation: the job came out as an executor error) and left it behind for good."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        flag.set()
        await asyncio.wait({fut})
        if not fut.cancelled():
            fut.exception()  # retrieved: Stopped, or whatever ended it
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
