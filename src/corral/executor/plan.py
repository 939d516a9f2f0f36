"""A job as a plan: what runs, in which order, with which image, argv, env and dir. Pure: no I/O.

The handler builds the plan from the Job, writes `plan.scripts` into the job's scripts dir (mounted
read-only at SCRIPTS_MOUNT), then runs `plan.steps` step by step, or gives the whole plan to a
runtime that runs jobs at once (`PlanRunner`).

Step keys, as Sourcegraph names them: `step.docker.<key or index>` for docker steps, then
`step.src.<key or index>` for CLI steps. Indexes run across both lists, so a step's index is unique
in the job. Which binary a CLI step runs is the handler's choice (`cli_path`: corral's CLI against
corral's server, Sourcegraph's src-cli against Sourcegraph's).

Step skipping (Sourcegraph's batch changes): after a step whose key ends in `.pre` succeeds, the
executor reads `skip.json` ({"nextStep": "<step key>"}) at the top of the workspace, removes it,
and skips the following steps up to the one keyed `step.docker.<nextStep>` (cmd/executor/internal/
worker/handler.go, Handle; runner/skip.go; internal/executor/util/batcheshelper.go). Only a job
without CLI steps skips: Sourcegraph runs jobs with CLI steps on its legacy path, which never reads
skip.json. `next_step` parses the file as Go's encoding/json would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.executor.runtimes.base import SCRIPTS_MOUNT, Step
from corral.protocol import Job

__all__ = [
    "MAX_SKIP_FILE",
    "SKIP_FILE",
    "CloneSpec",
    "JobPlan",
    "is_pre_step",
    "next_step",
    "plan_job",
    "skip_target",
    "step_env",
]

SKIP_FILE = "skip.json"  # types.SkipFile
MAX_SKIP_FILE = 64 * 1024  # bytes of skip.json read at most (it holds one step key)
MAX_STEP_KEY = 1024  # characters of a nextStep


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

    @property
    def skips(self) -> bool:
        """Whether skip.json is honoured (Sourcegraph: only on the runtime path, no CLI steps)."""
        return not self.has_cli_steps

    @property
    def skip_points(self) -> list[str]:
        """The keys of the steps after which skip.json is read (`.pre` steps), when it is honoured."""
        return [s.key for s in self.steps if is_pre_step(s.key)] if self.skips else []


def is_pre_step(key: str) -> bool:
    """A step after which skip.json is read (util.IsPreStepKey: the key ends in ".pre")."""
    return key.endswith(".pre")


def skip_target(next_step: str) -> str:
    """The step key skipping stops at: runtime.CommandKey -> dockerKey("step.docker." + nextStep)."""
    return f"step.docker.{next_step}"


def next_step(data: bytes) -> str:
    """skip.json's nextStep ("" = skip nothing), decoded as Go's json.Unmarshal into types.Skip:
    an object (field name matched case-insensitively, the last match winning; other fields ignored)
    or null; anything else, or a nextStep that is not a string, is a ValueError naming the problem."""
    text = data.decode("utf-8", "replace")  # Go's decoder turns invalid UTF-8 into U+FFFD too
    try:
        whole = json.loads(text, parse_constant=_not_json)
    except RecursionError:  # e.g. 30000 "[" (Python stops near depth 1000, Go's decoder past 10000)
        raise ValueError("unmarshalling skip file: not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise ValueError(f"unmarshalling skip file: not JSON ({exc})") from None
    if whole is None:
        return ""
    if not isinstance(whole, dict):
        raise ValueError(f"unmarshalling skip file: a JSON {type(whole).__name__}, not an object")
    value: Any = None
    for k, v in json.loads(text, object_pairs_hook=list):  # the top level's fields, in order
        if k.lower() == "nextstep":
            value = v
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"unmarshalling skip file: nextStep is a {type(value).__name__}, not a string")
    if len(value) > MAX_STEP_KEY:
        raise ValueError(f"unmarshalling skip file: nextStep is longer than {MAX_STEP_KEY} characters")
    return value


def _not_json(constant: str) -> Any:
    """json.loads takes NaN, Infinity and -Infinity; JSON (and Go's decoder) does not."""
    raise ValueError(f"{constant} is not JSON")


def step_env(entries: list[str] | None) -> dict[str, str]:
    """["K=V", ...] as a mapping (the last one of a key wins)."""
    out: dict[str, str] = {}
    for e in entries or []:
        k, _, v = e.partition("=")
        out[k] = v
    return out


def plan_job(job: Job, *, cli_path: str, default_queue: str = "") -> JobPlan:
    """The job's plan; CLI steps run `cli_path` with the step's command as its arguments."""
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
