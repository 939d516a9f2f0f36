"""Review R3, end to end on the stand-in (real pods with Docker): multi-pod mode on the claim every
job shares (EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME) leaves no job's directory on it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.kit import wait_job
from tests.e2e.test_kubernetes_e2e import Kube, _check_two_images_job, _gone, _two_images_and_a_cli_step
from tests.e2e.test_kubernetes_e2e import images as images  # fixtures
from tests.e2e.test_kubernetes_e2e import kube as kube

SHARED = "shared-claim"


def _claim_dir(kube: Kube) -> Path:
    from tests.kubekit.apiserver import KINDS

    body = {
        "metadata": {"name": SHARED},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster = kube.cluster
    cluster.call(cluster.api.create, KINDS[("", "persistentvolumeclaims")], cluster.namespace, body)
    return Path(cluster.root) / "pvcs" / cluster.namespace / SHARED


def _empty_soon(path: Path, timeout: float = 30) -> list[str]:
    """What stays on the claim below the jobs' directories (a job's directory itself may stay, empty,
    when the claim's root is not writable by the pods' user)."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(str(p.relative_to(path)) for p in path.glob("*/*")) if path.exists() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_multi_pod_jobs_leave_nothing_on_the_shared_claim(kube: Kube) -> None:
    """R3-3: after a job that succeeded and one that failed, the shared claim holds no
    `<job>/workspace` or `<job>/meta.git` (before: each job's checkout, private repository contents
    included, stayed on the claim for good and filled it)."""
    claim = _claim_dir(kube)
    kube.start(KUBERNETES_SINGLE_JOB_POD="false", EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME=SHARED)
    job = kube.server.client.submit("batches", _two_images_and_a_cli_step(kube.repo))
    _check_two_images_job(kube, job["id"])
    _gone(kube, f"batches-{job['id']}")
    assert _empty_soon(claim) == []
    spec = _two_images_and_a_cli_step(kube.repo)
    ro = "mkdir -p ro/deep && echo x > ro/deep/f && chmod 500 ro/deep ro"
    spec["dockerSteps"][0]["commands"] = [ro, "exit 3"]
    failed = kube.server.client.submit("batches", spec)
    assert wait_job(kube.server, failed["id"], timeout=120)["state"] == "failed"
    _gone(kube, f"batches-{failed['id']}")
    assert _empty_soon(claim) == []
