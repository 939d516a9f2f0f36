"""Batch changes: the same steps in many repositories, one job each, one diff each.

Each repository's job is a protocol JobIn (the producer API's submit body), checked before it is sent.

A spec (YAML):

    name: allowlist
    queue: batches                  # optional
    repositories:                   # a local path (registered for you) and/or a registered name
      - path: ~/src/api
      - name: acme/web
    steps:
      - image: corral/tools:1
        run: |
          grep -rl whitelist . | xargs -r sed -i 's/whitelist/allowlist/g'
        env: {LANG: C.UTF-8}
    timeout: 10m                    # optional, per repository
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.client import ProducerClient
from corral.console import print_event
from corral.errors import ConfigError, CorralError
from corral.executor.settings import parse_duration
from corral.protocol import DockerStep, JobIn, StateEvent


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
    repositories: list[RepoRef]
    steps: list[StepSpec]
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
class RepoRun:
    repo: str
    job_id: int = 0
    state: str = "queued"
    error: str | None = None
    diff: str = ""
    lines: list[str] = field(default_factory=list)


def _repo_name(ref: RepoRef, base: Path) -> str:
    if ref.name:
        return ref.name
    assert ref.path
    p = (base / Path(ref.path).expanduser()).resolve()
    return "local/" + re.sub(r"[^A-Za-z0-9._-]", "-", p.name)


def submit(spec: BatchSpec, client: ProducerClient, base: Path) -> list[RepoRun]:
    runs: list[RepoRun] = []
    timeout = int(parse_duration(spec.timeout)) if spec.timeout else None
    for ref in spec.repositories:
        name = _repo_name(ref, base)
        if ref.path:
            client.add_repo(name, str((base / Path(ref.path).expanduser()).resolve()))
        job = JobIn(
            repository_name=name,
            commit=ref.commit,
            docker_steps=[
                DockerStep(
                    key=f"{i}",
                    image=s.image,
                    commands=s.run.strip().splitlines(),
                    dir=s.dir,
                    env=[f"{k}={v}" for k, v in s.env.items()],
                )
                for i, s in enumerate(spec.steps)
            ],
            namespace=spec.name,
            **({"timeout_seconds": timeout} if timeout else {}),
        )
        created = client.submit_job(spec.queue, job)
        runs.append(RepoRun(repo=name, job_id=created.id))
    return runs


def follow(runs: list[RepoRun], client: ProducerClient, *, live: bool = True) -> None:
    """Stream every job's log at once (lines prefixed with the repository) until all have ended."""
    lock = threading.Lock()
    width = max(len(r.repo) for r in runs)

    def one(run: RepoRun) -> None:
        prefix = typer.style(f"{run.repo:<{width}} │ ", fg=typer.colors.MAGENTA)
        try:
            for ev in client.events(run.job_id):
                if isinstance(ev, StateEvent):
                    run.state, run.error = ev.state, ev.error
                if live:
                    with lock:
                        print_event(ev.model_dump(mode="json", by_alias=True), prefix)
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
