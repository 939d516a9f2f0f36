"""File operations on the executor host that a job or its repository cannot redirect.

THE RULE (read this before you touch a job's files from the executor):

    The executor runs as root. Everything under a job's workspace is hostile: the repository commits
    symlinks (`.corral -> /etc/profile.d`), and a step can replace any directory with a symlink
    (`rm -rf src && ln -s /var/lib/corral src`) or a FIFO, at any time while it runs. So a host-side
    operation on a path the job or repository can influence must either

    * happen inside the job's sandbox (as the job's uid, with its limits: the diff does), or
    * go through this module: every component is opened with ``O_NOFOLLOW`` relative to the file
      descriptor of a directory the executor created itself (``openat``), so a symlink anywhere on
      the path is refused instead of followed, and sizes are checked on the open descriptor
      (``fstat``) before anything is read into memory.

    Never call ``Path.write_text``, ``open()``, ``shutil.copy*``, ``os.path.exists`` or ``chown``
    (without ``follow_symlinks=False``) on a path below a workspace. Files the executor owns (step
    scripts, the docker config, ``meta.git``) live beside the workspace in the job's root directory,
    which the job never sees.

Every function here raises `UnsafePath` (a ValueError) for a path that leaves the directory, names
a symlink, or is not what was expected, and OSError for the rest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "NotRegular",
    "TooLarge",
    "UnsafePath",
    "chown_tree",
    "make_dirs",
    "open_beneath",
    "open_dir",
    "read_bounded",
    "walk",
    "write_beneath",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A path below a job directory that must not be followed."""


class NotRegular(UnsafePath):
    """Not a regular file (a directory, FIFO, device or socket)."""

    def __init__(self) -> None:
        super().__init__("not a regular file")


class TooLarge(UnsafePath):
    """A file over the size limit (checked before it is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def _parts(rel: str) -> list[str]:
    if not rel or "\0" in rel or rel.startswith("/"):
        raise UnsafePath(f"{rel!r} is not a relative path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePath(f"{rel!r} leaves its directory")
    return parts


def open_dir(path: Path) -> int:
    """A descriptor of a directory the executor made (refused if it is a symlink)."""
    return os.open(path, _DIR_FLAGS)


@contextlib.contextmanager
def walk(root_fd: int, dirs: list[str], *, create: bool) -> Iterator[int]:
    """Yield a descriptor of root/dirs[0]/.../dirs[-1], opening each component NOFOLLOW (made 0755
    when missing and `create`)."""
    fd = os.dup(root_fd)
    try:
        for part in dirs:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"refusing to follow {part!r}: it is a symlink or not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def open_beneath(root_fd: int, rel: str, flags: int, mode: int = 0o644, *, create_dirs: bool = False) -> int:
    """os.open(rel) relative to root_fd without following any symlink on the way or at the end."""
    parts = _parts(rel)
    with walk(root_fd, parts[:-1], create=create_dirs) as parent:
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(f"refusing to follow the symlink {rel!r}") from None
            raise


def make_dirs(root: Path, rel: str) -> None:
    """root/rel as a directory, each missing component made 0755, never through a symlink."""
    root_fd = open_dir(root)
    try:
        with walk(root_fd, _parts(rel), create=True):
            pass
    finally:
        os.close(root_fd)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """chown -R without following symlinks (a link is chowned itself, never its target). Only for trees
    no job process can change meanwhile (before the first step, or after the last)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def write_beneath(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    """Create or replace the regular file root/rel (parents made 0755), never through a symlink."""
    root_fd = open_dir(root)
    try:
        fd = open_beneath(
            root_fd, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, mode, create_dirs=True
        )
    finally:
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_bounded(root: Path, rel: str, limit: int) -> bytes:
    """The regular file root/rel, if it holds at most `limit` bytes (checked before reading).

    Refuses symlinks anywhere on the path, FIFOs and devices (opened non-blocking, so a FIFO the job
    planted never hangs the executor) and files over the limit (the error names it).
    """
    root_fd = open_dir(root)
    try:
        fd = open_beneath(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise TooLarge(limit)
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew after fstat
        raise TooLarge(limit)
    return data
