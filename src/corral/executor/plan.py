"""A job as a plan: what runs, in which order, with which image, argv, env and dir. Pure: no I/O.

The handler builds the plan from the Job, writes `plan.scripts` into the job's scripts dir (mounted
read-only at SCRIPTS_MOUNT), then runs `plan.steps` step by step, or gives the whole plan to a
runtime that runs jobs at once (`PlanRunner`).

Step keys, as Sourcegraph names them: `step.docker.<key or index>` for docker steps, then
`step.src.<key or index>` for CLI steps (src-cli in Sourcegraph; `EXECUTOR_CLI_PATH` here). Indexes
run across both lists, so a step's index is unique in the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.executor.runtimes.base import SCRIPTS_MOUNT, Step
from corral.protocol import Job

__all__ = ["CloneSpec", "JobPlan", "plan_job", "step_env"]


@dataclass(frozen=True)
class CloneSpec:
    """What to check out (the Job's fields of the same names)."""

    repository_name: str
    commit: str
    fetch_tags: bool = False
    shallow_clone: bool = False
    sparse_checkout: tuple[str, ...] | None = None


@dataclass(frozen=True)
class JobPlan:
    job_id: int
    queue: str
    steps: tuple[Step, ...]
    # step script file name -> its text, written by the handler into space.scripts
    scripts: Mapping[str, str] = field(default_factory=dict)
    repository: str = ""  # "" = no clone
    repository_directory: str = ""
    commit: str = ""
    clone: CloneSpec | None = None  # None = no clone
    outputs: tuple[str, ...] = ()
    # the job's dockerAuthConfig ({"auths": ...}), for runtimes that pull images (CredentialStager)
    registry_auth: Mapping[str, Any] | None = None

    @property
    def has_cli_steps(self) -> bool:
        return any(s.kind == "cli" for s in self.steps)


def step_env(entries: list[str] | None) -> dict[str, str]:
    """["K=V", ...] as a mapping (the last one of a key wins)."""
    out: dict[str, str] = {}
    for e in entries or []:
        k, _, v = e.partition("=")
        out[k] = v
    return out


def plan_job(job: Job, *, cli_path: str, default_queue: str = "") -> JobPlan:
    steps: list[Step] = []
    scripts: dict[str, str] = {}
    for i, d in enumerate(job.docker_steps or []):
        name = f"step-{i}.sh"
        scripts[name] = "set +e\nset -x\n" + "\n".join(d.commands) + "\n"
        steps.append(
            Step(
                key=f"step.docker.{d.key or i}",
                kind="docker",
                index=i,
                image=d.image,
                argv=("/bin/sh", f"{SCRIPTS_MOUNT}/{name}"),
                dir=d.dir,
                env=step_env(d.env),
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
                argv=(cli_path, *c.command),
                dir=c.dir,
                env=step_env(c.env),
            )
        )
    return JobPlan(
        job_id=job.id,
        queue=job.queue or default_queue,
        steps=tuple(steps),
        scripts=scripts,
        repository=job.repository_name or "",
        repository_directory=job.repository_directory or "",
        commit=job.commit or "",
        clone=CloneSpec(
            repository_name=job.repository_name,
            commit=job.commit,
            fetch_tags=bool(job.fetch_tags),
            shallow_clone=bool(job.shallow_clone),
            sparse_checkout=tuple(job.sparse_checkout) if job.sparse_checkout else None,
        )
        if job.repository_name
        else None,
        outputs=tuple(job.outputs or ()),
        registry_auth=job.docker_auth_config or None,
    )
