"""Review R3 of the kubernetes runtime against the stand-in's API server (no kubelet: no pods run,
no Docker needed; the shipped Role is enforced). Each test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace, OutputSink, Step, StepResult
from corral.executor.workspace.base import CommandLog
from tests.integration.test_kubernetes_runtime import OWNER, _runtime

IMAGE = "corral/busybox:1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    from tests.kubekit import run_cluster

    with run_cluster(tmp_path / "cluster", kubelet=False) as c:
        yield c
        assert not c.violations(), c.violations()


class _Entry:
    exit_code: int | None = None

    def write(self, data: bytes) -> None:
        pass


class _Sink:
    async def started(self, step: Step) -> OutputSink:
        return lambda data: None

    async def finished(self, step: Step, result: StepResult) -> None:
        pass

    @contextlib.asynccontextmanager
    async def open_log(self, key: str, command: list[str]) -> AsyncIterator[CommandLog]:
        yield _Entry()


def _live(cluster: Any, plural: str, group: str = "") -> set[str]:
    objs = cluster.objects(plural, group)
    return {o["metadata"]["name"] for o in objs if not o["metadata"].get("deletionTimestamp")}


class _Died(Exception):
    """The executor was killed here."""


def _job_space(tmp_path: Path) -> tuple[JobSpace, JobPlan]:
    root = tmp_path / "job"
    space = JobSpace(
        job_id=5, queue="batches", root=root, workspace=root / "ws", owner=OWNER, attempt=1, executor_name="e"
    )
    step = Step(key="step.docker.0", kind="docker", index=0, image=IMAGE, argv=("true",), env={"A": "b"})
    return space, JobPlan(job_id=5, queue="batches", steps=(step,))


async def _killed_after(cluster: Any, tmp_path: Path, creations: int) -> None:
    """An executor killed right after its `creations`-th create call (no cleanup ran)."""
    rt = _runtime(cluster, tmp_path)
    space, plan = _job_space(tmp_path)
    auth = {"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"}}}
    await rt.workspace.prepare(space)
    await rt.stage(space, JobPlan(job_id=5, queue="batches", steps=(), registry_auth=auth))
    api = await rt.api()
    create, made = api.create, []

    async def dying_create(kind: str, body: Any) -> dict[str, Any]:
        obj = await create(kind, body)
        made.append(kind)
        if len(made) == creations:
            raise _Died
        return obj

    api.create = dying_create  # type: ignore[method-assign]
    with pytest.raises(_Died):
        await rt.run_plan(space, plan, _Sink())
    await rt.aclose()


@pytest.mark.parametrize("creations", [1, 2, 3])
async def test_an_executor_killed_between_its_creations_leaves_no_secret(
    cluster: Any, tmp_path: Path, creations: int
) -> None:
    """R3-4: the Job is created first and the job's Secrets (token, env, files; registry
    credentials) after it, owned by it: whenever the executor dies, the next executor's janitor,
    which lists Jobs and may not list Secrets, finds the Job and nothing stays (before: the Secrets
    came first, and an executor killed before the Job existed left them, job token included, with
    nothing naming them)."""
    await _killed_after(cluster, tmp_path, creations)
    fresh = _runtime(cluster, tmp_path)
    await fresh.janitor(set())
    await fresh.aclose()
    assert not _live(cluster, "jobs", "batch") and not cluster.objects("secrets")


async def test_the_jobs_secrets_are_owned_by_its_job(cluster: Any, tmp_path: Path) -> None:
    """R3-4: deleting the Job (cleanup, the janitor, an operator's kubectl) takes its Secrets with it;
    no blockOwnerDeletion (it needs jobs/finalizers update, which the Role does not grant)."""
    from tests.kubekit.apiserver import KINDS

    await _killed_after(cluster, tmp_path, 3)
    (job,) = _live(cluster, "jobs", "batch")
    assert _live(cluster, "secrets") == {f"{job}-secrets", f"{job}-registry"}
    for s in cluster.objects("secrets"):
        (ref,) = s["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"]) == ("Job", job) and not ref.get("blockOwnerDeletion")
    jobs = KINDS[("batch", "jobs")]
    cluster.call(cluster.api.delete, jobs, cluster.namespace, job, propagation="Background")
    for _ in range(100):
        if not cluster.objects("secrets"):
            break
        await asyncio.sleep(0.05)
    assert not cluster.objects("secrets")
