"""skip.json (Sourcegraph's step skipping after a `.pre` step) on the whole-job runtimes: the
firecracker runtime cannot stop its guest after a `.pre` step yet, so such a job is refused with a
clear reason before any VM is taken from the pool or booted (it used to run every step and ignore
the skip.json, silently running steps Sourcegraph would have skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.errors import Reason, StepFailed
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace, Step
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime


def _step(key: str, kind: str = "docker", index: int = 0) -> Step:
    return Step(key, kind, index, "corral/busybox:1" if kind == "docker" else None, ("true",))  # type: ignore[arg-type]


def test_skip_points_are_the_pre_steps_of_a_job_that_honours_skip_json() -> None:
    steps = (_step("step.docker.a.pre"), _step("step.docker.b", index=1))
    assert JobPlan(1, "q", steps).skip_points == ["step.docker.a.pre"]
    assert JobPlan(1, "q", (_step("step.docker.b"),)).skip_points == []
    # with a CLI step Sourcegraph never reads skip.json: nothing to honour
    with_cli = (*steps, _step("step.src.0", "cli", 2))
    assert JobPlan(1, "q", with_cli).skip_points == []


async def test_firecracker_refuses_a_pre_step_job_before_any_vm(tmp_path: Path) -> None:
    docker = DockerRuntime(pull=False, owner="fcskip")
    rt = FirecrackerRuntime(docker, owner="fcskip", cache_dir=tmp_path / "images", vm_dir=tmp_path / "vms")
    space = JobSpace(1, "q", tmp_path / "job", tmp_path / "job" / "workspace")
    booted: list[str] = []

    async def guest(*_: Any) -> None:
        booted.append("vm")

    rt._guest = guest  # type: ignore[method-assign]
    plan = JobPlan(1, "q", (_step("step.docker.a.pre"), _step("step.docker.b", index=1)))
    with pytest.raises(StepFailed) as err:
        await rt.run_plan(space, plan, None)  # type: ignore[arg-type]
    assert "step.docker.a.pre" in str(err.value) and "skip.json" in str(err.value)
    assert err.value.reason == Reason.SANDBOX
    assert booted == []
    await docker.aclose()
