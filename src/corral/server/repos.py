"""Repositories the server serves to executors: bare mirrors under <data_dir>/repos."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from corral.errors import Invalid, NotFound

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\Z")
GIT_TIMEOUT = 300  # seconds for a mirror clone or fetch
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


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=GIT_TIMEOUT
    )


def mirror(repos_dir: Path, name: str, source: str) -> Path:
    """Clone `source` (a local repository path) as a bare mirror, or refresh an existing mirror."""
    check_repo_name(name)
    src = Path(source).expanduser()
    if not src.exists():
        raise Invalid(f"repository path {source!r} does not exist on the server")
    probe = _git("-C", str(src), "rev-parse", "--git-dir")
    if probe.returncode != 0:
        raise Invalid(f"{source!r} is not a git repository: {probe.stderr.strip()}")
    dest = repos_dir / f"{name}.git"
    if dest.exists():
        res = _git("-C", str(dest), "fetch", "--prune", "--quiet", str(src.resolve()), "+refs/*:refs/*")
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        res = _git("clone", "--mirror", "--quiet", str(src.resolve()), str(dest))
    if res.returncode != 0:
        raise Invalid(f"could not mirror {source!r}: {res.stderr.strip()}")
    return dest


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
