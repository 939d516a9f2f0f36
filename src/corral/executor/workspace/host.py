"""A job's private workspace on the executor host (`HostWorkspace`): clone, files, and what the job
produced; also the quota mount and the janitor's sweep of workspaces left behind.

Layout, per job: `<root>/` (0700, root-owned, never visible to the job) holds
- `workspace/`: the job's files, what every sandbox sees at /data. With a disk quota it is the mount
  point of the job's own filesystem (`disk.img`, a sparse loop-mounted ext4 image of that size);
- `scripts/`: the step scripts, bound read-only into the sandbox at SCRIPTS_MOUNT;
- `meta.git/`: our own git dir for the diff; runtimes may keep private files of their own here
  (the docker runtime's `docker/` config for pulls).

The job owns `workspace/` and everything in it, including `.git`: a hostile repository commits
symlinks and a hostile step can replace any directory with one. So the executor never follows a path
below the workspace (see `safefs` for the rule): files are written and outputs read with openat and
O_NOFOLLOW, and the diff runs inside the job's sandbox with our
`meta.git` (whose objects were copied from the clone before any step ran), never with the job's git
config.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import posixpath
import re
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from corral.errors import Reason, RuntimeFailure, StepFailed
from corral.executor import safefs
from corral.executor.janitor import orphans
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import META_MOUNT, WORKSPACE_MOUNT, JobSpace, Runtime, Step
from corral.executor.workspace.base import LogOpener, Results, Workspace
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER, check_workspace_dir, check_workspace_path

MAX_DIFF = 32 * 1024 * 1024  # bytes
MAX_FILES = 10_000  # files a job may ask the executor to write
MAX_OUTPUTS = 100  # declared output files read back
MAX_OUTPUT_FILE = 16 * 1024 * 1024  # bytes per declared output file
MAX_OUTPUTS_TOTAL = 16 * 1024 * 1024  # bytes of all output files together (+ MAX_DIFF < upload limit)
DIFF_ERROR_BYTES = 8 * 1024  # bytes of git's error output kept for the message
MAX_SHALLOW = 1024 * 1024  # bytes of .git/shallow (one line per shallow commit)
GIT_TIMEOUT = 600  # seconds for one git command
DISK_IMAGE = "disk.img"  # in the job root: the workspace filesystem's backing file
MKFS_EXTENDED = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACTOR_UID_HEADER = "X-Sourcegraph-Actor-UID"  # "internal": the clone runs as Sourcegraph's internal actor

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


async def run(
    argv: list[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    out: Writer | None = None,
) -> int:
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


class CloneLike(Protocol):
    """What clone_commands reads: a Job, or a plan's CloneSpec."""

    @property
    def repository_name(self) -> str: ...
    @property
    def commit(self) -> str: ...
    @property
    def fetch_tags(self) -> bool: ...
    @property
    def shallow_clone(self) -> bool: ...
    @property
    def sparse_checkout(self) -> Sequence[str] | None: ...


def clone_commands(job: CloneLike, url: str) -> list[tuple[str, list[str]]]:
    """The git commands that put the job's commit in the workspace, as (log key, argv)."""
    cmds = [
        ("setup.git.init", ["git", "init", "--quiet"]),
        ("setup.git.add-remote", ["git", "remote", "add", "origin", url]),
        ("setup.git.disable-gc", ["git", "config", "--local", "gc.auto", "0"]),
    ]
    # The fetch's options exactly as Sourcegraph's cloneRepo (cmd/executor/internal/worker/workspace/
    # clone.go): --tags when fetchTags; a shallow clone adds --no-tags (unless fetchTags) and
    # --depth=1; a sparse checkout adds --filter=blob:none there. Otherwise git's default tag following.
    # One divergence: corral fetches every blob of the commit, also for a sparse checkout (the
    # checkout stays sparse). The diff is taken against our own copy of the commit (meta.git, pinned
    # before any step runs), which needs the base blobs; a partial clone leaves them on the server and
    # the diff would fail. corral's server honours the filter for Sourcegraph's executors.
    fetch = ["git", "-c", "protocol.version=2", "fetch", "--progress", "--no-recurse-submodules"]
    if job.fetch_tags:
        fetch.append("--tags")
    if job.shallow_clone:
        if not job.fetch_tags:
            fetch.append("--no-tags")
        fetch.append("--depth=1")
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
    # A sparse checkout fetches the blobs it needs, so it speaks protocol v2 too (clone.go).
    v2 = ["-c", "protocol.version=2"] if job.sparse_checkout else []
    cmds.append(("setup.git.checkout", ["git", *v2, "checkout", "--quiet", "--force", job.commit]))
    # The job never needs the server's URL; leave a name so `git remote -v` still says something.
    cmds.append(("setup.git.set-remote", ["git", "remote", "set-url", "origin", job.repository_name]))
    return cmds


def auth_env(headers: Mapping[str, str], config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Git config for the fetch, passed in the environment so it never lands in .git/config
    (`config`: more (key, value) pairs the same way, e.g. http.sslCAInfo).

    The headers carry the job token (or the executor's shared secret), and git sends every
    http.extraHeader to whatever URL it ends up talking to: with its default
    (http.followRedirects=initial) a redirect of info/refs to another origin moves the whole fetch
    there, Authorization included. So every git call that carries the headers also gets
    http.followRedirects=false, which makes git treat any redirect as an error (git-config(1)):
    the executor's git service answers directly, and a redirect is refused before a second request
    is sent anywhere. Sourcegraph does not have this problem because its git never sees the
    headers: it clones through a reverse proxy on loopback that adds them to each request
    (newReverseProxy in cmd/executor/internal/worker/workspace/clone.go).
    """
    pairs = [("http.followRedirects", "false"), *config]
    pairs += [("http.extraHeader", f"{k}: {v}") for k, v in headers.items()]
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def write_files(workspace: Path, files: Mapping[str, bytes]) -> None:
    """Write the job's files, refusing paths that leave the workspace (also through symlinks).

    The repository was checked out before this runs and may commit symlinks: every component is
    opened with O_NOFOLLOW from the workspace's descriptor (see `safefs`).
    """
    if len(files) > MAX_FILES:
        raise RuntimeFailure(
            f"the job has {len(files)} files; at most {MAX_FILES} are allowed", reason=Reason.FILES
        )
    for rel, data in files.items():
        norm = check_workspace_path(rel)
        try:
            safefs.write_beneath(workspace, norm, data)
        except safefs.UnsafePath as exc:
            raise RuntimeFailure(f"file {norm}: {exc}", reason=Reason.FILES) from None
        except OSError as exc:
            raise RuntimeFailure(f"file {norm}: {exc.strerror or exc}", reason=Reason.FILES) from None


async def write_stream(workspace: Path, rel: str, chunks: AsyncIterator[bytes], limit: int) -> int:
    """Create or replace the regular file workspace/rel from `chunks` (parents made), never through
    a symlink (safefs); safefs.TooLarge as soon as more than `limit` bytes arrive (what was written
    stays, the job fails). Returns the size written."""
    norm = check_workspace_path(rel)
    root_fd = safefs.open_dir(workspace)
    try:
        fd = safefs.open_beneath(
            root_fd, norm, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644, create_dirs=True
        )
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "wb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise safefs.NotRegular
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise safefs.TooLarge(limit)
            f.write(chunk)
    return size


def take_file(workspace: Path, name: str, limit: int) -> bytes | None:
    """Read and remove workspace/name (a name at the top of the workspace), never following a
    link; None when it does not exist. Refuses links, FIFOs, directories and files over `limit`."""
    if not name or "/" in name or name in (".", ".."):
        raise safefs.UnsafePath(f"{name!r} is not a name at the top of the workspace")
    try:
        data = safefs.read_bounded(workspace, name, limit)
    except FileNotFoundError:
        return None
    root_fd = safefs.open_dir(workspace)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root_fd)  # unlink never follows: it removes the name itself
    finally:
        os.close(root_fd)
    return data


def read_outputs(workspace: Path, paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """Declared output files as base64, plus problems (missing, too large, a link) in plain words.

    Bounded before memory is spent: at most MAX_OUTPUTS files, each at most MAX_OUTPUT_FILE bytes and
    all together at most MAX_OUTPUTS_TOTAL bytes (sizes are checked with fstat on the open file).
    """
    files: dict[str, str] = {}
    problems: list[str] = []
    if len(paths) > MAX_OUTPUTS:
        problems.append(f"the job declares {len(paths)} outputs; only the first {MAX_OUTPUTS} are read")
    total = 0
    for rel in paths[:MAX_OUTPUTS]:
        limit = min(MAX_OUTPUT_FILE, MAX_OUTPUTS_TOTAL - total)
        try:
            data = safefs.read_bounded(workspace, check_workspace_path(rel), limit)
        except FileNotFoundError:
            problems.append(f"output {rel}: No such file or directory in the workspace")
            continue
        except safefs.TooLarge:
            if limit < MAX_OUTPUT_FILE:
                problems.append(f"output {rel}: the outputs together exceed {MAX_OUTPUTS_TOTAL} bytes")
            else:
                problems.append(f"output {rel}: larger than {MAX_OUTPUT_FILE} bytes")
            continue
        except (ValueError, OSError) as exc:
            problems.append(f"output {rel}: {exc}")
            continue
        total += len(data)
        files[rel] = base64.b64encode(data).decode()
    return files, problems


def make_dirs(workspace: Path, rel: str) -> Path:
    """workspace/rel as a directory (made as needed), never through a symlink."""
    try:
        safefs.make_dirs(workspace, rel)
    except (OSError, safefs.UnsafePath) as exc:
        raise RuntimeFailure(
            f"cannot make the directory {rel!r} in the workspace: {exc}", reason=Reason.FILES
        ) from exc
    return workspace.joinpath(*(p for p in rel.split("/") if p and p != "."))


chown_tree = safefs.chown_tree


# --- the workspace's own filesystem (disk quota) ------------------------------------------------


async def mount_quota(root: Path, workspace: Path, size: int) -> None:
    """Give the workspace its own filesystem of `size` bytes: a sparse ext4 image, loop-mounted.

    The image lives in the job's root (never seen by the job) and costs host disk only as the job
    writes; a job that fills it gets ENOSPC ("No space left on device") and nothing else on the
    host fills up. Mounted nosuid,nodev. About 40 ms on this machine (mkfs plus mount).
    """
    image = root / DISK_IMAGE
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    env = {"PATH": SBIN_PATH, "LANG": "C.UTF-8"}
    rc, out = await capture(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", MKFS_EXTENDED, str(image)],
        cwd=root,
        env=env,
    )
    if rc != 0:
        raise RuntimeFailure(f"cannot make the workspace filesystem: {_text(out)}", reason=Reason.DISK)
    rc, out = await capture(
        ["mount", "-t", "ext4", "-o", "loop,nosuid,nodev", str(image), str(workspace)], cwd=root, env=env
    )
    if rc != 0:
        raise RuntimeFailure(f"cannot mount the workspace filesystem: {_text(out)}", reason=Reason.DISK)
    with contextlib.suppress(OSError):
        os.rmdir(workspace / "lost+found")


def unmount(workspace: Path) -> None:
    """Unmount a workspace filesystem (lazily if something still holds it); the loop device goes too."""
    if not os.path.ismount(workspace):
        return
    env = {"PATH": SBIN_PATH}
    done = subprocess.run(["umount", str(workspace)], env=env, capture_output=True, timeout=60)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(workspace)], env=env, capture_output=True, timeout=60)


def check_quota_support() -> list[str]:
    """Problems that keep per-job disk quotas from working here; [] when they can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("per-job disk quotas need root (loop-mounted workspace filesystems)")
    if not os.path.exists("/dev/loop-control"):
        problems.append("per-job disk quotas need loop devices (/dev/loop-control is missing)")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if not shutil.which(tool, path=SBIN_PATH):
            problems.append(f"per-job disk quotas need {tool} (e2fsprogs, util-linux)")
    return problems


def _text(out: bytes) -> str:
    return out.decode(errors="replace").strip()[:2000]


async def prepare_meta_git(
    root: Path, repo: Path, commit: str, meta: Path | None = None, *, sparse: bool = False
) -> Path:
    """Our own git dir for the diff (`meta`, default root/meta.git), made right after checkout
    (before any step runs); `sparse`: the checkout was sparse (see _skip_worktree)."""
    meta = root / "meta.git" if meta is None else meta
    env = git_env()
    rc, out = await capture(["git", "init", "--quiet", "--bare", str(meta)], cwd=root, env=env)
    if rc != 0:
        raise RuntimeFailure(
            f"git init of the diff dir failed: {out.decode(errors='replace')}", reason=Reason.GIT
        )
    (meta / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (meta / "objects" / "info" / "alternates").write_text(str(repo / ".git" / "objects") + "\n")
    try:  # a shallow clone: its history ends there, for our git dir too
        shallow = safefs.read_bounded(repo, ".git/shallow", MAX_SHALLOW)
    except FileNotFoundError:
        pass
    else:
        (meta / "shallow").write_bytes(shallow)
    # Pin the clone's objects in our own store now: the job could delete or rewrite its .git.
    rc, out = await capture(
        ["git", "--git-dir", str(meta), "update-ref", "refs/corral/base", commit], cwd=root, env=env
    )
    if rc != 0:
        raise RuntimeFailure(f"git update-ref failed: {out.decode(errors='replace')}", reason=Reason.GIT)
    rc, out = await capture(["git", "--git-dir", str(meta), "repack", "-a", "-d", "-q"], cwd=root, env=env)
    if rc != 0:
        raise RuntimeFailure(f"git repack failed: {out.decode(errors='replace')}", reason=Reason.GIT)
    (meta / "objects" / "info" / "alternates").unlink()
    rc, out = await capture(
        ["git", "--git-dir", str(meta), "--work-tree", str(repo), "read-tree", commit], cwd=root, env=env
    )
    if rc != 0:
        raise RuntimeFailure(f"git read-tree failed: {out.decode(errors='replace')}", reason=Reason.GIT)
    if sparse:
        await _skip_worktree(root, repo, meta, env)
    return meta


SKIP_WORKTREE_BATCH = 128 * 1024  # bytes of paths per `git update-index` command line


def _explicit(repo: Path) -> list[str]:
    """git on the clone in `repo`, its git dir named (no discovery: see clone_repository)."""
    return ["git", f"--git-dir={repo / '.git'}", f"--work-tree={repo}"]


async def _skip_worktree(root: Path, repo: Path, meta: Path, env: Mapping[str, str]) -> None:
    """A sparse checkout leaves the paths outside its patterns out of the work tree, marked
    skip-worktree in the clone's index; our index gets the same marks, or the diff would delete every
    one of them. Runs right after the checkout, before any step (the clone's .git is still ours)."""
    rc, out = await capture([*_explicit(repo), "ls-files", "-t", "-z"], cwd=repo, env=env)
    if rc != 0:
        raise RuntimeFailure(f"git ls-files failed: {_text(out)}", reason=Reason.GIT)
    entries = out.split(b"\0")
    skipped = [e[2:].decode("utf-8", "surrogateescape") for e in entries if e[:2] == b"S "]
    git = ["git", "--git-dir", str(meta), "--work-tree", str(repo), "update-index", "--skip-worktree", "--"]
    while skipped:
        batch: list[str] = []
        size = 0
        while skipped and (not batch or size + len(skipped[-1]) < SKIP_WORKTREE_BATCH):
            batch.append(skipped.pop())
            size += len(batch[-1]) + 1
        rc, out = await capture([*git, *batch], cwd=root, env=env)
        if rc != 0:
            raise RuntimeFailure(f"git update-index failed: {_text(out)}", reason=Reason.GIT)


SandboxRun = Callable[[Sequence[str], Mapping[str, str], Writer], Awaitable[int]]
"""Runs argv in the job's sandbox as the job's user, with the workspace at WORKSPACE_MOUNT and
meta.git at META_MOUNT (read-write); streams merged output to the writer; returns the exit code."""


class Bounded:
    """An output sink that keeps at most `limit` bytes and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.buf, self.total = limit, bytearray(), 0

    def __call__(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]


def _git(meta: str, worktree: str) -> list[str]:
    return [
        "git",
        f"--git-dir={meta}",
        f"--work-tree={worktree}",
        "-c",
        "core.bare=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.autocrlf=false",
    ]


async def diff(
    run: SandboxRun,
    repo_dir: str,
    commit: str,
    *,
    limit: int = MAX_DIFF,
    workspace: str = WORKSPACE_MOUNT,
    meta: str = META_MOUNT,
) -> str:
    """`diff_bytes` as text (invalid UTF-8 replaced, as the results upload carries it)."""
    raw = await diff_bytes(run, repo_dir, commit, limit=limit, workspace=workspace, meta=meta)
    return raw.decode("utf-8", "replace")


async def diff_bytes(
    run: SandboxRun,
    repo_dir: str,
    commit: str,
    *,
    limit: int = MAX_DIFF,
    workspace: str = WORKSPACE_MOUNT,
    meta: str = META_MOUNT,
) -> bytes:
    """Everything the steps changed in the repository, as a binary-safe git diff.

    It runs inside the job's sandbox (`run`), never on the host: the steps may have replaced the
    repository directory or anything in it with a symlink to a host path, and git on the host would
    follow it as root. In the sandbox git sees only what the job could see anyway, runs as the job's
    user under its memory and CPU limits, and the output is cut at `limit` bytes (the job fails
    with a message naming the limit) before more memory is spent. `workspace` and `meta` are where
    `run` sees the workspace and meta.git (a pod's main container: its own mounts).
    """
    worktree = posixpath.join(workspace, repo_dir) if repo_dir else workspace
    git = _git(meta, worktree)
    env = git_env()
    errors = Bounded(DIFF_ERROR_BYTES)
    rc = await run([*git, "add", "--all", "--", ":/"], env, errors)
    if rc != 0:
        raise RuntimeFailure(
            f"git add for the diff failed (exit {rc}): {_text(bytes(errors.buf))}", reason=Reason.DIFF
        )
    # bash's pipefail keeps git's own failure; head stops reading one byte past the limit.
    script = f'set -o pipefail; "$@" | head -c {limit + 1}'
    out = Bounded(limit + 1)
    argv = ["/bin/bash", "-c", script, "diff", *git, "diff", "--cached", "--binary", "--no-color", commit]
    rc = await run(argv, env, out)
    if out.total > limit:
        raise RuntimeFailure(f"the diff is larger than the limit of {limit} bytes", reason=Reason.DIFF)
    if rc != 0:
        raise RuntimeFailure(f"git diff failed (exit {rc}): {_text(bytes(out.buf))}", reason=Reason.DIFF)
    return bytes(out.buf)


def clone_url(frontend_url: str, repository: str) -> str:
    """The server's git endpoint of `repository` (EXECUTOR_FRONTEND_URL may carry a path prefix,
    http://host/sg: the git service is below it)."""
    return f"{frontend_url.rstrip('/')}/.executors/git/{repository}"


def clone_headers(token: str, frontend_password: str, job_id: int, executor_name: str) -> dict[str, str]:
    """The headers Sourcegraph's clone proxy sets on every git request (newReverseProxy in
    cmd/executor/internal/worker/workspace/clone.go), here as git's http.extraHeader: the job token
    (the executor token for a server that issues none), the internal actor, the job and the executor."""
    auth = f"Bearer {token}" if token else f"token-executor {frontend_password}"
    return {
        "Authorization": auth,
        ACTOR_UID_HEADER: "internal",
        JOB_ID_HEADER: str(job_id),
        EXECUTOR_NAME_HEADER: executor_name,
    }


async def clone_repository(
    root: Path,
    workspace: Path,
    plan: JobPlan,
    url: str,
    headers: Mapping[str, str],
    open_log: LogOpener,
    *,
    meta: Path | None = None,
    git_config: Sequence[tuple[str, str]] = (),
) -> Path:
    """Check out plan.clone in the workspace (or its repositoryDirectory), each git command a log
    entry through `open_log`, the headers (and `git_config`) in git's environment only (auth_env),
    then make our git dir for the diff (`meta`, default root/meta.git: prepare_meta_git).
    Runs on the host for HostWorkspace, and in a pod's setup container (kubernetes podside)."""
    repo = workspace
    if plan.repository_directory:
        try:
            rel = check_workspace_dir(plan.repository_directory)  # "." is the workspace
        except ValueError as exc:
            raise StepFailed(f"repositoryDirectory: {exc}", Reason.FILES) from None
        if rel != ".":
            repo = make_dirs(workspace, rel)
    # The git dir is named (GIT_DIR, GIT_WORK_TREE), never discovered: a repository found by
    # discovery must belong to git's user (safe.directory), and in a pod the workspace is a volume
    # directory the kubelet made as root while git runs as the pod's user.
    explicit = {"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(repo)}
    env = git_env({**auth_env(headers, git_config), **explicit})
    assert plan.clone is not None
    for key, argv in clone_commands(plan.clone, url):
        async with open_log(key, argv) as entry:
            rc = await run(argv, cwd=repo, env=env, out=entry.write)
            entry.exit_code = rc
        if rc != 0:
            raise RuntimeFailure(f"clone failed: {key} exited with {rc} (see its log)", reason=Reason.CLONE)
    return await prepare_meta_git(root, repo, plan.commit, meta, sparse=bool(plan.clone.sparse_checkout))


async def collect_results(
    workspace: Path, outputs: Sequence[str], make_diff: Callable[[], Awaitable[str]] | None
) -> Results:
    """The Results of a job: the diff (`make_diff`, None: the job cloned nothing) and the declared
    outputs (read_outputs). RuntimeFailure when the diff cannot be made."""
    diff_text, files, problems = "", dict[str, str](), tuple[str, ...]()
    if make_diff is not None:
        diff_text = await make_diff()
    if outputs:
        files, found = await asyncio.to_thread(read_outputs, workspace, list(outputs))
        problems = tuple(found)
    over = any("limit" in p or "exceed" in p for p in problems)
    return Results(diff=diff_text, files=files, problems=problems, over_limit=over)


_NAME_PART = re.compile(r"[a-z0-9_-]{1,64}")  # a queue name (EXECUTOR_QUEUE_NAME(S)), an owner


def job_root_name(owner: str, queue: str, job_id: int, attempt: int, suffix: str) -> str:
    """The name of a job's root directory in EXECUTOR_WORKSPACE_ROOT (see `sweep`):
    ``<owner>.<queue>-<id>-<attempt>-<suffix>``. The queue comes from the server's answer, so it
    is checked to be a queue name (``[a-z0-9_-]``, no ``/`` or ``.``): a name like
    ``batches/../../x`` would put the job's directory anywhere on the host. ValueError otherwise."""
    for what, part in (("queue", queue), ("owner", owner)):
        if not _NAME_PART.fullmatch(part):
            raise ValueError(f"{what} {part[:80]!r} is not a name of [a-z0-9_-] (1 to 64 characters)")
    if not re.fullmatch(r"[a-z0-9]{1,32}", suffix):
        raise ValueError(f"suffix {suffix[:80]!r} is not [a-z0-9]")
    return f"{owner}.{queue}-{int(job_id)}-{int(attempt)}-{suffix}"


def sweep(workspace_root: Path, owner: str, live: Callable[[], set[str]], *, keep: bool) -> list[str]:
    """Job directories of `owner` (EXECUTOR_VM_PREFIX) left by jobs that no longer run (an executor
    killed mid-job): unmount their workspace filesystems and remove them (only unmount when `keep`).

    Job roots are named ``<owner>.<queue>-<id>-<attempt>-<random>``. The directory is listed before
    `live()` (the labels ``<queue>-<id>`` of running jobs) is asked, so a job that starts meanwhile is
    either not listed yet or already live. Returns the names handled.
    """
    try:
        entries = [e.name for e in os.scandir(workspace_root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    labels = {}
    for name in entries:
        head, dot, rest = name.partition(".")
        if not dot or head != owner or "." in rest:
            continue
        labels[name] = "-".join(rest.split("-")[:-2])
    done: list[str] = []
    for name in orphans(labels, live()):
        path = workspace_root / name
        if keep:
            if not os.path.ismount(path / "workspace"):
                continue
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                unmount(path / "workspace")
        else:
            remove_tree(path)
        done.append(name)
    return done


def remove_tree(path: Path) -> None:
    """Remove a job directory: unmount its workspace filesystem, then delete without following links
    (shutil.rmtree works through directory descriptors and never follows symlinks)."""
    workspace = path / "workspace"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        unmount(workspace)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)


class HostWorkspace:
    """The `Workspace` on the executor host (see the module docstring); the diff runs in `sandbox`,
    the runtime that runs CLI steps (None: no sandbox here, so no diff)."""

    def __init__(
        self,
        sandbox: Runtime | None,
        *,
        frontend_url: str,
        frontend_password: str,
        executor_name: str,
        keep: bool = False,
    ) -> None:
        self.sandbox = sandbox
        self.frontend_url, self.frontend_password = frontend_url, frontend_password
        self.executor_name = executor_name
        self.keep = keep

    async def prepare(self, space: JobSpace) -> None:
        space.root.mkdir(parents=True, mode=0o700)
        space.workspace.mkdir(mode=0o755)
        space.scripts.mkdir(mode=0o755)
        if space.limits.disk_bytes > 0:
            await mount_quota(space.root, space.workspace, space.limits.disk_bytes)

    async def write_scripts(self, space: JobSpace, scripts: Mapping[str, str]) -> None:
        for name, text in scripts.items():
            # Our own directory beside the workspace (see safefs): nothing the job controls is on this path.
            fd = os.open(space.scripts / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    async def write_files(self, space: JobSpace, files: Mapping[str, bytes]) -> None:
        write_files(space.workspace, files)

    async def write_stream(self, space: JobSpace, rel: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        return await write_stream(space.workspace, rel, chunks, limit)

    async def take_file(self, space: JobSpace, name: str, limit: int) -> bytes | None:
        return await asyncio.to_thread(take_file, space.workspace, name, limit)

    async def clone(self, space: JobSpace, plan: JobPlan, token: str, open_log: LogOpener) -> None:
        headers = clone_headers(token, self.frontend_password, plan.job_id, self.executor_name)
        url = clone_url(self.frontend_url, plan.repository)
        await clone_repository(space.root, space.workspace, plan, url, headers, open_log)

    async def collect(self, space: JobSpace, plan: JobPlan) -> Results:
        meta = space.root / "meta.git"
        make_diff = None
        if plan.repository and os.path.isdir(meta):
            make_diff = functools.partial(self._diff, space, plan, meta)
        return await collect_results(space.workspace, plan.outputs, make_diff)

    async def _diff(self, space: JobSpace, plan: JobPlan, meta: Path) -> str:
        """The repository's diff, made inside the job's sandbox (never by git on the host: see diff)."""
        sandbox = self.sandbox
        if sandbox is None:
            raise RuntimeFailure("the diff needs the shell sandbox (bubblewrap), which is not available")
        # meta.git is ours and was never visible to the job; the sandboxed git runs as the job's user.
        await asyncio.to_thread(chown_tree, meta, space.uid, space.gid)

        async def in_sandbox(argv: Sequence[str], env: Mapping[str, str], out: Writer) -> int:
            step = Step(
                key="diff",
                kind="cli",
                index=-1,
                image=None,
                argv=tuple(argv),
                env=dict(env),
                binds=((os.fspath(meta), META_MOUNT),),
            )
            async with asyncio.timeout(GIT_TIMEOUT):
                result = await sandbox.run_step(space, step, out)
            if result.reason:
                raise RuntimeFailure(f"cannot make the diff: {result.message}", reason=Reason.DIFF)
            if result.oom_killed:
                raise RuntimeFailure("making the diff ran out of the job's memory", reason=Reason.DIFF)
            return result.exit_code

        return await diff(in_sandbox, plan.repository_directory, plan.commit)

    async def cleanup(self, space: JobSpace) -> None:
        if self.keep:  # keep the files (and disk.img), but free the loop device
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                await asyncio.to_thread(unmount, space.workspace)
        else:
            await asyncio.to_thread(remove_tree, space.root)


if TYPE_CHECKING:
    _conforms: Workspace = HostWorkspace(None, frontend_url="", frontend_password="", executor_name="")
