"""Review R4 of the kubernetes runtime: two executors with different EXECUTOR_VM_PREFIX in one namespace,
and a long queue name. Each test fails on the code before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.errors import KubernetesAPIError, RuntimeFailure
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.kubernetes import manifests
from corral.executor.runtimes.kubernetes.reattach import _orphan
from corral.executor.runtimes.kubernetes.runtime import KubernetesRuntime, _Run
from corral.executor.settings import ExecutorSettings

ENV = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "Vx3kq9Lw2RzT7mN4pB8dYc1F",
    "EXECUTOR_QUEUE_NAME": "batches",
    "EXECUTOR_RUNTIME": "kubernetes",
    "EXECUTOR_NAME": "exec-host-1",
}
ROOT = Path("/nonexistent/j")


def test_two_owners_never_share_a_jobs_name() -> None:
    # owner "a-b" queue "c" and owner "a" queue "b-c": both were corral-a-b-c-1-1
    assert manifests.job_names("a-b", "c", 1, 1).job != manifests.job_names("a", "b-c", 1, 1).job
    seen = {
        manifests.job_names(owner, queue, 5, 1).job
        for owner in ("x", "x-code", "x-code-intel", "exec-b")
        for queue in ("intel", "code-intel", "b", "x-code", "batches")
    }
    assert len(seen) == 4 * 5
    assert manifests.job_names("executor", "batches", 42, 2).job == "corral-executor-batches-42-2"


class _Taken:
    """An API where every name already exists (another executor's Job): create says 409."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    async def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        raise KubernetesAPIError(409, f"{kind} {name} already exists", reason="AlreadyExists")

    async def delete(self, kind: str, name: str, propagation: str | None = None) -> None:
        self.deleted.append((kind, name))


async def test_a_name_taken_by_another_executor_is_not_deleted_by_cleanup() -> None:
    api = _Taken()
    runtime = KubernetesRuntime(ExecutorSettings.from_env(ENV).kubernetes, ExecutorSettings.from_env(ENV))
    runtime._client = api  # type: ignore[assignment]
    space = JobSpace(job_id=1, queue="batches", root=ROOT, workspace=ROOT / "w")
    run = runtime._runs.setdefault(str(space.root), _Run())
    body = {"metadata": {"name": "corral-other-batches-1-1"}}
    with pytest.raises(KubernetesAPIError):
        await runtime._create(api, run, "jobs", body)  # type: ignore[arg-type]
    await runtime.cleanup(space)
    assert api.deleted == []  # before: the other executor's running Job was deleted (and its Secrets with it)


class _Failing(_Taken):
    async def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        raise KubernetesAPIError(0, "connection reset")


async def test_a_create_whose_answer_was_lost_is_still_cleaned_up() -> None:
    api = _Failing()
    runtime = KubernetesRuntime(ExecutorSettings.from_env(ENV).kubernetes, ExecutorSettings.from_env(ENV))
    runtime._client = api  # type: ignore[assignment]
    space = JobSpace(job_id=1, queue="batches", root=ROOT, workspace=ROOT / "w")
    run = runtime._runs.setdefault(str(space.root), _Run())
    with pytest.raises(KubernetesAPIError):
        await runtime._create(api, run, "jobs", {"metadata": {"name": "corral-x-batches-1-1"}})  # type: ignore[arg-type]
    try:
        await runtime.cleanup(space)
    except RuntimeFailure:
        pass
    assert api.deleted == [("jobs", "corral-x-batches-1-1")]  # it may exist: cleanup deletes it


@pytest.mark.parametrize("job_id", [7, 1234, 10**15])
def test_a_long_queues_job_is_offered_for_reattach(job_id: int) -> None:
    queue, owner = "q" * 60, "t1-8080"
    space = JobSpace(
        job_id=job_id, queue=queue, root=Path("/nonexistent/j"), workspace=Path("/nonexistent/j/w"),
        executor_name="exec-host-1", owner=owner, attempt=3,
    )
    labels = manifests.job_labels(space)
    name = manifests.job_names(owner, queue, job_id, 3).job
    found = _orphan({"name": name, "labels": labels}, owner, ["batches", queue])
    assert found is not None
    assert (found.queue, found.job_id, found.attempt, found.name) == (queue, job_id, 3, name)
    # the job-id label must agree with the job label and the name
    forged = {**labels, manifests.LABEL_JOB_ID: str(job_id + 1)}
    assert _orphan({"name": name, "labels": forged}, owner, [queue]) is None
