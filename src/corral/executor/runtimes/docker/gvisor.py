"""Orphaned gVisor processes: what a failed `runsc` start leaves behind, found and ended.

When Debian's runsc (0.0~20221219) fails to start a container (an entrypoint that does not exist, a
bad runtime argument), dockerd reports the error but the container's `containerd-shim-runc-v2`
(and, until the container is removed, its `runsc-gofer` and `runsc-sandbox`) keep running, each
holding memory and the bundle's files under dockerd's exec root (machine notes §3).

Which processes are ours is decided from their command lines and bundles, never by name alone:
another executor or a user of this host may run gVisor too. A process belongs to a container id
when it is

- a `containerd-shim-runc-v2 -namespace moby -id <id>` (its working directory is the bundle; not
  the `... delete` that containerd runs once a shim died, which is the clean-up itself), or
- a `runsc`, `runsc-gofer` or `runsc-sandbox` whose `--bundle` is `.../moby/<id>`;

and it is ended only when that container no longer exists in dockerd and the container was ours:
an id the runtime itself created for a job that no longer runs (`cleanup`), or, after a restart of
the executor, an id whose bundle binds the workspace of a job root of our owner
(``<owner>.<queue>-<id>-<attempt>-<suffix>``, see `workspace.host.job_root_name`) whose job is not
live (`janitor`). `orphans` is that decision, pure.

Ending one: runsc processes get SIGKILL, the shim SIGTERM (it then removes its bundle and runsc's
state files), then SIGKILL after `TERM_GRACE_S`. Signals go through a pidfd opened before the
command line is checked again, so a reused pid is never signalled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from corral.executor.runtimes.base import WORKSPACE_MOUNT

__all__ = ["ShimProcess", "bundle_job", "end", "find", "orphans", "parse_job_root"]

PROC = Path("/proc")
CMDLINE_MAX = 64 * 1024  # bytes of a process's command line read
CONFIG_MAX = 1024 * 1024  # bytes of a bundle's config.json read
TERM_GRACE_S = 2.0  # seconds a shim has to exit after SIGTERM before SIGKILL
POLL_S = 0.05  # seconds between checks while waiting for processes to exit

SHIM = "containerd-shim-runc-v2"
RUNSC = ("runsc", "runsc-gofer", "runsc-sandbox")
NAMESPACE = "moby"  # dockerd's containerd namespace
# Where dockerd (default exec root /var/run/docker, /var/run being /run) keeps its containers'
# bundles. Only bundles directly in these are read: a command line or working directory is anyone's
# to choose (a shell-runtime job can start a process named runsc-gofer with a --bundle of its own).
BUNDLE_PARENTS = tuple(
    f"{run}/docker/containerd/daemon/io.containerd.runtime.v2.task/{NAMESPACE}"
    for run in ("/run", "/var/run")
)
_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ShimProcess:
    pid: int
    kind: str  # SHIM or one of RUNSC
    container_id: str
    bundle: str | None  # the bundle directory, when known
    cmdline: bytes  # as read, to check again before a signal


def _read(path: Path, limit: int, *, regular: bool = False) -> bytes | None:
    """At most `limit` bytes of `path`; `regular`: only a regular file, never through a final
    symlink, and never blocking (a FIFO)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | ((os.O_NOFOLLOW | os.O_NONBLOCK) if regular else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if regular and not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _bundle_id(bundle: str) -> str | None:
    """The container id of a bundle directory of dockerd's (see BUNDLE_PARENTS), else None."""
    parent, _, name = os.path.normpath(bundle).rpartition("/")
    return name if _ID.fullmatch(name) and parent in BUNDLE_PARENTS else None


def _classify(pid: int, raw: bytes) -> ShimProcess | None:
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return None
    kind = os.path.basename(args[0])
    if kind == SHIM:
        opts = dict(zip(args[1::2], args[2::2], strict=False))
        cid = opts.get("-id", "")
        if opts.get("-namespace") != NAMESPACE or not _ID.fullmatch(cid):
            return None
        if args[-1] == "delete":
            # containerd's own clean-up of a shim that died (the shim binary's `delete` action): it
            # removes runsc's state files and the bundle, then exits. Ending it would leave them.
            return None
        try:
            bundle: str | None = os.readlink(PROC / str(pid) / "cwd")
        except OSError:
            bundle = None
        if bundle is not None and _bundle_id(bundle) != cid:
            bundle = None
        return ShimProcess(pid, kind, cid, bundle, raw)
    if kind in RUNSC:
        for i, arg in enumerate(args):
            if arg.startswith("--bundle="):
                value = arg.partition("=")[2]
            elif arg == "--bundle" and i + 1 < len(args):
                value = args[i + 1]
            else:
                continue
            found = _bundle_id(value)
            if found is not None:
                return ShimProcess(pid, kind, found, value, raw)
    return None


def find(container_ids: Set[str] | None = None) -> list[ShimProcess]:
    """Every shim and runsc process of dockerd's containers (of `container_ids`, when given)."""
    found: list[ShimProcess] = []
    try:
        pids = [int(e.name) for e in os.scandir(PROC) if e.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        raw = _read(PROC / str(pid) / "cmdline", CMDLINE_MAX)
        if not raw:
            continue
        proc = _classify(pid, raw)
        if proc is not None and (container_ids is None or proc.container_id in container_ids):
            found.append(proc)
    return found


def parse_job_root(name: str) -> tuple[str, str] | None:
    """(owner, job label) of a job root named ``<owner>.<queue>-<id>-<attempt>-<suffix>``
    (`workspace.host.job_root_name`, read back as `workspace.host.sweep` reads it); None otherwise."""
    owner, dot, rest = name.partition(".")
    parts = rest.split("-")
    if not dot or not owner or "." in rest or len(parts) < 4:
        return None
    return owner, "-".join(parts[:-2])


def bundle_job(bundle: str | None) -> tuple[str, str] | None:
    """(owner, job label) of the job whose workspace the bundle's container binds at /data, from the
    job root's name; None when unknown. The config is dockerd's, the path corral's."""
    if bundle is None or _bundle_id(bundle) is None:
        return None
    raw = _read(Path(bundle) / "config.json", CONFIG_MAX, regular=True)
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    mounts = config.get("mounts") if isinstance(config, dict) else None
    for mount in mounts if isinstance(mounts, list) else []:
        if isinstance(mount, dict) and mount.get("destination") == WORKSPACE_MOUNT:
            source = mount.get("source")
            if isinstance(source, str) and source.startswith("/"):
                return parse_job_root(os.path.basename(os.path.dirname(os.path.normpath(source))))
    return None


def orphans(
    procs: Iterable[ShimProcess],
    exists: Set[str],
    ours: Mapping[str, str],
    jobs: Mapping[str, tuple[str, str] | None],
    owner: str | None,
    live: Set[str],
) -> list[ShimProcess]:
    """The processes to end: their container is not in `exists` (dockerd's container ids), and it
    was ours: in `ours` (container id -> job label, what this runtime created) with a job not in
    `live`, or its bundle's job (`jobs`: container id -> (owner, label)) is `owner`'s and not live."""
    chosen = []
    for p in procs:
        if p.container_id in exists:
            continue
        label = ours.get(p.container_id)
        if label is None:
            job = jobs.get(p.container_id)
            if job is None or owner is None or job[0] != owner:
                continue
            label = job[1]
        if label not in live:
            chosen.append(p)
    return chosen


def _open(proc: ShimProcess) -> int | None:
    """A pidfd of `proc`, or None when it is gone or its pid now runs something else."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return None
    if _read(PROC / str(proc.pid) / "cmdline", CMDLINE_MAX) != proc.cmdline:
        os.close(fd)
        return None
    return fd


def _signal(fd: int, sig: signal.Signals) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass  # exited meanwhile


def _alive(fd: int, pid: int) -> bool:
    """Running and not a zombie (a zombie's parent, often PID 1 here, reaps it when it will)."""
    try:
        signal.pidfd_send_signal(fd, 0)
    except OSError:
        return False
    state = (_read(PROC / str(pid) / "stat", 4096) or b"").rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"])


def end(procs: Iterable[ShimProcess], grace: float = TERM_GRACE_S) -> list[ShimProcess]:
    """End `procs` (blocking, at most about `grace` seconds); returns those that were signalled."""
    opened = [(p, fd) for p in procs if (fd := _open(p)) is not None]
    try:
        for p, fd in opened:
            _signal(fd, signal.SIGKILL if p.kind in RUNSC else signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_alive(fd, p.pid) for p, fd in opened) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for p, fd in opened:
            if _alive(fd, p.pid):
                _signal(fd, signal.SIGKILL)
    finally:
        for _, fd in opened:
            os.close(fd)
    return [p for p, _ in opened]
