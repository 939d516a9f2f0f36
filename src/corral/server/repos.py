"""Repositories the server serves to executors: bare mirrors under <data_dir>/repos.

A repository is added from a local git repository (a path, or a `file://` URL: the server never
fetches over the network for it). Its mirror is refreshed from that source on `corral repo add`
again, on `corral repo refresh`, and when a job names a moving revision (`HEAD`, a branch, a tag:
anything but a full commit id), so that `HEAD` means "now", not "as of the last repo add". Each
fetch is bounded (REFRESH_TIMEOUT); refreshes of one mirror are serialised, and a request that had
to wait for one that started after it arrived takes that one's result instead of fetching again
(a batch of a hundred jobs for one repository fetches once or twice, not a hundred times).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from corral.errors import Invalid, NotFound

__all__ = [
    "REPO_NAME_RE",
    "Mirrors",
    "check_repo_name",
    "is_full_commit",
    "mirror",
    "remove_mirror",
    "resolve_commit",
    "source_path",
]

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\Z")
FULL_COMMIT_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?\Z")  # SHA-1 or SHA-256 object id
GIT_TIMEOUT = 300  # seconds for the first mirror clone
REFRESH_TIMEOUT = 60  # seconds for the fetch that refreshes a mirror
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/bin:/bin",
}


def check_repo_name(name: str) -> str:
    if (
        not REPO_NAME_RE.match(name)
        or any(p in (".", "..") for p in name.split("/"))
        or name.endswith(".git")
    ):
        raise Invalid(
            f"invalid repository name {name!r}: use letters, digits, '.', '_', '-' and '/' between parts"
        )
    return name


def is_full_commit(rev: str) -> bool:
    """A full object id names one commit for good: no refresh can change what it means."""
    return bool(FULL_COMMIT_RE.match(rev))


def source_path(source: str) -> Path:
    """The local path a repository source names: a path, or a `file://` URL (file:///srv/api)."""
    if "://" not in source:
        return Path(source).expanduser()
    url = urlsplit(source)
    if url.scheme != "file":
        raise Invalid(
            f"repository source {source!r}: only local repositories can be added "
            "(a path on the server, or a file:// URL)"
        )
    if url.netloc not in ("", "localhost"):
        raise Invalid(f"repository source {source!r}: a file:// URL names no host (file:///path)")
    return Path(unquote(url.path))


def _git(
    *args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Invalid(f"git {args[0]} did not finish within {timeout:.0f}s") from None


def _checked_source(source: str) -> Path:
    src = source_path(source)
    if not src.exists():
        raise Invalid(f"repository path {source!r} does not exist on the server")
    probe = _git("-C", str(src), "rev-parse", "--git-dir")
    if probe.returncode != 0:
        raise Invalid(f"{source!r} is not a git repository: {probe.stderr.strip()}")
    return src.resolve()


def mirror(repos_dir: Path, name: str, source: str, *, timeout: float = GIT_TIMEOUT) -> Path:
    """Clone `source` (a local repository path or file:// URL) as a bare mirror, or refresh an
    existing mirror from it."""
    check_repo_name(name)
    src = _checked_source(source)
    dest = repos_dir / f"{name}.git"
    if dest.exists():
        res = _git(
            "-C", str(dest), "fetch", "--prune", "--quiet", str(src), "+refs/*:refs/*", timeout=timeout
        )
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        res = _git("clone", "--mirror", "--quiet", str(src), str(dest), timeout=timeout)
    if res.returncode != 0:
        raise Invalid(f"could not mirror {source!r}: {res.stderr.strip()}")
    return dest


def remove_mirror(repos_dir: Path, rel: str) -> None:
    """Delete the mirror at `rel` (as the store recorded it) and the folders it leaves empty. The
    path was made by the server from a checked name; it is still checked to stay inside repos_dir
    and removed without following links."""
    root = repos_dir.resolve()
    path = root / rel
    if root not in path.parents or ".." in Path(rel).parts:
        raise Invalid(f"refusing to remove {rel!r}: not a mirror under {root}")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    parent = path.parent
    while parent != root:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def resolve_commit(bare: Path, commit: str, repo_name: str) -> str:
    """The full commit id `commit` names in the repository, or Invalid saying it does not exist."""
    if not bare.exists():
        raise NotFound(f"repository {repo_name!r} is registered but its mirror {bare} is missing")
    if not commit or commit.startswith("-") or len(commit) > 255:
        raise Invalid(f"invalid commit {commit!r}")
    res = _git(
        "-C", str(bare), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}"
    )
    if res.returncode != 0:
        raise Invalid(f"commit {commit!r} does not exist in repository {repo_name!r}")
    return res.stdout.strip()


class Mirrors:
    """Serialised, coalesced refreshes of the mirrors (see the module docstring). Thread-safe: the
    routes call `refresh` from worker threads."""

    def __init__(self, repos_dir: Path, *, timeout: float = REFRESH_TIMEOUT) -> None:
        self.repos_dir, self.timeout = repos_dir, timeout
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._started: dict[str, float] = {}  # name -> when the last successful refresh began

    def refresh(self, name: str, source: str) -> Path:
        asked = time.monotonic()
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            dest = self.repos_dir / f"{name}.git"
            if self._started.get(name, -1.0) >= asked and dest.exists():
                return dest  # a fetch that began after we asked has just finished
            began = time.monotonic()
            dest = mirror(self.repos_dir, name, source, timeout=self.timeout)
            self._started[name] = began
            return dest

    def forget(self, name: str) -> None:
        with self._guard:
            self._started.pop(name, None)
