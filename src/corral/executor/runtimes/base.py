"""The one interface every runtime implements, and the values it works with.

Lifecycle, per job: `prepare(space)` once, then `run_step(space, step, output)` for each step in
order, then `cleanup(space)` exactly once, also when prepare failed, a step failed, or the job was
canceled. `cleanup` must be idempotent and must never raise for "already gone" resources.

Concurrency: one runtime instance serves many jobs at once; all per-job state is keyed by
`space.job_id` (or derived from `space`), never kept in single attributes.

Cancellation: the handler cancels the task running `run_step` (cancel from the server, or the job
deadline). `run_step` must then stop the step: signal it (SIGTERM / docker stop), wait at most
`space.kill_grace` seconds, kill it, and re-raise `asyncio.CancelledError`.

Labels: everything a runtime creates (containers, cgroups, ...) carries `space.labels`, so that
`janitor(live_job_ids)` can remove what belongs to no running job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol

__all__ = [
    "LABEL_JOB",
    "LABEL_MANAGED",
    "LABEL_OWNER",
    "META_MOUNT",
    "SCRIPTS_MOUNT",
    "WORKSPACE_MOUNT",
    "JobSpace",
    "Limits",
    "OutputSink",
    "Runtime",
    "Step",
    "StepResult",
]

LABEL_MANAGED = "dev.corral.managed"
LABEL_JOB = "dev.corral.job"
LABEL_OWNER = "dev.corral.owner"  # EXECUTOR_VM_PREFIX: a janitor only touches its own owner's resources
WORKSPACE_MOUNT = "/data"  # where the workspace appears inside every sandbox (as in Sourcegraph)
# Where the step scripts appear, read-only. They live outside the workspace (in space.scripts) so that
# neither the repository nor a step can redirect the executor's writes of them.
SCRIPTS_MOUNT = "/.corral-steps"
META_MOUNT = "/.corral-meta.git"  # the diff's git dir, bound only into the sandbox that makes the diff

OutputSink = Callable[[bytes], None]  # called with raw output bytes as they are produced


@dataclass(frozen=True)
class Limits:
    cpus: float = 4.0  # 0 = unbounded
    memory_bytes: int = 12 * 1024**3  # 0 = unbounded; swap is always limited to the same value
    pids: int = 1024
    # EXECUTOR_JOB_DISK_SPACE; 0 = unbounded: bounds the workspace and each container's writable layer
    disk_bytes: int = 20 * 1024**3


@dataclass
class JobSpace:
    """Where and how one job runs: built by the handler, read by the runtime."""

    job_id: int
    queue: str
    root: Path  # private per-job directory on the host (owned by root, 0700)
    workspace: Path  # root/workspace: the job's files; mounted at WORKSPACE_MOUNT
    uid: int = 1000  # the unprivileged user steps run as
    gid: int = 1000
    limits: Limits = field(default_factory=Limits)
    network: bool = False  # no network at all unless the job's policy allows it
    docker_config: Path | None = None  # private docker config dir for pulls (credentials), never mounted
    kill_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    executor_name: str = ""
    owner: str = "executor"  # EXECUTOR_VM_PREFIX

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_JOB: f"{self.queue}-{self.job_id}", LABEL_OWNER: self.owner}

    @property
    def scripts(self) -> Path:
        """Executor-written step scripts (root/scripts); every sandbox binds it read-only at SCRIPTS_MOUNT."""
        return self.root / "scripts"

    @property
    def name(self) -> str:
        """A name unique to this job, usable for containers, cgroups and VMs."""
        return f"corral-{self.queue}-{self.job_id}"


@dataclass(frozen=True)
class Step:
    key: str  # log key, e.g. "step.docker.0"
    kind: Literal["docker", "cli"]
    index: int
    image: str | None  # docker steps; ignored by runtimes without images
    argv: tuple[str, ...]  # what to run, paths as seen inside the sandbox
    dir: str = ""  # working dir relative to the workspace
    env: Mapping[str, str] = field(default_factory=dict)
    # Extra host directories (host path, sandbox path) bound read-write: executor-owned only, never a
    # path under the workspace (used for META_MOUNT by the diff).
    binds: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StepResult:
    exit_code: int
    oom_killed: bool = False
    # A short reason when the step could not run as asked: "image", "sandbox", ... ; None when it ran.
    reason: str | None = None
    message: str = ""


class Runtime(Protocol):
    name: ClassVar[str]

    async def check(self) -> list[str]:
        """Problems that keep this runtime from working here, in plain words; [] when ready."""
        ...

    async def prepare(self, space: JobSpace) -> None: ...

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult: ...

    async def cleanup(self, space: JobSpace) -> None: ...

    async def janitor(self, live: set[str]) -> list[str]:
        """Remove resources labelled by corral whose LABEL_JOB value is not in `live`; return their names."""
        ...
