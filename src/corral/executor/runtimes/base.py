"""The one interface every runtime implements, and the values it works with.

Lifecycle, per job (the handler drives it):

    prepare(space)                       once, before anything runs
    run_step(space, step, output) ...    for each step of the plan, in order, stopping at the first
      or run_plan(space, plan, sink)     failure; a whole-job runtime (one pod, one VM) may offer
                                         `run_plan` (see `PlanRunner`) and then gets the whole plan
    cleanup(space)                       exactly once, also when prepare failed or raised, a step
                                         failed, or the job was canceled or timed out

`cleanup` must be idempotent, safe after a failed (or never started) `prepare`, and must never raise
for "already gone" resources. A runtime raises `RuntimeFailure` (never its own client's errors:
DockerAPIError, CgroupError, OSError are mapped at this seam) when it cannot do its part; a step that
ran and failed is a `StepResult`, not an exception.

Concurrency: one runtime instance serves many jobs at once (EXECUTOR_MAXIMUM_NUM_JOBS); all per-job
state is keyed by the job (`space.root`, `space.name`), never kept in single attributes. Calls for
one job never overlap, except `cleanup`, which may run while a canceled `run_step` unwinds.

Cancellation: the handler cancels the task running `run_step`/`run_plan` (cancel from the server, or
the job deadline). The runtime must then stop the step: signal it (SIGTERM / docker stop), wait at
most `space.kill_grace` seconds, kill it, and re-raise `asyncio.CancelledError`.

Network: `space.network` is the job's `NetworkPolicy`; every runtime honours it (no interface but
loopback unless `space.network.has_interface`; behind the egress firewall of
`corral.executor.network.egress` when `space.network.filtered`).

Labels: everything a runtime creates (containers, cgroups, ...) carries `space.labels`, so that
`janitor(live_job_labels)` can remove what belongs to no running job.

Optional capabilities, found with isinstance() on these runtime-checkable Protocols:
- `PlanRunner.run_plan`: run the whole job at once;
- `CredentialStager`: a runtime that needs the job's registry credentials gets them here, so the
  handler never handles them itself (it only asks which values the redactor must hide).
- `Describer.describe`: facts `corral executor validate` adds to its summary (e.g. the microVMs'
  accelerator), asked only when `check()` found no problem.
- `Lifecycle.start` / `stop`: a runtime with work of its own besides jobs (the firecracker warm
  pool): the worker calls start() once before it takes jobs and stop() once after the last job's
  cleanup, also when it ends by an error.
- `Reattacher`: a runtime whose sandboxes outlive the executor process (a pod's Job): at start the
  worker asks it for the sandboxes a previous process of this owner and executor name left
  (`orphans`), asks the server for each (reattach), `claim`s those the server gives back (the
  janitor then leaves them alone) and runs them through the handler with `reattach` instead of
  `run_plan`; the rest are the janitor's.
And an optional class attribute `cli_runtime`: the registry name of the runtime that runs this
runtime's CLI steps and the diff (absent: the shell sandbox, `registry.DEFAULT_CLI_RUNTIME`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

from corral.errors import Reason
from corral.executor.network.policy import NetworkPolicy

if TYPE_CHECKING:
    from corral.executor.plan import JobPlan
    from corral.executor.settings import ExecutorSettings
    from corral.executor.workspace.base import CommandLog, Workspace
    from corral.protocol import KnownLogEntry

__all__ = [
    "LABEL_JOB",
    "LABEL_MANAGED",
    "LABEL_OWNER",
    "META_MOUNT",
    "SCRIPTS_MOUNT",
    "WORKSPACE_MOUNT",
    "CredentialStager",
    "Describer",
    "JobSpace",
    "Lifecycle",
    "Limits",
    "Orphan",
    "OutputSink",
    "PlanRunner",
    "PlanSink",
    "Reattacher",
    "ResumeSink",
    "Runtime",
    "Step",
    "StepResult",
    "WorkspaceProvider",
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
    network: NetworkPolicy = field(default_factory=NetworkPolicy.none)  # see corral.executor.network
    kill_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    executor_name: str = ""
    owner: str = "executor"  # EXECUTOR_VM_PREFIX
    attempt: int = 0  # the server's attempt number (names a runtime's objects per attempt, e.g. a pod's Job)

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
    # Why the step could not run as asked (Reason.IMAGE, SANDBOX, DISK, ...); None when it ran.
    reason: Reason | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.reason is not None and not isinstance(self.reason, Reason):
            object.__setattr__(self, "reason", Reason(self.reason))


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

    def telemetry(self) -> dict[str, str]:
        """What this runtime reports in heartbeats (e.g. {"dockerVersion": "27.1.1"}); may be {}."""
        ...


class PlanSink(Protocol):
    """How a whole-job runtime reports its steps: the handler opens and closes each step's log."""

    async def started(self, step: Step) -> OutputSink:
        """The step begins: returns where its output goes."""
        ...

    async def finished(self, step: Step, result: StepResult) -> None:
        """The step ended. Raises StepFailed when the job must stop (the runtime stops and re-raises)."""
        ...

    def open_log(self, key: str, command: list[str]) -> AbstractAsyncContextManager[CommandLog]:
        """A log entry of the runtime's own (e.g. setup.kubernetes.pod: the pod's phases), redacted like
        the steps'; not a step: its exit code is shown, never checked or counted among the steps'."""
        ...


@runtime_checkable
class PlanRunner(Protocol):
    """A runtime that runs the whole job at once (one pod, one VM): the handler calls run_plan instead
    of run_step per step. Its steps are `plan.steps` (in order); the diff still runs per step."""

    async def run_plan(self, space: JobSpace, plan: JobPlan, sink: PlanSink) -> None: ...


@runtime_checkable
class WorkspaceProvider(Protocol):
    """A runtime whose workspace lives in its sandbox (a pod's volume, a VM's disk): it supplies the
    Workspace (clone, files, scripts, results, cleanup) the handler uses for its jobs instead of the
    host workspace. The object is made once per executor and serves every job (state keyed by space)."""

    def make_workspace(self, settings: ExecutorSettings) -> Workspace: ...


@runtime_checkable
class CredentialStager(Protocol):
    """A runtime that uses the job's registry credentials (plan.registry_auth) for pulls."""

    def secrets(self, plan: JobPlan) -> list[str]:
        """Values of those credentials the job's redactor must hide (before anything runs)."""
        ...

    async def stage(self, space: JobSpace, plan: JobPlan) -> None:
        """Keep the job's credentials where only this runtime reads them (under space.root, never
        mounted); called before prepare. cleanup() forgets them."""
        ...


@runtime_checkable
class Describer(Protocol):
    """A runtime with facts of its own for `corral executor validate`'s summary."""

    async def describe(self) -> list[tuple[str, str]]:
        """(what, value) lines in plain words, e.g. ("microVMs", "... accelerator TCG ...")."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    """A runtime that runs something of its own while the executor does (e.g. VMs booted ahead)."""

    async def start(self) -> None:
        """Begin (returns at once; background work runs in tasks of its own). May remove what a
        killed executor of the same owner left first."""
        ...

    async def stop(self) -> None:
        """End it: nothing it made remains (running jobs have been cleaned up before)."""
        ...


@dataclass(frozen=True)
class Orphan:
    """A sandbox a previous process of this executor left running: which job attempt it runs."""

    queue: str
    job_id: int
    attempt: int
    name: str  # the runtime's name for it (e.g. the Job's)


class ResumeSink(PlanSink, Protocol):
    """The PlanSink of a reattached job: it knows the attempt's log entries as the server has them."""

    def known(self, key: str) -> KnownLogEntry | None:
        """The server's last entry with this key of the attempt, or None."""
        ...

    async def resume(self, step: Step) -> OutputSink:
        """The step's entry continued (it exists, unfinished): its output is given again from its
        start, what the server has is not sent twice. The step then ends with `finished`."""
        ...

    async def skipped(self, step: Step, exit_code: int) -> None:
        """The step had finished before the restart (its entry has its exit code): counted as then;
        raises StepFailed when the job must stop there."""
        ...

    def resume_log(self, key: str, command: list[str]) -> AbstractAsyncContextManager[CommandLog]:
        """The runtime's own entry `key` continued after what the server has (a new one if none)."""
        ...


@runtime_checkable
class Reattacher(Protocol):
    """A runtime whose sandboxes outlive the executor process (see the module docstring)."""

    async def orphans(self) -> list[Orphan]:
        """The running sandboxes of this owner and executor name that no job of this process holds."""
        ...

    def claim(self, orphan: Orphan) -> None:
        """The server gave the orphan's attempt back: the janitor must leave it alone from now on."""
        ...

    async def reattach(self, space: JobSpace, plan: JobPlan, sink: ResumeSink) -> None:
        """Follow the claimed sandbox of space's job attempt to its end, as run_plan would have
        (nothing is created again); cleanup(space) removes it afterwards."""
        ...
