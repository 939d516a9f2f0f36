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
- canceled (by the server or at shutdown): markFailed("canceled"); the server records `canceled`;
- dropped (the server no longer considers it ours, see Worker.drop): stopped, cleaned up, no mark.
Cleanup (runtimes, workspace) always runs, also after a cancel, and its errors are logged.

Reattached jobs (`handle(job, resume=entries)`: the worker took the attempt back from the server
after a restart, see runtimes.base.Reattacher): nothing is cloned, staged or created again; the
runtime follows its sandbox from where the server's log stands (`_ResumeSink`), then the results
and the mark go as for any job, once.

CLI steps follow the server: against corral's server they run corral's CLI (EXECUTOR_CLI_PATH);
against a Sourcegraph server they run Sourcegraph's src-cli (`src`, which implements `batch-exec`,
EXECUTOR_SRC_CLI_PATH), since that is what a Sourcegraph job's CLI steps are written for. A
Sourcegraph job with CLI steps on an executor without src-cli fails at once, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import subprocess
from enum import StrEnum
from pathlib import Path

from corral.errors import CorralError, Reason, RuntimeFailure, ServerError, StepFailed
from corral.executor import identity, safefs, stopping
from corral.executor.client import QueueClient, job_key
from corral.executor.jobfiles import write_job_files
from corral.executor.logs import LogEntry
from corral.executor.network import Allow, NetworkMode, NetworkPolicy, server_allow
from corral.executor.plan import (
    MAX_SKIP_FILE,
    SKIP_FILE,
    JobPlan,
    is_pre_step,
    next_step,
    plan_job,
    skip_target,
)
from corral.executor.redact import (
    RedactionLimitError,
    Redactor,
    RedactorCache,
    cache_key,
    check_limits,
    records,
)
from corral.executor.redact.results import describe, redact_results
from corral.executor.runtimes.base import (
    CredentialStager,
    JobSpace,
    Limits,
    OutputSink,
    PlanRunner,
    Reattacher,
    Runtime,
    Step,
    StepResult,
    WorkspaceProvider,
)
from corral.executor.runtimes.registry import RuntimeSet
from corral.executor.settings import ExecutorSettings
from corral.executor.workspace import HostWorkspace, Workspace
from corral.executor.workspace.host import job_root_name
from corral.protocol import Job, KnownLogEntry
from corral.units import format_duration

__all__ = ["SRC_CLI", "JobHandler", "Outcome", "StepFailed", "src_cli_path"]

log = logging.getLogger("corral.executor")
SRC_CLI = "src"  # Sourcegraph's CLI (src-cli), as Sourcegraph's executor runs CLI steps


def src_cli_path(settings: ExecutorSettings) -> str | None:
    """EXECUTOR_SRC_CLI_PATH (`ExecutorSettings.src_cli_path`: default `src` on PATH, else None)."""
    if hasattr(settings, "src_cli_path"):
        configured: str | None = settings.src_cli_path
        return configured
    return shutil.which(SRC_CLI)  # settings from before EXECUTOR_SRC_CLI_PATH existed


class Outcome(StrEnum):
    """How a job ended here, i.e. which mark call the server gets."""

    COMPLETE = "complete"
    FAILED = "failed"
    ERRORED = "errored"
    CANCELED = "canceled"
    DROPPED = "dropped"  # the server disowned the job: nothing is reported


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
        records.install()  # log records made for a job pass its redactor (redact/records.py)
        # By job_key. Jobs this executor stops on its own (shutdown): reported errored (retried),
        # not canceled.
        self.stopped_locally: dict[str, bool] = {}
        # By job_key. Jobs the server no longer considers ours (Worker.drop): stopped, never marked.
        self.disowned: set[str] = set()
        self._entries: dict[str, list[LogEntry]] = {}  # by job_key: the log entries a job opened
        self._server_allow: list[Allow] | None = None  # the server's address:port, resolved once

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

    def disown(self, key: str) -> None:
        """The server no longer considers job `key` ours (Worker.drop, which then stops its task):
        its log entries go quiet (the server would refuse every write) and it is never marked."""
        self.disowned.add(key)
        for entry in self._entries.get(key, ()):
            entry.lost = True

    def _entry(self, job: Job, redactor: Redactor, key: str, command: list[str]) -> LogEntry:
        task = asyncio.current_task()  # the job's task: stopped when the server says it is not ours
        entry = LogEntry(
            self.client,
            job,
            key,
            command,
            redactor,
            max_bytes=self.settings.log_max_bytes,
            echo=self.echo,
            on_lost=task.cancel if task is not None else None,
        )
        entry.lost = job_key(job) in self.disowned
        self._entries.setdefault(job_key(job), []).append(entry)
        return entry

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
            attempt=job.attempt or 0,
        )

    def deadline(self, job: Job) -> float:
        limit = self.settings.maximum_runtime_per_job
        if job.timeout_seconds:
            limit = min(limit, float(job.timeout_seconds))
        return limit

    async def handle(self, job: Job, resume: list[KnownLogEntry] | None = None) -> None:
        """Run the job and report its outcome; raises CancelledError when canceled. With `resume`
        (the attempt's log entries as the server has them) the job is a reattached one: the
        runtime follows its sandbox again instead of running it."""
        s = self.settings
        try:
            name = job_root_name(
                s.vm_prefix, job.queue or s.queues[0], job.id, job.attempt or 0, secrets.token_hex(4)
            )
        except ValueError as exc:
            # QueueClient.dequeue takes only the executor's own queues; a queue that is not a name
            # must never become a host path (nor a route: the job is not reported, the server's
            # resetter requeues it).
            log.error("job %s: refusing to run it: %s", job.id, exc)
            return
        root = s.workspace_root / name
        try:
            space = self._space(job, root)
        except identity.IdentityExhausted as exc:  # no uid free: another executor (or a later try) runs it
            log.error("job %s: %s", job.id, exc)
            with contextlib.suppress(CorralError):
                await self.client.mark_errored(job, f"no job uid free on this executor: {exc}")
            return
        cli_path = self.cli_path()
        plan = plan_job(job, cli_path=cli_path or SRC_CLI, default_queue=space.queue)
        key = job_key(job)
        limit = self.deadline(job)
        outcome: Result = (Outcome.COMPLETE, "")
        exit_codes: list[int] = []
        redactor: Redactor | None = None
        token: records.Token | None = None
        try:
            try:
                async with stopping.deadline(limit):  # asyncio.timeout that says "timeout after" in the log
                    if plan.has_cli_steps and cli_path is None:
                        raise StepFailed(self._no_src_cli(plan), Reason.SANDBOX)
                    space.network = await self._network(job, plan)  # may fail the job (StepFailed)
                    redactor = await self._redactor(job, plan)  # in a thread; may fail the job (StepFailed)
                    token = records.use(redactor)  # the executor's own log lines about it: redacted
                    if resume is not None:
                        await self._reattached(job, plan, space, redactor, exit_codes, resume)
                    else:
                        await self._run(job, plan, space, redactor, exit_codes)
            except TimeoutError:
                raise StepFailed(
                    f"job exceeded maximum execution time of {format_duration(limit)}", Reason.TIMEOUT
                ) from None
        except StepFailed as exc:
            outcome = (Outcome.FAILED, exc.message)
            problem = await self._upload(job, plan, space, exit_codes, exc.reason, redactor)
            if problem is not None and problem[0] is Outcome.ERRORED:
                outcome = problem
        except asyncio.CancelledError:
            if self.stopped_locally.pop(key, False):  # this executor shut down: another one retries
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
            # str, not repr: repr escapes line breaks, and a wrapped secret form would escape redaction
            outcome = (Outcome.ERRORED, f"executor error: {type(exc).__name__}: {exc}")
        else:
            outcome = await self._upload(job, plan, space, exit_codes, "", redactor) or outcome
        finally:
            if key in self.disowned:  # whatever ended the job meanwhile, there is nothing to report
                outcome = (Outcome.DROPPED, "the server no longer considers the job this executor's")
            try:
                await asyncio.shield(self._finish(job, space, outcome, redactor))
            finally:
                self.disowned.discard(key)
                self._entries.pop(key, None)
                if token is not None:
                    records.reset(token)

    async def _network(self, job: Job, plan: JobPlan) -> NetworkPolicy:
        """The job's network (README "Network"): none unless it asks (`network: true`, or every job
        with EXECUTOR_NETWORK_ALL_JOBS); then EXECUTOR_NETWORK's. A job asking for it on an executor
        with EXECUTOR_NETWORK=none fails, it never runs without. Under deny-private a job with CLI
        steps (they talk to the server) may also reach the server's address and port."""
        s = self.settings
        mode = getattr(s, "network", NetworkMode.NONE)
        if not (job.network or getattr(s, "network_all_jobs", False)):
            return NetworkPolicy.none()
        if mode is NetworkMode.NONE:
            if job.network:
                raise StepFailed(
                    "this executor gives jobs no network (EXECUTOR_NETWORK=none)", Reason.SANDBOX
                )
            return NetworkPolicy.none()
        if mode is NetworkMode.OPEN:
            return NetworkPolicy.open()
        allow = [Allow.parse(a) for a in s.network_allow]
        if plan.has_cli_steps:
            if self._server_allow is None:
                self._server_allow = await server_allow(s.frontend_url)
            allow += self._server_allow
        return NetworkPolicy.deny_private(allow, uplink=s.network_uplink_netns or None)

    def cli_path(self) -> str | None:
        """The binary CLI steps run: corral's CLI against corral's server, Sourcegraph's src-cli
        against a Sourcegraph server (None when it is not installed)."""
        return self.settings.cli_path if self.client.server_is_corral else src_cli_path(self.settings)

    @staticmethod
    def _no_src_cli(plan: JobPlan) -> str:
        n = sum(1 for s in plan.steps if s.kind == "cli")
        return (
            f"this job has {n} CLI step(s), which a Sourcegraph server writes for Sourcegraph's src-cli "
            f"({SRC_CLI} batch-exec ...), and src-cli is not installed on this executor: install src-cli "
            f"or point EXECUTOR_SRC_CLI_PATH at it"
        )

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
            if kind is Outcome.DROPPED:
                pass  # see Worker.drop: the attempt is not ours any more, a mark could hit a newer one
            elif kind is Outcome.COMPLETE:
                await self.client.mark_complete(job)
            elif kind is Outcome.ERRORED:
                await self.client.mark_errored(job, message)
            else:
                await self.client.mark_failed(job, message)
        except CorralError as exc:
            log.error("job %s: could not report %s to the server: %s", job.id, kind, exc)
        log.info("job %s: %s%s", job.id, kind, f" ({message})" if message else "")

    async def _upload(
        self,
        job: Job,
        plan: JobPlan,
        space: JobSpace,
        exit_codes: list[int],
        outcome: str,
        redactor: Redactor | None,
    ) -> Result | None:
        """Collect, redact and upload the diff and the outputs; an outcome that overrides success, or
        None.

        A result over a size limit fails the job (the producer must not get a silently empty diff);
        a server that refuses the upload as too large fails it too; an unreachable server errors it.
        The diff and the outputs pass the job's redactor (redact/results.py: the diff stays a diff, a
        redacted context line makes its hunk fail to apply); when something was redacted the job's
        log gets an entry `results.redacted` saying what. Without a redactor (the job failed before
        it was built: no step ran) nothing of the workspace is uploaded.
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
        if redactor is None:
            diff, files = "", {}
        elif redactor:
            redacted = await asyncio.to_thread(redact_results, redactor, diff, files)
            diff, files = redacted.diff, redacted.files
            if note := describe(redacted):
                async with self._entry(job, redactor, "results.redacted", []) as entry:
                    entry.note(note)
                    entry.exit_code = 0
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
        await write_job_files(self.client, job, space, workspace)
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
        skip_to = ""
        for step in plan.steps:
            if skip_to and step.key != skip_to:
                log.info("job %s: skipping %s (skip.json names %s)", job.id, step.key, skip_to)
                continue
            skip_to = ""
            result = await self._run_step(job, space, redactor, step)
            self._check(space, step, result, exit_codes)
            if plan.skips and is_pre_step(step.key):
                skip_to = await self._skip_to(space, step)

    async def _reattached(
        self,
        job: Job,
        plan: JobPlan,
        space: JobSpace,
        redactor: Redactor,
        exit_codes: list[int],
        entries: list[KnownLogEntry],
    ) -> None:
        """A job whose sandbox a previous process of this executor started (see the module docstring)."""
        main = self.runtimes.main
        if not isinstance(main, Reattacher):
            raise RuntimeFailure(f"the {main.name} runtime cannot reattach a job")
        await self.workspace.prepare(space)
        await main.prepare(space)
        sink = _ResumeSink(self, job, space, redactor, exit_codes, entries)
        try:
            await main.reattach(space, plan, sink)
        finally:
            await sink.close_open()

    async def _skip_to(self, space: JobSpace, step: Step) -> str:
        """The key of the step to skip to, from the skip.json the `.pre` step left ("" = none).

        A skip.json that cannot be used (not JSON, not an object, nextStep not a string, too large,
        a link or not a regular file) errors the job, so the server retries it, as Sourcegraph's
        handler returns NextStep's error ("checking for skip file") from Handle, which its worker
        marks errored (cmd/executor/internal/worker/handler.go, runner/skip.go)."""
        try:
            data = await self.workspace.take_file(space, SKIP_FILE, MAX_SKIP_FILE)
            target = next_step(data) if data is not None else ""
        except (safefs.UnsafePath, ValueError, OSError) as exc:
            message = f"{step.key}: checking for {SKIP_FILE}: {exc}"
            raise RuntimeFailure(message, reason=Reason.FILES) from None
        return skip_target(target) if target else ""

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

    def open_log(self, key: str, command: list[str]) -> LogEntry:
        return self.handler._entry(self.job, self.redactor, key, command)

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


class _ResumeSink(_Sink):
    """The ResumeSink of a reattached job: entries the server has are continued, not added again."""

    def __init__(
        self,
        handler: JobHandler,
        job: Job,
        space: JobSpace,
        redactor: Redactor,
        exit_codes: list[int],
        known: list[KnownLogEntry],
    ) -> None:
        super().__init__(handler, job, space, redactor, exit_codes)
        self._known = {e.key: e for e in known}  # the last entry of each key (they come in order)

    def known(self, key: str) -> KnownLogEntry | None:
        return self._known.get(key)

    async def resume(self, step: Step) -> OutputSink:
        known = self._known[step.key]
        entry = self.handler._entry(self.job, self.redactor, step.key, JobHandler._command(step))
        await entry.resume(known.entry_id, known.out_len, replay=True).__aenter__()
        self.entries[step.key] = entry
        return entry.write

    async def skipped(self, step: Step, exit_code: int) -> None:
        JobHandler._check(self.space, step, StepResult(exit_code), self.exit_codes)

    def resume_log(self, key: str, command: list[str]) -> LogEntry:
        entry = self.handler._entry(self.job, self.redactor, key, command)
        known = self._known.get(key)
        return entry.resume(known.entry_id, known.out_len, replay=False) if known is not None else entry
