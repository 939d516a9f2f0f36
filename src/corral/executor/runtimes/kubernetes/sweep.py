"""Removing one job's directory from the shared PVC of multi-pod mode (KUBERNETES_SINGLE_JOB_POD=false
with EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME): each job attempt's pods use `<job>/workspace` and
`<job>/meta.git` on a claim every job shares, so deleting the job's Jobs leaves its repository
(private contents) and fills the disk. The executor never mounts the claim itself: a remover Job
`<job>-rm` does, in the step image with the job's own pod security (its user, group, fsGroup,
seccomp, node placement: copied from the job's Job), one container that runs a fixed Python snippet
(no job code runs in it: the job's pods are gone before it starts) and deletes `<job>`, write
permission restored on each directory first (a step may leave a read-only tree; links are never
followed). It carries the job's labels, so a killed executor's remover is found by the next janitor
like any of its Jobs; within the Role (jobs create/delete, pods list/watch).

Cleanup runs it at the end of every job (success, failure, cancel); the janitor runs it for each
killed executor's job whose Jobs it deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from corral.errors import KubernetesAPIError
from corral.executor.runtimes.base import LABEL_JOB, LABEL_OWNER
from corral.executor.runtimes.kubernetes.client import KubeClient
from corral.executor.runtimes.kubernetes.manifests import (
    LABEL_ATTEMPT,
    LABEL_STEP,
    MAIN_CONTAINER,
    REGISTRY_SUFFIX,
)
from corral.executor.runtimes.kubernetes.settings import DEFAULT_STEP_IMAGE, KubernetesSettings
from corral.executor.runtimes.kubernetes.watch import PodWatch, container_state, phase, pod_reason

__all__ = ["REMOVER_SUFFIX", "base_name", "remove_job_dir", "remover_job", "shared_claim"]

log = logging.getLogger("corral.executor.runtimes.kubernetes")

REMOVER_SUFFIX = "-rm"
ROOT_MOUNT = "/corral-claim"  # the shared claim's root, in the remover only
GONE_WAIT_S = 60.0  # seconds (beyond the pods' grace) for the job's pods to go before removing
REMOVE_WAIT_S = 120.0  # seconds (beyond the scheduling and pull budgets) for the remover to finish
POLL_S = 0.5  # seconds between lists of the job's pods while they terminate
CREATE_TRIES = 20  # creations of the remover while a previous one of the same name goes
# python -I: no module from the current directory, HOME or PYTHON* variables
SNIPPET = """
import os, shutil, sys
top = sys.argv[1]
def writable(p):
    try:
        os.chmod(p, 0o700)
    except OSError:
        pass  # not ours (the kubelet made the subPath directory): its contents still go
def remove(p):
    if os.path.islink(p) or not os.path.isdir(p):
        os.unlink(p)
        return
    writable(p)
    for root, dirs, _files in os.walk(p):
        for d in dirs:
            if not os.path.islink(os.path.join(root, d)):
                writable(os.path.join(root, d))
    shutil.rmtree(p)
if os.path.isdir(top) and not os.path.islink(top):
    writable(top)
    for entry in os.listdir(top):
        remove(os.path.join(top, entry))
    try:
        os.rmdir(top)
    except OSError as exc:
        print("emptied", top, "but kept it:", exc)
elif os.path.lexists(top):
    os.unlink(top)
print("removed", top)
"""


def shared_claim(settings: KubernetesSettings) -> bool:
    """Whether the jobs' directories live on the one claim every job shares."""
    return not settings.single_job_pod and settings.job_volume_type != "pvc"


def base_name(job: str) -> str:
    """The job attempt's directory (= its first name) of any of its Jobs: `<base>-s<n>`, `<base>-rm`."""
    return re.sub(rf"(-s\d+|{REMOVER_SUFFIX})$", "", job)


def remover_job(template: Mapping[str, Any], base: str, image: str) -> dict[str, Any]:
    """The Job that deletes `<base>` from the shared claim, in the step image `image` (it has
    python3: podside runs in it), from one of the job's Jobs (`template`: its labels, pod security,
    placement, the claim)."""
    job = copy.deepcopy(dict(template))
    job.pop("status", None)
    meta = job["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != LABEL_STEP}
    name = f"{base}{REMOVER_SUFFIX}"
    job["metadata"] = {"name": name, "namespace": meta.get("namespace"), "labels": labels}
    if meta.get("annotations"):
        job["metadata"]["annotations"] = meta["annotations"]
    spec = job["spec"]
    spec.pop("selector", None)  # the API's own, of the template's Job
    pod = spec["template"]["spec"]
    spec["template"]["metadata"] = {"labels": dict(labels)}
    containers = pod.get("containers") or []
    like = next((c for c in containers if c.get("name") == MAIN_CONTAINER), containers[-1])
    claim = next(v for v in pod["volumes"] if v.get("name") == "job-data")
    pod["volumes"] = [claim, {"name": "job-tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
    pod.pop("initContainers", None)
    pulls = [r for r in pod.get("imagePullSecrets") or [] if not r.get("name", "").endswith(REGISTRY_SUFFIX)]
    pod["imagePullSecrets"] = pulls  # the operator's; the job's own went with its Job
    security = {**(like.get("securityContext") or {}), "readOnlyRootFilesystem": True}
    remover: dict[str, Any] = {
        "name": "remove",
        "image": image,
        "command": ["python3", "-I", "-c", SNIPPET, f"{ROOT_MOUNT}/{base}"],
        "workingDir": "/",
        "securityContext": security,
        "volumeMounts": [
            {"name": "job-data", "mountPath": ROOT_MOUNT},
            {"name": "job-tmp", "mountPath": "/tmp"},
        ],
    }
    if image == DEFAULT_STEP_IMAGE:
        remover["imagePullPolicy"] = "Never"  # published nowhere (manifests._PodParts._image)
    if "resources" in like:
        remover["resources"] = like["resources"]
    pod["containers"] = [remover]
    return job


async def _pods_gone(api: KubeClient, labels: Mapping[str, str], timeout: float) -> bool:
    keys = (LABEL_OWNER, LABEL_JOB, LABEL_ATTEMPT)
    selector = ",".join(f"{k}={labels[k]}" for k in keys if labels.get(k))
    deadline = time.monotonic() + timeout
    while True:
        pods, _ = await api.list_all("pods", label_selector=selector)
        if not pods:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)


async def remove_job_dir(
    api: KubeClient, settings: KubernetesSettings, template: Mapping[str, Any], base: str, grace: float
) -> str:
    """Delete `<base>` from the shared claim (the job's Jobs already deleted): waits for the job's pods
    to go, runs the remover Job, deletes it. Returns a problem ("" when the directory is gone)."""
    body = remover_job(template, base, settings.step_image)
    name = body["metadata"]["name"]
    if not await _pods_gone(api, body["metadata"]["labels"], grace + GONE_WAIT_S):
        return f"the pods of job {base} did not go: its directory on the shared claim stays"
    watch = PodWatch(api, name)
    try:
        for attempt in range(CREATE_TRIES):
            try:
                await api.create("jobs", body)
                break
            except KubernetesAPIError as exc:  # 409: a killed executor's remover is still going
                if exc.status != 409 or attempt == CREATE_TRIES - 1:
                    raise
                await asyncio.sleep(POLL_S)
        watch.start()
        budget = settings.scheduling_timeout + settings.image_pull_timeout + REMOVE_WAIT_S
        ended = await watch.wait(lambda: phase(watch.pod) in ("Succeeded", "Failed"), budget)
        if not ended or phase(watch.pod) != "Succeeded":
            said = b""
            if watch.name:
                with contextlib.suppress(KubernetesAPIError):
                    async for chunk in api.log(watch.name, "remove", follow=False, limit_bytes=2000):
                        said += chunk
            state = container_state(watch.pod, "remove")
            why = " ".join(x for x in (pod_reason(watch.pod), state.reason, state.message) if x)
            tail = f"{why} {said.decode('utf-8', 'replace').strip()[-1000:]}".strip()
            return f"removing {base} from the shared claim failed ({phase(watch.pod) or 'no pod'}): {tail}"
        return ""
    except KubernetesAPIError as exc:
        return f"removing {base} from the shared claim: {exc.message}"
    finally:
        await watch.stop()
        try:
            await api.delete("jobs", name, propagation="Background")
        except KubernetesAPIError as exc:
            log.warning("deleting %s: %s", name, exc.message)
