"""A job's private workspace on the executor host: clone, files, and what the job produced.

Layout, per job: `<root>/` (0700, root-owned) holds `workspace/` (what the sandbox sees at /data),
`meta.git/` (our own git dir for computing the diff) and `docker/` (a private docker config).

The job owns `workspace/` and everything in it, including `.git`: a hostile job can rewrite its git
config (fsmonitor, filters, hooks...). So after the steps, git on the host never reads the
workspace's git config: the diff is computed with `meta.git`, a git dir of ours whose objects come
from the clone via alternates, and files are read without following links out of the workspace.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from corral.errors import RuntimeFailure
from corral.protocol import Job, check_workspace_path

SCRIPTS_DIR = ".corral"  # inside the workspace: step scripts (excluded from the diff)
MAX_DIFF = 32 * 1024 * 1024  # bytes
MAX_OUTPUT_FILE = 16 * 1024 * 1024  # bytes per declared output file
GIT_TIMEOUT = 600  # seconds for one git command

Writer = Callable[[bytes], None]


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "LANG": "C.UTF-8",
    }
    env.update(extra or {})
    return env


async def run(argv: list[str], *, cwd: Path | None, env: Mapping[str, str], out: Writer | None = None) -> int:
    """Run a host command, streaming merged output to `out`; kill it if the task is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            while chunk := await proc.stdout.read(65536):
                if out is not None:
                    out(chunk)
            return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def capture(argv: list[str], *, cwd: Path | None, env: Mapping[str, str]) -> tuple[int, bytes]:
    buf = bytearray()
    rc = await run(argv, cwd=cwd, env=env, out=buf.extend)
    return rc, bytes(buf)


def clone_commands(job: Job, url: str) -> list[tuple[str, list[str]]]:
    """The git commands that put the job's commit in the workspace, as (log key, argv)."""
    cmds = [
        ("setup.git.init", ["git", "init", "--quiet"]),
        ("setup.git.add-remote", ["git", "remote", "add", "origin", url]),
        ("setup.git.disable-gc", ["git", "config", "--local", "gc.auto", "0"]),
    ]
    fetch = ["git", "-c", "protocol.version=2", "fetch", "--progress", "--no-recurse-submodules"]
    fetch.append("--tags" if job.fetch_tags else "--no-tags")
    if job.shallow_clone:
        fetch.append("--depth=1")
    if job.sparse_checkout:
        fetch.append("--filter=blob:none")
    fetch += ["origin", job.commit]
    cmds.append(("setup.git.fetch", fetch))
    if job.sparse_checkout:
        cmds.append(
            ("setup.git.sparse-checkout-config", ["git", "config", "--local", "core.sparseCheckout", "1"])
        )
        cmds.append(
            (
                "setup.git.sparse-checkout-set",
                ["git", "sparse-checkout", "set", "--no-cone", "--", *job.sparse_checkout],
            )
        )
    cmds.append(("setup.git.checkout", ["git", "checkout", "--quiet", "--force", job.commit]))
    # The job never needs the server's URL; leave a name so `git remote -v` still says something.
    cmds.append(("setup.git.set-remote", ["git", "remote", "set-url", "origin", job.repository_name]))
    return cmds


def auth_env(headers: Mapping[str, str]) -> dict[str, str]:
    """Git config for the fetch, passed in the environment so it never lands in .git/config."""
    env = {"GIT_CONFIG_COUNT": str(len(headers))}
    for i, (k, v) in enumerate(headers.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = "http.extraHeader"
        env[f"GIT_CONFIG_VALUE_{i}"] = f"{k}: {v}"
    return env


def write_files(workspace: Path, files: Mapping[str, bytes]) -> None:
    """Write the job's files, refusing paths that leave the workspace (also through symlinks)."""
    for rel, data in files.items():
        norm = check_workspace_path(rel)
        target = _safe_path(workspace, norm, create_parents=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _safe_path(workspace: Path, norm: str, *, create_parents: bool) -> Path:
    """workspace/norm, checking that no existing component is a symlink or leaves the workspace."""
    cur = workspace
    parts = norm.split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if i < len(parts) - 1:
                if not create_parents:
                    raise RuntimeFailure(f"{norm}: no such file in the workspace", reason="files") from None
                os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RuntimeFailure(f"refusing to follow the symlink {norm!r} in the workspace", reason="files")
    return cur


def read_outputs(workspace: Path, paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """Declared output files as base64, plus problems (missing, too large, a link) in plain words."""
    files: dict[str, str] = {}
    problems: list[str] = []
    for rel in paths:
        try:
            target = _safe_path(workspace, check_workspace_path(rel), create_parents=False)
            # O_NONBLOCK: a FIFO planted by the job must not hang us; checked as not regular below.
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (RuntimeFailure, ValueError, OSError) as exc:
            problems.append(f"output {rel}: {exc}")
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            problems.append(f"output {rel}: not a regular file")
            continue
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_OUTPUT_FILE + 1)
        if len(data) > MAX_OUTPUT_FILE:
            problems.append(f"output {rel}: larger than {MAX_OUTPUT_FILE} bytes")
            continue
        files[rel] = base64.b64encode(data).decode()
    return files, problems


async def prepare_meta_git(root: Path, repo: Path, commit: str) -> Path:
    """Our own git dir for the diff, made right after checkout (before any step runs)."""
    meta = root / "meta.git"
    env = git_env()
    rc, out = await capture(["git", "init", "--quiet", "--bare", str(meta)], cwd=root, env=env)
    if rc != 0:
        raise RuntimeFailure(f"git init of the diff dir failed: {out.decode(errors='replace')}", reason="git")
    (meta / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (meta / "objects" / "info" / "alternates").write_text(str(repo / ".git" / "objects") + "\n")
    (meta / "info").mkdir(exist_ok=True)
    (meta / "info" / "exclude").write_text(f"/{SCRIPTS_DIR}/\n")
    shallow = repo / ".git" / "shallow"
    if shallow.exists():  # a shallow clone: its history ends there, for our git dir too
        shutil.copyfile(shallow, meta / "shallow")
    # Pin the clone's objects in our own store now: the job could delete or rewrite its .git.
    rc, out = await capture(
        ["git", "--git-dir", str(meta), "update-ref", "refs/corral/base", commit], cwd=root, env=env
    )
    if rc != 0:
        raise RuntimeFailure(f"git update-ref failed: {out.decode(errors='replace')}", reason="git")
    rc, out = await capture(["git", "--git-dir", str(meta), "repack", "-a", "-d", "-q"], cwd=root, env=env)
    if rc != 0:
        raise RuntimeFailure(f"git repack failed: {out.decode(errors='replace')}", reason="git")
    (meta / "objects" / "info" / "alternates").unlink()
    rc, out = await capture(
        ["git", "--git-dir", str(meta), "--work-tree", str(repo), "read-tree", commit], cwd=root, env=env
    )
    if rc != 0:
        raise RuntimeFailure(f"git read-tree failed: {out.decode(errors='replace')}", reason="git")
    return meta


async def diff(meta: Path, repo: Path, commit: str) -> str:
    """Everything the steps changed in the repository, as a binary-safe git diff."""
    env = git_env({"GIT_DIR": str(meta), "GIT_WORK_TREE": str(repo)})
    base = ["git", "-c", "core.bare=false", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
    rc, out = await capture([*base, "add", "--all", "--", "."], cwd=repo, env=env)
    if rc != 0:
        raise RuntimeFailure(
            f"git add for the diff failed: {out.decode(errors='replace')[:2000]}", reason="git"
        )
    rc, out = await capture([*base, "diff", "--cached", "--binary", "--no-color", commit], cwd=repo, env=env)
    if rc != 0:
        raise RuntimeFailure(f"git diff failed: {out.decode(errors='replace')[:2000]}", reason="git")
    if len(out) > MAX_DIFF:
        raise RuntimeFailure(f"the diff is {len(out)} bytes, over the limit of {MAX_DIFF}", reason="diff")
    return out.decode("utf-8", "replace")


def remove_tree(path: Path) -> None:
    """Remove a job directory (never following links)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
