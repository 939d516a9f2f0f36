"""The kubernetes runtime's `Workspace`: the job's files live in the pod's `job-data` volume, never on
the executor host.

Nothing here touches a file system. The handler's calls stage what the pod needs, kept per job
(`Staged`, keyed by space.root) until the runtime builds the job's Secret and Job from it:
- clone: the repository, commit and fetch options and the job token; the `setup-workspace` init
  container clones inside the pod (podside clone), its log becomes the host's setup.git.* entries;
- write_files / write_stream: the job's files (inline ones, and those the executor fetched from the
  files API), checked as the host checks them (check_workspace_path, MAX_FILES) and bounded by what a
  Secret holds (MAX_STAGED_FILES: the whole Secret must stay under the API's 1 MiB); the setup
  container writes them into the workspace (no-follow, as the host does);
- write_scripts: the step scripts (the Secret's script keys, mounted read-only at SCRIPTS_MOUNT);
- take_file: Sourcegraph's skip.json is read between steps by the executor; a pod's containers are
  fixed when it is created, so a job that would skip is refused before its pod exists (see
  KubernetesRuntime.run_plan) and take_file says so if asked;
- collect: the Results the `main` container printed (podside collect: the diff with meta.git, the
  declared outputs read no-follow under the host's bounds), fed chunk by chunk from its pods/log
  stream into podside's bounded ResultsDecoder as it comes (the log is never held whole; only the
  job's declared outputs are accepted) and finished here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.executor.runtimes.kubernetes.podside import ResultsDecoder

from corral.errors import Reason, RuntimeFailure, StepFailed
from corral.executor import safefs
from corral.executor.plan import CloneSpec, JobPlan
from corral.executor.runtimes.base import JobSpace
from corral.executor.workspace.base import LogOpener, Results, Workspace
from corral.executor.workspace.host import MAX_FILES
from corral.protocol import check_workspace_dir, check_workspace_path

__all__ = ["MAX_STAGED_FILES", "PodWorkspace", "Staged"]

# bytes of the job's files staged in its Secret (the API refuses objects over 1 MiB; scripts, env
# values and the token share the rest, manifests.py checks the whole Secret)
MAX_STAGED_FILES = 768 * 1024


@dataclass
class Staged:
    """What one job's pod needs, as the handler hands it over."""

    token: str = ""
    clone: CloneSpec | None = None
    repository_directory: str = ""  # normalised; "" = the workspace itself
    files: dict[str, bytes] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes of `files`
    outputs: tuple[str, ...] = ()  # the job's declared outputs (plan.outputs): all main may report
    results: ResultsDecoder | None = None  # what `main` printed, decoded as it came; None: it never ran
    results_problem: str = ""  # why `main` produced no usable results
    log_nonce: str = ""  # the markers of the setup container's log sections (podside.CloneLog)


class PodWorkspace:
    """The Workspace of every job of one KubernetesRuntime (state keyed by space.root)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Staged] = {}

    def staged(self, space: JobSpace) -> Staged:
        return self.jobs.setdefault(str(space.root), Staged())

    async def prepare(self, space: JobSpace) -> None:
        self.jobs[str(space.root)] = Staged()

    async def clone(self, space: JobSpace, plan: JobPlan, token: str, open_log: LogOpener) -> None:
        job = self.staged(space)
        if plan.repository_directory:
            try:
                rel = check_workspace_dir(plan.repository_directory)
            except ValueError as exc:
                raise StepFailed(f"repositoryDirectory: {exc}", Reason.FILES) from None
            job.repository_directory = "" if rel == "." else rel
        job.clone, job.token = plan.clone, token  # the git commands' entries come from the pod's log

    async def write_files(self, space: JobSpace, files: Mapping[str, bytes]) -> None:
        job = self.staged(space)
        if len(job.files) + len(files) > MAX_FILES:
            raise RuntimeFailure(
                f"the job has {len(job.files) + len(files)} files; at most {MAX_FILES} are allowed",
                reason=Reason.FILES,
            )
        for rel, data in files.items():
            self._add(job, check_workspace_path(rel), bytes(data))

    async def write_stream(self, space: JobSpace, rel: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        job = self.staged(space)
        norm = check_workspace_path(rel)
        room = MAX_STAGED_FILES - job.size + len(job.files.get(norm, b""))
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > limit:
                raise safefs.TooLarge(limit)
            if len(buf) > room:
                raise RuntimeFailure(self._too_large(norm), reason=Reason.FILES)
        self._add(job, norm, bytes(buf))
        return len(buf)

    def _add(self, job: Staged, norm: str, data: bytes) -> None:
        size = job.size - len(job.files.get(norm, b"")) + len(data)
        if size > MAX_STAGED_FILES:
            raise RuntimeFailure(self._too_large(norm), reason=Reason.FILES)
        job.files[norm] = data
        job.size = size

    @staticmethod
    def _too_large(norm: str) -> str:
        return (
            f"file {norm}: the job's files together exceed {MAX_STAGED_FILES} bytes, what the kubernetes "
            "runtime stages in the job's Secret (larger inputs belong in the repository or an image)"
        )

    async def take_file(self, space: JobSpace, name: str, limit: int) -> bytes | None:
        raise RuntimeFailure(
            f"the kubernetes runtime cannot read {name} between steps: a pod's containers are fixed "
            "when it is created",
            reason=Reason.SANDBOX,
        )

    async def write_scripts(self, space: JobSpace, scripts: Mapping[str, str]) -> None:
        self.staged(space).scripts.update(scripts)

    async def collect(self, space: JobSpace, plan: JobPlan) -> Results:
        job = self.staged(space)
        if job.results_problem:
            raise RuntimeFailure(job.results_problem, reason=Reason.DIFF)
        if job.results is None:
            return Results()  # the pod stopped before `main` (a step failed): nothing was collected
        try:
            if job.results.outputs != frozenset(plan.outputs):
                raise ValueError("they were decoded for other outputs than the job declares")
            return job.results.finish()
        except ValueError as exc:
            message = f"the results the job's pod printed are not usable: {exc}"
            raise RuntimeFailure(message, reason=Reason.DIFF) from None

    async def cleanup(self, space: JobSpace) -> None:
        self.jobs.pop(str(space.root), None)


if TYPE_CHECKING:
    _conforms: Workspace = PodWorkspace()
