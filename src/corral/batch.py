"""Batch changes: the same steps in many repositories, one job each, one diff each.

Each repository's job is a protocol JobIn (the producer API's submit body). A spec (YAML):

    name: allowlist
    queue: batches                  # optional
    repositories:
      - path: ../api                # a local repository (registered as local/api)
      - {name: acme/web, path: ../web}   # a local repository registered under this name
      - name: acme/docs             # already registered on the server (with --server)
        commit: main                # optional, default HEAD
    steps:
      - image: corral/tools:1
        run: |
          grep -rl whitelist . | xargs -r sed -i 's/whitelist/allowlist/g'
        env: {LANG: C.UTF-8}
    timeout: 10m                    # optional, per repository

All or nothing: the whole spec is checked before anything is submitted (the spec's shape, every
path is a git repository holding its commit, every name is registered on the server, no two entries
name one repository), and when the server still refuses a job (a commit of a registered repository
that does not exist), the jobs already submitted are canceled: a failed `batch run` leaves nothing
queued behind for a later executor. A Ctrl-C (or SIGTERM) while it runs cancels its jobs.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.client import ProducerClient
from corral.console import LogPrinter
from corral.errors import ConfigError, CorralError, ServerError
from corral.executor.settings import parse_duration
from corral.protocol import JobIn, StateEvent
from corral.protocol.producer import DockerStepIn
from corral.protocol.states import TERMINAL as TERMINAL_STATES

__all__ = [
    "BatchSpec",
    "RepoRun",
    "cancel_runs",
    "follow",
    "plan",
    "print_diff",
    "report",
    "run",
    "submit",
    "summary",
]

GIT_TIMEOUT = 30  # seconds for a local check of a repository
CANCEL_WAIT = 15.0  # seconds to wait for canceled jobs to end (their executor stops their steps)
POLL = 0.2  # seconds between looks at a canceled job's state


class RepoRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    path: str | None = None
    commit: str = "HEAD"

    @model_validator(mode="after")
    def _one(self) -> RepoRef:
        if not self.name and not self.path:
            raise ValueError("a repository needs a name or a path")
        return self


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    run: str
    env: dict[str, str] = Field(default_factory=dict)
    dir: str = ""


class BatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    queue: str = "batches"
    repositories: list[RepoRef] = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)
    timeout: str | None = None

    @classmethod
    def load(cls, path: Path) -> BatchSpec:
        try:
            raw = yaml.safe_load(path.read_text())
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read batch spec {path}: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"invalid batch spec {path}:\n{exc}") from None


@dataclass
class Planned:
    """One repository's job, checked and ready to submit."""

    repo: str
    path: Path | None  # a local repository to register under `repo` first
    job: JobIn


@dataclass
class RepoRun:
    repo: str
    job_id: int = 0
    state: str = "queued"
    error: str | None = None
    diff: str = ""
    lines: list[str] = field(default_factory=list)


def _repo_name(ref: RepoRef, path: Path | None) -> str:
    if ref.name:
        return ref.name
    assert path is not None
    return "local/" + re.sub(r"[^A-Za-z0-9._-]", "-", path.name)


def _git(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(path), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


def _check_path(path: Path, commit: str, shown: str) -> str | None:
    """Why `path` cannot be used (None: it is a git repository holding `commit`)."""
    if not path.is_dir():
        return f"{shown}: no such directory ({path})"
    try:
        if _git(path, "rev-parse", "--git-dir").returncode != 0:
            return f"{shown}: not a git repository ({path})"
        if commit.startswith("-"):
            return f"{shown}: invalid commit {commit!r}"
        found = _git(path, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{shown}: cannot run git: {exc}"
    if found.returncode != 0:
        return f"{shown}: commit {commit!r} does not exist in {path}"
    return None


def plan(spec: BatchSpec, base: Path, registered: set[str] | None) -> list[Planned]:
    """Every repository's job, or ConfigError naming every problem of the spec at once.

    `registered`: the names the server knows (a `name` without `path` must be one of them); None
    when the server is one started for this run, which knows none."""
    problems: list[str] = []
    planned: list[Planned] = []
    seen: dict[str, str] = {}
    timeout: int | None = None
    if spec.timeout:
        try:
            timeout = int(parse_duration(spec.timeout))
        except (ValueError, CorralError) as exc:
            problems.append(f"timeout: {exc}")
    for i, ref in enumerate(spec.repositories):
        shown = f"repositories[{i}] ({ref.path or ref.name})"
        path = (base / Path(ref.path).expanduser()).resolve() if ref.path else None
        name = _repo_name(ref, path)
        if name in seen:
            problems.append(
                f"{shown}: names repository {name}, as {seen[name]} does: give one of them a name"
            )
        seen.setdefault(name, shown)
        if path is not None:
            if why := _check_path(path, ref.commit, shown):
                problems.append(why)
        elif registered is None:
            problems.append(
                f"{shown}: {name} is not known to the server this run starts (it knows no repositories): "
                f"give its path ({{name: {name}, path: ...}}), or run against a server with --server"
            )
        elif name not in registered:
            problems.append(
                f"{shown}: repository {name} is not registered on the server: add it "
                f"(corral repo add {name} PATH) or give its path in the spec"
            )
        try:
            job = JobIn(
                repository_name=name,
                commit=ref.commit,
                docker_steps=[
                    DockerStepIn(
                        key=f"{n}",
                        image=s.image,
                        commands=s.run.strip().splitlines(),
                        dir=s.dir,
                        env=[f"{k}={v}" for k, v in s.env.items()],
                    )
                    for n, s in enumerate(spec.steps)
                ],
                namespace=spec.name,
                **({"timeout_seconds": timeout} if timeout else {}),
            )
        except ValidationError as exc:
            problems.append(f"{shown}: {exc}")
            continue
        planned.append(Planned(repo=name, path=path, job=job))
    if problems:
        raise ConfigError("the batch spec cannot run; nothing was submitted:\n  " + "\n  ".join(problems))
    return planned


def submit(planned: list[Planned], client: ProducerClient, queue: str, runs: list[RepoRun]) -> None:
    """Register the local repositories, then submit every job (appended to `runs` as it goes). A
    refused job cancels the ones submitted before it: nothing is left queued."""
    for p in planned:
        if p.path is not None:
            client.add_repo(p.repo, str(p.path))
    for p in planned:
        try:
            created = client.submit_job(queue, p.job)
        except ServerError as exc:
            canceled = cancel_runs(runs, client, wait=0)
            undone = f" (canceled the {len(canceled)} job(s) submitted before it)" if canceled else ""
            raise ConfigError(f"the server refused the job for {p.repo}: {exc.message}{undone}") from None
        runs.append(RepoRun(repo=p.repo, job_id=created.id))


def cancel_runs(runs: list[RepoRun], client: ProducerClient, *, wait: float = CANCEL_WAIT) -> list[int]:
    """Cancel every job of `runs` that has not ended, then wait (at most `wait` seconds) until they
    have. Returns the ids it asked to cancel."""
    asked: list[int] = []
    for r in runs:
        if r.job_id and r.state not in TERMINAL_STATES:
            try:
                view = client.cancel_job(r.job_id)
                r.state = view.state
                asked.append(r.job_id)
            except ServerError as exc:
                if exc.status != 409:  # 409: it ended meanwhile
                    r.error = exc.message
    deadline = time.monotonic() + wait
    pending = [r for r in runs if r.job_id in asked]
    while pending and time.monotonic() < deadline:
        for r in list(pending):
            try:
                view = client.job(r.job_id)
            except ServerError:
                continue
            if view.state in TERMINAL_STATES:
                r.state, r.error = view.state, view.error
                pending.remove(r)
        if pending:
            time.sleep(POLL)
    return asked


def follow(runs: list[RepoRun], client: ProducerClient, *, live: bool = True) -> None:
    """Stream every job's log at once (lines prefixed with the repository) until all have ended."""
    if not runs:
        return
    lock = threading.Lock()
    width = max(len(r.repo) for r in runs)

    def one(run: RepoRun) -> None:
        printer = LogPrinter(f"{run.repo:<{width}} │ ", quiet_setup=True)
        try:
            for ev in client.follow(run.job_id, on_reconnect=lambda _why: None):
                if isinstance(ev, StateEvent):
                    run.state, run.error = ev.state, ev.error
                if live:
                    with lock:
                        printer.event(ev)
        except CorralError as exc:
            run.state, run.error = "unknown", exc.message

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs:
        if r.state == "completed":
            r.diff = client.job_result(r.job_id).diff


def run(
    spec: BatchSpec, client: ProducerClient, base: Path, *, local: bool, live: bool = True
) -> list[RepoRun]:
    """Check, submit and follow the batch; on KeyboardInterrupt cancel its jobs (and re-raise)."""
    registered = None if local else {r.name for r in client.repositories()}
    planned = plan(spec, base, registered)
    runs: list[RepoRun] = []
    try:
        submit(planned, client, spec.queue, runs)
        follow(runs, client, live=live)
    except KeyboardInterrupt:
        typer.secho("\ninterrupted: canceling the batch's jobs…", fg=typer.colors.YELLOW, bold=True, err=True)
        asked = cancel_runs(runs, client)
        left = [r.job_id for r in runs if r.job_id in asked and r.state not in TERMINAL_STATES]
        done = ", ".join(str(i) for i in asked) or "none"
        typer.secho(f"canceled jobs: {done}" + (f" (still ending: {left})" if left else ""), err=True)
        raise
    return runs


def print_diff(diff: str) -> None:
    for line in diff.splitlines():
        color = None
        if line.startswith("+") and not line.startswith("+++"):
            color = typer.colors.GREEN
        elif line.startswith("-") and not line.startswith("---"):
            color = typer.colors.RED
        elif line.startswith("@@"):
            color = typer.colors.CYAN
        typer.secho("    " + line, fg=color)


def report(runs: list[RepoRun]) -> int:
    """Print each repository's outcome and diff; returns how many did not complete."""
    bad = 0
    for r in runs:
        ok = r.state == "completed"
        bad += not ok
        head = f"{'✓' if ok else '✗'} {r.repo} (job {r.job_id}): {r.state}"
        typer.secho(
            head + (f" — {r.error}" if r.error else ""),
            fg=typer.colors.GREEN if ok else typer.colors.RED,
            bold=True,
        )
        if ok and r.diff:
            print_diff(r.diff)
        elif ok:
            typer.echo("    (no changes)")
    return bad


def summary(runs: list[RepoRun]) -> list[dict[str, Any]]:
    """The runs as JSON (for `--json`)."""
    return [
        {"repository": r.repo, "jobId": r.job_id, "state": r.state, "error": r.error, "diff": r.diff}
        for r in runs
    ]
