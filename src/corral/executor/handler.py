"""One job, end to end: plan, workspace, clone, files, steps in the runtime, results, the mark call.

Orchestration only: what runs comes from `plan` (pure), where the files live from the `Workspace`
(host.py today), how steps run from the runtimes (`RuntimeSet`: the main one and the one for CLI
steps and the diff), which registry credentials a runtime uses from the runtime itself
(`CredentialStager`). Nothing here depends on which runtime it is.

Outcomes (what the server is told):
- every step exits 0: results uploaded, markComplete;
- a step exits non-zero, is OOM-killed, its image is missing, or the job times out: markFailed
  with a reason a person understands (retrying would fail the same way);
- the clone or another setup step fails, or the runtime breaks: markErrored (the server retries);
- canceled (by the server or at shutdown): markFailed("canceled"); the server records `canceled`.
Cleanup (runtimes, workspace) always runs, also after a cancel, and its errors are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import subprocess
from enum import StrEnum
from pathlib import Path

from corral.errors import CorralError, Reason, RuntimeFailure, ServerError, StepFailed
from corral.executor import identity
from corral.executor.client import QueueClient
from corral.executor.logs import LogEntry
from corral.executor.plan import JobPlan, plan_job
from corral.executor.redact import RedactionLimitError, Redactor, RedactorCache, cache_key, check_limits
from corral.executor.runtimes.base import (
    CredentialStager,
    JobSpace,
    Limits,
    OutputSink,
    PlanRunner,
    Runtime,
    Step,
    StepResult,
    WorkspaceProvider,
)
from corral.executor.runtimes.registry import RuntimeSet
from corral.executor.settings import ExecutorSettings
from corral.executor.workspace import HostWorkspace, Workspace
from corral.protocol import Job
from corral.units import format_duration

__all__ = ["JobHandler", "Outcome", "StepFailed"]

log = logging.getLogger("corral.executor")


class Outcome(StrEnum):
    """How a job ended here, i.e. which mark call the server gets."""

    COMPLETE = "complete"
    FAILED = "failed"
    ERRORED = "errored"
    CANCELED = "canceled"


Result = tuple[Outcome, str]  # the outcome and its message


class JobHandler:
    def __init__(
        self,
        settings: ExecutorSettings,
        client: QueueClient,
        runtime: Runtime,
        cli_runtime: Runtime | None = None,
        *,
        echo: bool = False,
        workspace: Workspace | None = None,
    ) -> None:
        self.settings, self.client, self.runtime, self.cli_runtime = settings, client, runtime, cli_runtime
        self.runtimes = RuntimeSet(runtime, cli_runtime)
        self.echo = echo
        self._workspace = workspace
        self._redactors = RedactorCache()
        # Jobs this executor stops on its own (shutdown): reported errored (retried), not canceled.
        self.stopped_locally: dict[int, bool] = {}

    @property
    def workspace(self) -> Workspace:
        """The runtime's own workspace when it keeps one in its sandbox (WorkspaceProvider), else the
        host workspace."""
        if self._workspace is None and isinstance(self.runtime, WorkspaceProvider):
            self._workspace = self.runtime.make_workspace(self.settings)
        if self._workspace is None:
            s = self.settings
            self._workspace = HostWorkspace(
                self.cli_runtime,
                frontend_url=s.frontend_url,
                frontend_password=s.frontend_password,
                executor_name=s.name,
                keep=s.keep_workspaces,
            )
        return self._workspace

    async def _redactor(self, job: Job, plan: JobPlan | None = None) -> Redactor:
        """The job's redactor. Its secrets come from the job, so they are bounded first (over the
        limits the job fails: a retry would fail the same way), then the redactor is built in a worker
        thread, never on the event loop (it costs up to about a second: heartbeats and other jobs'
        logs must not wait), and kept per job and secrets, so the job's next attempt reuses it."""
        if plan is None:
            plan = JobPlan(
                job_id=job.id, queue=job.queue or "", steps=(), registry_auth=job.docker_auth_config
            )
        extra = [self.settings.frontend_password, job.token]
        for runtime in self.runtimes.distinct():
            if isinstance(runtime, CredentialStager):
                extra += runtime.secrets(plan)
        extra = [e for e in extra if e]
        values = job.redacted_values or {}
        try:
            check_limits(values)
        except RedactionLimitError as exc:
            raise StepFailed(str(exc), Reason.REDACTION) from None
        key = await asyncio.to_thread(cache_key, job.id, values, extra)
        redactor = self._redactors.get(key)
        if redactor is None:
            redactor = await asyncio.to_thread(Redactor, values, extra)
            self._redactors.put(key, redactor)
        return redactor

    def _entry(self, job: Job, redactor: Redactor, key: str, command: list[str]) -> LogEntry:
        task = asyncio.current_task()  # the job's task: stopped when the server says it is not ours
        return LogEntry(
            self.client,
            job,
            key,
            command,
            redactor,
            max_bytes=self.settings.log_max_bytes,
            echo=self.echo,
            on_lost=task.cancel if task is not None else None,
        )

    def _space(self, job: Job, root: Path) -> JobSpace:
        s = self.settings
        return JobSpace(
            job_id=job.id,
            queue=job.queue or s.queues[0],
            root=root,
            workspace=root / "workspace",
            # A uid/gid of its own while it runs (identity.py); released in _finish after cleanup.
            uid=(ids := identity.acquire(s))[0],
            gid=ids[1],
            limits=Limits(
                cpus=s.job_num_cpus, memory_bytes=s.job_memory, pids=s.job_pids, disk_bytes=s.job_disk_space
            ),
            kill_grace=s.kill_grace,
            executor_name=s.name,
            owner=s.vm_prefix,
        )

    def deadline(self, job: Job) -> float:
        limit = self.settings.maximum_runtime_per_job
        if job.timeout_seconds:
            limit = min(limit, float(job.timeout_seconds))
        return limit

    async def handle(self, job: Job) -> None:
        """Run the job and report its outcome; raises CancelledError when canceled."""
        root = (
            self.settings.workspace_root
            / f"{self.settings.vm_prefix}.{job.queue}-{job.id}-{job.attempt or 0}-{secrets.token_hex(4)}"
        )
        try:
            space = self._space(job, root)
        except identity.IdentityExhausted as exc:  # no uid free: another executor (or a later try) runs it
            log.error("job %s: %s", job.id, exc)
            with contextlib.suppress(CorralError):
                await self.client.mark_errored(job, f"no job uid free on this executor: {exc}")
            return
        plan = plan_job(job, cli_path=self.settings.cli_path, default_queue=space.queue)
        limit = self.deadline(job)
        outcome: Result = (Outcome.COMPLETE, "")
        exit_codes: list[int] = []
        redactor: Redactor | None = None
        try:
            try:
                async with asyncio.timeout(limit):
                    redactor = await self._redactor(job, plan)  # in a thread; may fail the job (StepFailed)
                    await self._run(job, plan, space, redactor, exit_codes)
            except TimeoutError:
                raise StepFailed(
                    f"job exceeded maximum execution time of {format_duration(limit)}", Reason.TIMEOUT
                ) from None
        except StepFailed as exc:
            outcome = (Outcome.FAILED, exc.message)
            problem = await self._upload(job, plan, space, exit_codes, exc.reason)
            if problem is not None and problem[0] is Outcome.ERRORED:
                outcome = problem
        except asyncio.CancelledError:
            if self.stopped_locally.pop(job.id, False):  # this executor shut down: another one retries
                outcome = (Outcome.ERRORED, "the executor shut down before the job finished")
            else:
                outcome = (Outcome.CANCELED, "canceled")
            raise
        except RuntimeFailure as exc:
            outcome = (Outcome.ERRORED, exc.message)
        except ServerError as exc:
            outcome = (Outcome.ERRORED, f"lost contact with the server: {exc.message}")
        except Exception as exc:
            log.exception("job %s: unexpected error", job.id)
            outcome = (Outcome.ERRORED, f"executor error: {exc!r}")
        else:
            outcome = await self._upload(job, plan, space, exit_codes, "") or outcome
        finally:
            await asyncio.shield(self._finish(job, space, outcome, redactor))

    async def _finish(self, job: Job, space: JobSpace, outcome: Result, redactor: Redactor | None) -> None:
        kind, message = outcome
        if redactor is not None:  # messages quote git, docker and step keys: the job's text, maybe secrets
            message = redactor.redact_text(message)
        try:
            for runtime in self.runtimes.distinct():
                await runtime.cleanup(space)
            identity.release(self.settings, space.uid)  # nothing of the job runs as it any more
        except Exception:
            log.exception("job %s: runtime cleanup failed", job.id)
        try:
            await self.workspace.cleanup(space)
        except Exception:
            log.exception("job %s: workspace cleanup failed", job.id)
        try:
            if kind is Outcome.COMPLETE:
                await self.client.mark_complete(job)
            elif kind is Outcome.ERRORED:
                await self.client.mark_errored(job, message)
            else:
                await self.client.mark_failed(job, message)
        except CorralError as exc:
            log.error("job %s: could not report %s to the server: %s", job.id, kind, exc)
        log.info("job %s: %s%s", job.id, kind, f" ({message})" if message else "")

    async def _upload(
        self, job: Job, plan: JobPlan, space: JobSpace, exit_codes: list[int], outcome: str
    ) -> Result | None:
        """Collect and upload the diff and the outputs; an outcome that overrides success, or None.

        A result over a size limit fails the job (the producer must not get a silently empty diff);
        a server that refuses the upload as too large fails it too; an unreachable server errors it.
        """
        if not self.client.has("results"):
            return None
        diff, files = "", {}
        problem: Result | None = None
        try:
            results = await self.workspace.collect(space, plan)
            diff, files = results.diff, dict(results.files)
            for p in results.problems:
                log.warning("job %s: %s", job.id, p)
                if "limit" in p or "exceed" in p:
                    problem = (Outcome.FAILED, f"results: {p}")
        except RuntimeFailure as exc:
            log.warning("job %s: results incomplete: %s", job.id, exc)
            problem = (Outcome.FAILED, f"results: {exc.message}")
        except (OSError, subprocess.SubprocessError) as exc:  # the host broke, not the job: retry
            log.warning("job %s: cannot collect the results: %s", job.id, exc)
            return (Outcome.ERRORED, f"cannot collect the results: {exc}")
        try:
            await self.client.upload_result(job, exit_codes, diff, files, outcome)
        except ServerError as exc:
            log.warning("job %s: result upload failed: %s", job.id, exc)
            if exc.status is not None and 400 <= exc.status < 500:
                return (Outcome.FAILED, f"the server refused the results: {exc.message}")
            return (Outcome.ERRORED, f"the results could not be uploaded: {exc.message}")
        except CorralError as exc:
            log.warning("job %s: result upload failed: %s", job.id, exc)
            return (Outcome.ERRORED, f"the results could not be uploaded: {exc.message}")
        return problem

    async def _run(
        self, job: Job, plan: JobPlan, space: JobSpace, redactor: Redactor, exit_codes: list[int]
    ) -> None:
        workspace, main, cli = self.workspace, self.runtimes.main, self.runtimes.cli
        await workspace.prepare(space)
        for runtime in self.runtimes.distinct():
            if isinstance(runtime, CredentialStager):
                await runtime.stage(space, plan)
        if plan.clone is not None:
            await workspace.clone(
                space, plan, job.token, lambda key, argv: self._entry(job, redactor, key, argv)
            )
        files = {p: f.data(job.version or 1) for p, f in job.files.items()}
        for p, f in job.files.items():
            if f.content is None and f.bucket:
                raise StepFailed(
                    f"file {p}: fetching from the files API (bucket {f.bucket}) is not supported",
                    Reason.FILES,
                )
        try:
            await workspace.write_files(space, files)
        except (RuntimeFailure, ValueError) as exc:
            raise StepFailed(str(exc), Reason.FILES) from None
        await workspace.write_scripts(space, plan.scripts)
        await main.prepare(space)
        sandboxed = plan.has_cli_steps or (plan.repository and self.client.has("results"))
        if cli is not None and cli is not main and sandboxed:
            await cli.prepare(space)  # CLI steps and the diff run in that runtime (e.g. the shell sandbox)
        if isinstance(main, PlanRunner):
            sink = _Sink(self, job, space, redactor, exit_codes)
            try:
                await main.run_plan(space, plan, sink)
            finally:
                await sink.close_open()  # a runtime that broke mid-step leaves no log entry open
            return
        for step in plan.steps:
            result = await self._run_step(job, space, redactor, step)
            self._check(space, step, result, exit_codes)

    @staticmethod
    def _check(space: JobSpace, step: Step, result: StepResult, exit_codes: list[int]) -> None:
        """Record a step's exit code; StepFailed when the job must stop here."""
        exit_codes.append(result.exit_code)
        if result.reason is Reason.IMAGE:
            raise StepFailed(f"{step.key}: {result.message}", Reason.IMAGE)
        if result.reason is Reason.DISK:
            raise StepFailed(result.message or f"{step.key} exceeded its disk limit", Reason.DISK)
        if result.oom_killed:
            mib = space.limits.memory_bytes // 1024**2
            raise StepFailed(f"{step.key} was killed: out of memory (limit {mib} MiB)", Reason.OOM)
        if result.exit_code != 0:
            raise StepFailed(f"{step.key} failed with exit code {result.exit_code}", Reason.EXIT)

    @staticmethod
    def _command(step: Step) -> list[str]:
        return [*step.argv] if step.kind == "cli" else [step.image or "", *step.argv]

    async def _run_step(self, job: Job, space: JobSpace, redactor: Redactor, step: Step) -> StepResult:
        runtime = self.runtimes.for_step(step)
        async with self._entry(job, redactor, step.key, self._command(step)) as entry:
            if runtime is None:
                entry.note("CLI steps need the shell sandbox (bubblewrap), which is not available here")
                entry.exit_code = 127
                return StepResult(127, reason=Reason.SANDBOX, message="no sandbox for CLI steps")
            try:
                result = await runtime.run_step(space, step, entry.write)
            except RuntimeFailure as exc:
                entry.note(exc.message)
                entry.exit_code = -1
                if exc.reason is Reason.IMAGE:
                    return StepResult(-1, reason=Reason.IMAGE, message=exc.message)
                raise
            _note_oom(entry, space, result)
            entry.exit_code = result.exit_code
            return result


def _note_oom(entry: LogEntry, space: JobSpace, result: StepResult) -> None:
    if result.oom_killed:
        entry.note(f"killed: out of memory (limit {space.limits.memory_bytes // 1024**2} MiB)")


class _Sink:
    """The PlanSink of one job: each step's log entry, opened and closed as a whole-job runtime
    reports the step, and the same checks as the per-step path."""

    def __init__(
        self, handler: JobHandler, job: Job, space: JobSpace, redactor: Redactor, exit_codes: list[int]
    ) -> None:
        self.handler, self.job, self.space, self.redactor = handler, job, space, redactor
        self.exit_codes = exit_codes
        self.entries: dict[str, LogEntry] = {}

    async def started(self, step: Step) -> OutputSink:
        entry = self.handler._entry(self.job, self.redactor, step.key, JobHandler._command(step))
        await entry.__aenter__()
        self.entries[step.key] = entry
        return entry.write

    async def close_open(self) -> None:
        """Close the entries of steps the runtime started but never finished (exit -1)."""
        for key in list(self.entries):
            entry = self.entries.pop(key)
            entry.note("the runtime stopped before this step finished")
            with contextlib.suppress(CorralError):
                await entry.__aexit__(None, None, None)

    async def finished(self, step: Step, result: StepResult) -> None:
        entry = self.entries.pop(step.key)
        if result.reason is not None and result.message:
            entry.note(result.message)
        _note_oom(entry, self.space, result)
        entry.exit_code = result.exit_code
        with contextlib.suppress(CorralError):
            await entry.__aexit__(None, None, None)
        JobHandler._check(self.space, step, result, self.exit_codes)
