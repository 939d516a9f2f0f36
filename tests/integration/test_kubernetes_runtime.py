"""KubernetesRuntime in this process against the stand-in's API server (tests/kubekit without its
kubelet: no pods run, no Docker needed): check(), the janitor's choices, and the client's call
counts. The shipped Role is enforced: any call outside it fails the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.executor.runtimes.base import LABEL_JOB, LABEL_MANAGED, LABEL_OWNER, JobSpace
from corral.executor.runtimes.kubernetes.runtime import KubernetesRuntime, _Run
from corral.executor.settings import ExecutorSettings

OWNER = "itest"
IMAGE = "corral/busybox:1"  # never run: this stand-in has no kubelet


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    from tests.kubekit import run_cluster

    with run_cluster(tmp_path / "cluster", kubelet=False) as c:
        yield c
        assert not c.violations(), c.violations()


def _runtime(cluster: Any, tmp_path: Path) -> KubernetesRuntime:
    settings = ExecutorSettings.from_env(
        {
            "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:1",
            "EXECUTOR_FRONTEND_PASSWORD": "an-executor-password-of-some-length",
            "EXECUTOR_QUEUE_NAME": "batches",
            "EXECUTOR_RUNTIME": "kubernetes",
            "EXECUTOR_VM_PREFIX": OWNER,
            "EXECUTOR_WORKSPACE_ROOT": str(tmp_path / "ws"),
            "EXECUTOR_KUBERNETES_CONFIG_PATH": str(cluster.executor_kubeconfig),
            "EXECUTOR_KUBERNETES_NAMESPACE": cluster.namespace,
        }
    )
    return KubernetesRuntime.from_settings(settings)


def _job(cluster: Any, name: str, owner: str, label: str) -> None:
    from tests.kubekit.apiserver import KINDS

    labels = {LABEL_MANAGED: "true", LABEL_OWNER: owner, LABEL_JOB: label}
    body = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE}]},
            },
        },
    }
    cluster.call(cluster.api.create, KINDS[("batch", "jobs")], cluster.namespace, body)


def _names(cluster: Any) -> set[str]:
    jobs = cluster.objects("jobs", "batch")
    return {j["metadata"]["name"] for j in jobs if not j["metadata"].get("deletionTimestamp")}


async def test_check_passes_and_reports_the_version(cluster: Any, tmp_path: Path) -> None:
    rt = _runtime(cluster, tmp_path)
    try:
        assert await rt.check() == []
        assert "kubernetesVersion" in rt.telemetry()
        api = await rt.api()
        assert api.calls["list jobs"] == 1 and api.calls["get version"] == 1
    finally:
        await rt.aclose()


async def test_janitor_removes_only_its_owners_jobs_of_no_live_job(cluster: Any, tmp_path: Path) -> None:
    _job(cluster, "corral-itest-batches-1-1", OWNER, "batches-1")  # live here, but not this attempt
    _job(cluster, "corral-itest-batches-2-1", OWNER, "batches-2")  # orphan
    _job(cluster, "corral-itest-batches-3-1", OWNER, "batches-3")  # just created by this runtime
    _job(cluster, "corral-other-batches-2-1", "other", "batches-2")  # another owner's
    rt = _runtime(cluster, tmp_path)
    root = tmp_path / "j3"
    space = JobSpace(job_id=3, queue="batches", root=root, workspace=root / "w", owner=OWNER)
    rt._runs[str(space.root)] = _Run(created=[("jobs", "corral-itest-batches-3-1")])
    try:
        removed = await rt.janitor({"batches-1", "batches-3"})
        # a Job this process did not create is a killed executor's: of a job that does not run here,
        # or of another attempt of one that does (this process runs attempt 2 of batches-1)
        assert removed == ["corral-itest-batches-1-1", "corral-itest-batches-2-1"]
        assert _names(cluster) == {"corral-itest-batches-3-1", "corral-other-batches-2-1"}
        api = await rt.api()
        assert api.calls["list jobs"] == 1 and api.calls["delete jobs"] == 2
        # its Secrets (the job's, its registry credentials') and PVC are deleted by name (a 404 when
        # there is none): no get or list of Secrets
        assert api.calls["delete secrets"] == 4 and api.calls["delete persistentvolumeclaims"] == 2
        await rt.cleanup(space)  # the runtime's own job: deleted by its cleanup, not by the janitor
        assert "corral-itest-batches-3-1" not in _names(cluster)
    finally:
        await rt.aclose()
