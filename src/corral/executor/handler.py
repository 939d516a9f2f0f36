"""One job, end to end: workspace, clone, files, steps in the runtime, results, and the mark call.

Outcomes (what the server is told):
- every step exits 0: results uploaded, markComplete;
- a step exits non-zero, is OOM-killed, its image is missing, or the job times out: markFailed
  with a reason a person understands (retrying would fail the same way);
- the clone or another setup step fails, or the runtime breaks: markErrored (the server retries);
- canceled (by the server or at shutdown): markFailed("canceled"); the server records `canceled`.
Cleanup (runtime, workspace) always runs, also after a cancel, and its errors are logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import CorralError, RuntimeFailure, ServerError
from corral.executor import identity
from corral.executor import workspace as ws
from corral.executor.client import QueueClient
from corral.executor.logs import LogEntry
from corral.executor.redact import RedactionLimitError, Redactor, RedactorCache, cache_key, check_limits
from corral.executor.runtimes.base import (
    META_MOUNT,
    SCRIPTS_MOUNT,
    JobSpace,
    Limits,
    Runtime,
    Step,
    StepResult,
)
from corral.executor.settings import ExecutorSettings, format_duration
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER, Job, check_workspace_path

log = logging.getLogger("corral.executor")


class StepFailed(CorralError):
    """A step ended badly; the job fails with this message."""

    def __init__(self, message: str, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class JobHandler:
    def __init__(
        self,
        settings: ExecutorSettings,
        client: QueueClient,
        runtime: Runtime,
        cli_runtime: Runtime | None,
        *,
        echo: bool = False,
    ) -> None:
        self.settings, self.client, self.runtime, self.cli_runtime = settings, client, runtime, cli_runtime
        self.echo = echo

    async def _redactor(self, job: Job) -> Redactor:
        """The job's redactor. Its secrets come from the job, so they are bounded first (over the
        limits the job fails: a retry would fail the same way), then the redactor is built in a worker
        thread, never on the event loop (it costs up to about a second: heartbeats and other jobs'
        logs must not wait), and kept per job and secrets, so the job's next attempt reuses it."""
        extra = [self.settings.frontend_password, job.token]
        for auth in [job.docker_auth_config, self.settings.docker_auth_config]:
            for entry in ((auth or {}).get("auths") or {}).values():
                if isinstance(entry, dict) and entry.get("auth"):
                    extra.append(entry["auth"])
                    with contextlib.suppress(ValueError):
                        extra += base64.b64decode(entry["auth"]).decode().split(":", 1)
        extra = [e for e in extra if e]
        values = job.redacted_values or {}
        try:
            check_limits(values)
        except RedactionLimitError as exc:
            raise StepFailed(str(exc), "redaction") from None
        cache: RedactorCache | None = getattr(self, "_redactors", None)
        if cache is None:
            cache = self._redactors = RedactorCache()
        key = await asyncio.to_thread(cache_key, job.id, values, extra)
        redactor = cache.get(key)
        if redactor is None:
            redactor = await asyncio.to_thread(Redactor, values, extra)
            cache.put(key, redactor)
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
            network=False,
            docker_config=None,
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
        space = self._space(job, root)
        limit = self.deadline(job)
        outcome: tuple[str, str] = ("complete", "")
        exit_codes: list[int] = []
        redactor: Redactor | None = None
        try:
            try:
                async with asyncio.timeout(limit):
                    redactor = await self._redactor(job)  # in a thread; may fail the job (StepFailed)
                    await self._run(job, space, redactor, exit_codes)
            except TimeoutError:
                raise StepFailed(
                    f"job exceeded maximum execution time of {format_duration(limit)}", "timeout"
                ) from None
        except StepFailed as exc:
            outcome = ("failed", exc.message)
            problem = await self._upload(job, space, exit_codes, exc.outcome)
            if problem is not None and problem[0] == "errored":
                outcome = problem
        except asyncio.CancelledError:
            outcome = ("canceled", "canceled")
            raise
        except RuntimeFailure as exc:
            outcome = ("errored", exc.message)
        except ServerError as exc:
            outcome = ("errored", f"lost contact with the server: {exc.message}")
        except Exception as exc:
            log.exception("job %s: unexpected error", job.id)
            outcome = ("errored", f"executor error: {exc!r}")
        else:
            outcome = await self._upload(job, space, exit_codes, "") or outcome
        finally:
            await asyncio.shield(self._finish(job, space, outcome, redactor))

    async def _finish(
        self, job: Job, space: JobSpace, outcome: tuple[str, str], redactor: Redactor | None
    ) -> None:
        kind, message = outcome
        if redactor is not None:  # messages quote git, docker and step keys: the job's text, maybe secrets
            message = redactor.redact_text(message)
        try:
            await self.runtime.cleanup(space)
            if self.cli_runtime is not None and self.cli_runtime is not self.runtime:
                await self.cli_runtime.cleanup(space)
            identity.release(self.settings, space.uid)  # nothing of the job runs as it any more
        except Exception:
            log.exception("job %s: runtime cleanup failed", job.id)
        if self.settings.keep_workspaces:  # keep the files (and disk.img), but free the loop device
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                await asyncio.to_thread(ws.unmount, space.workspace)
        else:
            await asyncio.to_thread(ws.remove_tree, space.root)
        try:
            if kind == "complete":
                await self.client.mark_complete(job)
            elif kind == "errored":
                await self.client.mark_errored(job, message)
            else:
                await self.client.mark_failed(job, message)
        except CorralError as exc:
            log.error("job %s: could not report %s to the server: %s", job.id, kind, exc)
        log.info("job %s: %s%s", job.id, kind, f" ({message})" if message else "")

    async def _upload(
        self, job: Job, space: JobSpace, exit_codes: list[int], outcome: str
    ) -> tuple[str, str] | None:
        """Collect and upload the diff and the outputs; an outcome that overrides success, or None.

        A result over a size limit fails the job (the producer must not get a silently empty diff);
        a server that refuses the upload as too large fails it too; an unreachable server errors it.
        """
        if not self.client.has("results"):
            return None
        diff, files = "", {}
        problem: tuple[str, str] | None = None
        meta = space.root / "meta.git"
        try:
            if job.repository_name and os.path.isdir(meta):
                diff = await self._diff(job, space, meta)
            if job.outputs:
                files, problems = await asyncio.to_thread(ws.read_outputs, space.workspace, job.outputs)
                for p in problems:
                    log.warning("job %s: %s", job.id, p)
                    if "limit" in p or "exceed" in p:
                        problem = ("failed", f"results: {p}")
        except RuntimeFailure as exc:
            log.warning("job %s: results incomplete: %s", job.id, exc)
            problem = ("failed", f"results: {exc.message}")
        try:
            await self.client.upload_result(job, exit_codes, diff, files, outcome)
        except ServerError as exc:
            log.warning("job %s: result upload failed: %s", job.id, exc)
            if exc.status is not None and 400 <= exc.status < 500:
                return ("failed", f"the server refused the results: {exc.message}")
            return ("errored", f"the results could not be uploaded: {exc.message}")
        except CorralError as exc:
            log.warning("job %s: result upload failed: %s", job.id, exc)
            return ("errored", f"the results could not be uploaded: {exc.message}")
        return problem

    async def _diff(self, job: Job, space: JobSpace, meta: Path) -> str:
        """The repository's diff, made inside the job's sandbox (never by git on the host: see ws.diff)."""
        sandbox = self.cli_runtime
        if sandbox is None:
            raise RuntimeFailure("the diff needs the shell sandbox (bubblewrap), which is not available")
        # meta.git is ours and was never visible to the job; the sandboxed git runs as the job's user.
        await asyncio.to_thread(ws.chown_tree, meta, space.uid, space.gid)

        async def run(argv: Sequence[str], env: Mapping[str, str], out: ws.Writer) -> int:
            step = Step(
                key="diff",
                kind="cli",
                index=-1,
                image=None,
                argv=tuple(argv),
                env=dict(env),
                binds=((os.fspath(meta), META_MOUNT),),
            )
            assert sandbox is not None
            async with asyncio.timeout(ws.GIT_TIMEOUT):
                result = await sandbox.run_step(space, step, out)
            if result.reason:
                raise RuntimeFailure(f"cannot make the diff: {result.message}", reason="diff")
            if result.oom_killed:
                raise RuntimeFailure("making the diff ran out of the job's memory", reason="diff")
            return result.exit_code

        return await ws.diff(run, job.repository_directory, job.commit)

    async def _run(self, job: Job, space: JobSpace, redactor: Redactor, exit_codes: list[int]) -> None:
        space.root.mkdir(parents=True, mode=0o700)
        space.workspace.mkdir(mode=0o755)
        space.scripts.mkdir(mode=0o755)
        if space.limits.disk_bytes > 0:
            await ws.mount_quota(space.root, space.workspace, space.limits.disk_bytes)
        self._write_docker_config(job, space)
        if job.repository_name:
            await self._clone(job, space, redactor)
        files = {p: f.data(job.version or 1) for p, f in job.files.items()}
        for p, f in job.files.items():
            if f.content is None and f.bucket:
                raise StepFailed(
                    f"file {p}: fetching from the files API (bucket {f.bucket}) is not supported", "files"
                )
        try:
            ws.write_files(space.workspace, files)
        except (RuntimeFailure, ValueError) as exc:
            raise StepFailed(str(exc), "files") from None
        steps = self._steps(job, space)
        await self.runtime.prepare(space)
        sandboxed = job.cli_steps or (job.repository_name and self.client.has("results"))
        if self.cli_runtime is not None and self.cli_runtime is not self.runtime and sandboxed:
            await self.cli_runtime.prepare(space)  # CLI steps and the diff run in the shell sandbox
        for step in steps:
            result = await self._run_step(job, space, redactor, step)
            exit_codes.append(result.exit_code)
            if result.reason == "image":
                raise StepFailed(f"{step.key}: {result.message}", "image")
            if result.reason == "disk":
                raise StepFailed(result.message or f"{step.key} exceeded its disk limit", "disk")
            if result.oom_killed:
                mib = space.limits.memory_bytes // 1024**2
                raise StepFailed(f"{step.key} was killed: out of memory (limit {mib} MiB)", "oom")
            if result.exit_code != 0:
                raise StepFailed(f"{step.key} failed with exit code {result.exit_code}", "exit")

    async def _run_step(self, job: Job, space: JobSpace, redactor: Redactor, step: Step) -> StepResult:
        runtime = self.runtime if step.kind == "docker" else self.cli_runtime
        cmd = [*step.argv] if step.kind == "cli" else [step.image or "", *step.argv]
        async with self._entry(job, redactor, step.key, cmd) as entry:
            if runtime is None:
                entry.note("CLI steps need the shell sandbox (bubblewrap), which is not available here")
                entry.exit_code = 127
                return StepResult(127, reason="sandbox", message="no sandbox for CLI steps")
            if step.kind == "docker" and runtime.name == "shell":
                entry.note(
                    f"the shell runtime runs steps on the host's tools; image {step.image} is not used"
                )
            try:
                result = await runtime.run_step(space, step, entry.write)
            except RuntimeFailure as exc:
                entry.note(exc.message)
                entry.exit_code = -1
                if exc.reason == "image":
                    return StepResult(-1, reason="image", message=exc.message)
                raise
            if result.oom_killed:
                entry.note(f"killed: out of memory (limit {space.limits.memory_bytes // 1024**2} MiB)")
            entry.exit_code = result.exit_code
            return result

    def _steps(self, job: Job, space: JobSpace) -> list[Step]:
        steps: list[Step] = []
        for i, d in enumerate(job.docker_steps or []):
            name = f"step-{i}.sh"
            # Our own directory beside the workspace (see safefs): nothing the job controls is on this path.
            fd = os.open(space.scripts / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write("set +e\nset -x\n" + "\n".join(d.commands) + "\n")
            steps.append(
                Step(
                    key=f"step.docker.{d.key or i}",
                    kind="docker",
                    index=i,
                    image=d.image,
                    argv=("/bin/sh", f"{SCRIPTS_MOUNT}/{name}"),
                    dir=d.dir,
                    env=_env(d.env),
                )
            )
        base = len(steps)
        for i, c in enumerate(job.cli_steps or []):
            steps.append(
                Step(
                    key=f"step.src.{c.key or i}",
                    kind="cli",
                    index=base + i,
                    image=None,
                    argv=(self.settings.cli_path, *c.command),
                    dir=c.dir,
                    env=_env(c.env),
                )
            )
        return steps

    def _write_docker_config(self, job: Job, space: JobSpace) -> None:
        auth: dict[str, Any] | None = None
        if job.docker_auth_config and job.docker_auth_config.get("auths"):
            auth = job.docker_auth_config
        elif self.settings.docker_auth_config and self.settings.docker_auth_config.get("auths"):
            auth = self.settings.docker_auth_config
        if auth is None:
            return
        d = space.root / "docker"
        d.mkdir(mode=0o700)
        fd = os.open(d / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": auth["auths"]}, f)
        space.docker_config = d

    async def _clone(self, job: Job, space: JobSpace, redactor: Redactor) -> None:
        repo = space.workspace
        if job.repository_directory:
            try:
                rel = check_workspace_path(job.repository_directory)
            except ValueError as exc:
                raise StepFailed(f"repositoryDirectory: {exc}", "files") from None
            repo = ws.make_dirs(space.workspace, rel)
        url = f"{self.settings.frontend_url}/.executors/git/{job.repository_name}"
        headers = {
            "Authorization": f"Bearer {job.token}",
            JOB_ID_HEADER: str(job.id),
            EXECUTOR_NAME_HEADER: self.settings.name,
        }
        if not job.token:
            headers = {"Authorization": f"token-executor {self.settings.frontend_password}"}
        env = ws.git_env(ws.auth_env(headers))
        for key, argv in ws.clone_commands(job, url):
            async with self._entry(job, redactor, key, argv) as entry:
                rc = await ws.run(argv, cwd=repo, env=env, out=entry.write)
                entry.exit_code = rc
            if rc != 0:
                raise RuntimeFailure(f"clone failed: {key} exited with {rc} (see its log)", reason="clone")
        await ws.prepare_meta_git(space.root, repo, job.commit)


def _env(entries: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in entries or []:
        k, _, v = e.partition("=")
        out[k] = v
    return out
