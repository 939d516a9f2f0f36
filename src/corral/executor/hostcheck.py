"""What the host must offer an executor's settings, checked before the first job (by `corral executor
run` and `validate` alike): a workspace root it can create, write and loop-mount images in, limits
the host can honour, the operator's bind mounts, the uid lock directory, and the tools of the
egress firewall when EXECUTOR_NETWORK=deny-private.

Problems stop the executor (every job would fail otherwise); warnings are logged (it works, but not
as configured). The rules about limits are pure (`limit_findings` over `HostFacts`) and tested alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import CorralError
from corral.executor.network import NetworkMode, egress, netns
from corral.executor.runtimes.docker.pause import busybox_path
from corral.executor.runtimes.docker.settings import parse_mount_spec
from corral.executor.settings import ExecutorSettings
from corral.executor.variables import VARIABLES, honoured
from corral.executor.workspace.host import check_quota_support, mount_quota, unmount
from corral.units import format_size, human_size

__all__ = [
    "PROBE_IMAGE_BYTES",
    "PSEUDO_FILESYSTEMS",
    "Findings",
    "HostFacts",
    "check_host",
    "filesystem_type",
    "limit_findings",
    "mount_type",
    "network_findings",
]

PROBE_IMAGE_BYTES = 8 * 1024 * 1024  # the loop-mounted image that proves workspaces can be made
PROBE_PREFIX = ".corral-probe-"  # in the workspace root; never an owner's name, so no janitor's
# Kernel filesystems that hold no files of ours (the workspace root must be on a disk or a tmpfs)
PSEUDO_FILESYSTEMS = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs pstore bpf configfs fusectl "
    "mqueue hugetlbfs autofs binfmt_misc efivarfs nsfs rpc_pipefs selinuxfs".split()
)
MOUNTINFO = "/proc/self/mountinfo"
MEMINFO = "/proc/meminfo"


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)  # the executor cannot work as configured
    warnings: list[str] = field(default_factory=list)  # it works, not quite as configured

    def extend(self, other: Findings) -> None:
        self.problems += other.problems
        self.warnings += other.warnings


@dataclass(frozen=True)
class HostFacts:
    memory: int  # bytes: MemTotal
    cpus: int  # CPUs this process may run on

    @classmethod
    def read(cls) -> HostFacts:
        memory = 0
        with contextlib.suppress(OSError, ValueError), open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024  # kB
                    break
        return cls(memory=memory, cpus=len(os.sched_getaffinity(0)) or os.cpu_count() or 1)


def limit_findings(s: ExecutorSettings, host: HostFacts, disk_free: int | None) -> Findings:
    """EXECUTOR_JOB_MEMORY / _NUM_CPUS / _DISK_SPACE against what the host has.

    - memory above MemTotal is a problem: the job's limit could never bind, the host's OOM killer
      would pick its victims first; all jobs together above it is a warning (overcommit);
    - CPUs above the host's are a warning: a job gets at most the host's (docker caps --cpus);
    - disk: workspace images are sparse, so free space is only spent as jobs write; one job's or all
      jobs' quota above the free space of the workspace root is a warning (the host's disk may fill
      before a quota stops a job)."""
    out = Findings()
    jobs = s.maximum_num_jobs
    if s.job_memory and host.memory:
        if s.job_memory > host.memory:
            out.problems.append(
                f"EXECUTOR_JOB_MEMORY={format_size(s.job_memory)} is more than this host's memory "
                f"({human_size(host.memory)}, MemTotal): lower it, or 0 for no limit"
            )
        elif s.job_memory * jobs > host.memory:
            out.warnings.append(
                f"EXECUTOR_MAXIMUM_NUM_JOBS={jobs} jobs of EXECUTOR_JOB_MEMORY={format_size(s.job_memory)} "
                f"can use more than this host's {human_size(host.memory)} of memory together"
            )
    if s.job_num_cpus > host.cpus:
        out.warnings.append(
            f"EXECUTOR_JOB_NUM_CPUS={s.job_num_cpus:g} is more than this host's {host.cpus} CPUs: "
            f"each job gets at most {host.cpus}"
        )
    if s.job_disk_space and disk_free is not None:
        free = human_size(disk_free)
        if s.job_disk_space > disk_free:
            out.warnings.append(
                f"EXECUTOR_JOB_DISK_SPACE={format_size(s.job_disk_space)} is more than the {free} free "
                f"under EXECUTOR_WORKSPACE_ROOT: a job may fill the host's disk before its quota stops it"
            )
        elif s.job_disk_space * jobs > disk_free:
            out.warnings.append(
                f"EXECUTOR_MAXIMUM_NUM_JOBS={jobs} jobs of EXECUTOR_JOB_DISK_SPACE="
                f"{format_size(s.job_disk_space)} can write more than the {free} free under "
                "EXECUTOR_WORKSPACE_ROOT together"
            )
    return out


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` (or, when it does not exist yet, its nearest existing
    ancestor) is on; "" when unknown."""
    try:
        with open(MOUNTINFO) as f:
            return mount_type(Path(os.path.realpath(_nearest_existing(path))), f)
    except OSError:
        return ""


def mount_type(path: Path, mountinfo: Iterable[str]) -> str:
    """The filesystem type of the longest mount point containing the absolute, resolved `path`,
    from the lines of /proc/self/mountinfo; "" when none does."""
    best, kind = -1, ""
    for line in mountinfo:
        fields, sep, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if not sep or len(parts) < 5 or not tail:
            continue
        point = Path(_unescape(parts[4]))
        if (point == path or point in path.parents) and len(point.parts) > best:
            best, kind = len(point.parts), tail[0]
    return kind


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _workspace_root(root: Path) -> str | None:
    """Create the workspace root (0700) and prove a file can be written there; None when fine."""
    name = f"EXECUTOR_WORKSPACE_ROOT={root}"
    if not root.is_absolute():
        return f"{name} must be an absolute path"
    kind = filesystem_type(root)
    if kind in PSEUDO_FILESYSTEMS:
        return (
            f"{name} is on a {kind} filesystem (the kernel's, it holds no files): use a directory on a disk"
        )
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"{name}: cannot create it: {exc.strerror or exc}"
    if not root.is_dir():
        return f"{name} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{name} is not writable: {exc.strerror or exc}"
    return None


async def _loop_probe(root: Path) -> str | None:
    """Make, mount and unmount a small workspace image in the root, as every job will."""
    probe = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=root))
    workspace = probe / "workspace"
    try:
        workspace.mkdir()
        await mount_quota(probe, workspace, PROBE_IMAGE_BYTES)
    except (CorralError, OSError) as exc:
        kind = filesystem_type(root) or "unknown"
        reason = exc.message if isinstance(exc, CorralError) else str(exc)
        return (
            f"EXECUTOR_WORKSPACE_ROOT={root} ({kind}) cannot hold loop-mounted workspace images "
            f"(EXECUTOR_JOB_DISK_SPACE): {reason.splitlines()[0] if reason else 'failed'}"
        )
    finally:
        with contextlib.suppress(OSError):
            unmount(workspace)
        shutil.rmtree(probe, ignore_errors=True)
    return None


def _lock_dir(s: ExecutorSettings) -> str | None:
    if s.job_uid is not None:  # a fixed uid: no locks
        return None
    try:
        s.job_uid_lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"EXECUTOR_JOB_UID_LOCK_DIR={s.job_uid_lock_dir}: cannot create it: {exc.strerror or exc}"
    return None


def _bind_sources(s: ExecutorSettings) -> list[str]:
    if not honoured(VARIABLES["EXECUTOR_DOCKER_ADDITIONAL_MOUNTS"], s.runtime):
        return []
    missing = []
    for i, spec in enumerate(s.docker.additional_mounts, 1):
        mount = parse_mount_spec(spec)
        if mount["Type"] == "bind" and not os.path.exists(mount["Source"]):
            missing.append(
                f"EXECUTOR_DOCKER_ADDITIONAL_MOUNTS: mount {i}'s source {mount['Source']} does not exist "
                "on this host (every job would fail to start)"
            )
    return missing


async def check_host(s: ExecutorSettings, facts: HostFacts | None = None) -> Findings:
    """Everything above, in order; a workspace root that cannot be used stops the checks about it.
    The kubernetes runtime's jobs run in pods on the cluster's nodes, their workspace in the pod's
    volume: this host's memory, CPUs, disk and workspace root are none of theirs, and not checked."""
    out = Findings()
    free: int | None = None
    in_pods = s.runtime == "kubernetes"
    if in_pods:
        pass  # see the docstring
    elif problem := _workspace_root(s.workspace_root):
        out.problems.append(problem)
    else:
        free = shutil.disk_usage(s.workspace_root).free
        quota = s.job_disk_space > 0
        if quota and (missing := check_quota_support()):
            out.problems += [
                f"EXECUTOR_JOB_DISK_SPACE cannot be enforced here: {p} (or set it to 0)" for p in missing
            ]
        elif quota and (problem := await _loop_probe(s.workspace_root)):
            out.problems.append(problem)
    if not in_pods:
        out.extend(limit_findings(s, facts or HostFacts.read(), free))
    if problem := _lock_dir(s):
        out.problems.append(problem)
    out.problems += _bind_sources(s)
    out.extend(network_findings(s))
    return out


def network_findings(s: ExecutorSettings) -> Findings:
    """EXECUTOR_NETWORK: deny-private needs nft, slirp4netns, ip and nsenter (and the uplink
    namespace, and for docker a static busybox for the pause image); open is a warning."""
    out = Findings()
    mode = s.network
    if mode is NetworkMode.OPEN:
        out.warnings.append(
            "EXECUTOR_NETWORK=open: jobs that ask for the network get the runtime's ordinary network, "
            "unfiltered (private addresses and 169.254.169.254 included); deny-private filters it"
        )
    if mode is not NetworkMode.DENY_PRIVATE:
        return out
    for tool, package in (("nft", "nftables"), (egress.SLIRP, "slirp4netns"), ("ip", "iproute2")):
        if not shutil.which(tool):
            out.problems.append(f"EXECUTOR_NETWORK=deny-private needs {tool}: apt-get install {package}")
    if not os.access("/usr/bin/nsenter", os.X_OK):
        out.problems.append("EXECUTOR_NETWORK=deny-private needs /usr/bin/nsenter (util-linux)")
    if os.geteuid() != 0:
        out.problems.append("EXECUTOR_NETWORK=deny-private needs root (it makes network namespaces)")
    uplink = s.network_uplink_netns
    if uplink and not netns.exists(uplink):
        out.problems.append(
            f"EXECUTOR_NETWORK_UPLINK_NETNS={uplink}: no such namespace under {netns.NETNS_DIR}"
        )
    if s.runtime == "docker" and busybox_path() is None:
        out.problems.append(
            "EXECUTOR_NETWORK=deny-private with the docker runtime needs a static busybox on the host "
            "for the jobs' pause containers: apt-get install busybox-static"
        )
    return out
