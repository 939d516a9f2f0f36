"""The `kubernetes` runtime: each corral job attempt is one batch/v1 Job in the executor's namespace.

A job (`run_plan`, PlanRunner; the workspace is the pod's, see workspace.py):
1. the (first) Job, then the job's Secret `<job>-secrets` (token, step env values, scripts, inline
   files) and the PVC in pvc mode, each owned by that Job (ownerReferences: they go with it; its pod
   waits for them) (manifests.py builds all of them from the settings, the plan and what the
   handler staged);
2. each Job's pod followed by a `PodFollower` (follow.py): one watch, no polling; the phases timed
   in the entry `setup.kubernetes.pod`; each container in order, its log from pods/log?follow=true
   through the handler's redactor (setup-workspace's as the host's setup.git.* entries, each step's
   as its own entry: `step.docker.N` / `step.src.N` as on every runtime, where Sourcegraph's runtime
   says `step.kubernetes.N`; main's framed Results read back bounded, never shown), exit codes and
   OOMKilled from the pod status; the scheduling and image-pull budgets with their reasons.
   Multi-pod mode (KUBERNETES_SINGLE_JOB_POD=false): one Job per step, one after the other, on the
   shared PVC, each followed the same way;
3. cleanup (also after a cancel or the job's timeout): the Job deleted with propagationPolicy
   Foreground (its pods go first: their containers get the pod's terminationGracePeriodSeconds,
   the job's kill grace), then the Secret and the PVC; nothing when KUBERNETES_KEEP_JOBS.

The janitor lists Jobs carrying `dev.corral.managed=true,dev.corral.owner=<EXECUTOR_VM_PREFIX>` and
deletes (with their Secret and PVC) those of no live job of this executor. After a restart, the
Jobs the server still gives this executor's name are reattached first (Reattacher: reattach.py);
the janitor deletes the rest, and the server's resetter requeues their jobs.

Network: a pod has the cluster's pod network (the setup container fetches the repository from the
server); what it may reach is the cluster's NetworkPolicy, which the deploy manifests set, not
EXECUTOR_NETWORK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from corral.errors import ConfigError, KubernetesAPIError, Reason, RuntimeFailure, StepFailed
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import (
    LABEL_JOB,
    JobSpace,
    Orphan,
    OutputSink,
    PlanSink,
    ResumeSink,
    Step,
    StepResult,
)
from corral.executor.runtimes.docker import credentials
from corral.executor.runtimes.kubernetes import manifests, sweep
from corral.executor.runtimes.kubernetes.client import KubeClient
from corral.executor.runtimes.kubernetes.follow import Phases, PodFollower
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings
from corral.executor.runtimes.kubernetes.workspace import PodWorkspace, Staged

if TYPE_CHECKING:
    from corral.executor.settings import ExecutorSettings
    from corral.executor.workspace.base import Workspace

__all__ = ["KubernetesRuntime"]

log = logging.getLogger("corral.executor.runtimes.kubernetes")



@dataclass
class _Run:
    """One job's objects in the API (what cleanup deletes) and its phase clock."""

    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), in creation order
    # the job's own registry credentials (dockerAuthConfig), per registry: the pods' imagePullSecret
    registry: dict[str, Mapping[str, str]] = field(default_factory=dict)
    phases: Phases = field(default_factory=Phases)
    template: dict[str, Any] | None = None  # the first Job (sweep.py's remover on the shared claim)


class KubernetesRuntime:
    name: ClassVar[str] = "kubernetes"
    cli_runtime: ClassVar[str] = "kubernetes"  # CLI steps and the diff run in the pod

    def __init__(
        self,
        settings: KubernetesSettings,
        executor: ExecutorSettings,
        *,
        client: KubeClient | None = None,
    ) -> None:
        self.settings, self.executor = settings, executor
        self.owner = executor.vm_prefix
        self.workspace = PodWorkspace()
        self._client = client
        self._connecting = asyncio.Lock()
        self._runs: dict[str, _Run] = {}
        self._claimed: set[str] = set()  # Jobs of a previous process the server gave back (reattach)
        self._telemetry: dict[str, str] = {}
        self._removing: set[str] = set()  # remover Jobs (sweep.py) running in this process

    @classmethod
    def from_settings(cls, s: ExecutorSettings) -> KubernetesRuntime:
        return cls(s.kubernetes, s)

    def make_workspace(self, settings: ExecutorSettings) -> Workspace:
        return self.workspace

    async def api(self) -> KubeClient:
        async with self._connecting:
            if self._client is None:
                s = self.settings
                self._client = await KubeClient.connect(s.config_path, s.namespace, in_cluster=s.in_cluster)
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    # --- Runtime ----------------------------------------------------------------------------------

    async def check(self) -> list[str]:
        """No kubeconfig, an API that cannot be reached or refuses us, a namespace we may not use."""
        try:
            api = await self.api()
        except ConfigError as exc:
            return [exc.message]
        ns = self.settings.namespace
        try:
            version = await api.version()
        except KubernetesAPIError as exc:
            if exc.status == 0:
                return [exc.message]
            if exc.status == 401:
                return [f"the Kubernetes API at {api.host} refuses the executor's credentials: {exc.message}"]
            version = {}  # /version may be closed to us; the namespace check below says what matters
        self._telemetry = {"kubernetesVersion": str(version.get("gitVersion") or "")}
        try:
            await api.list_all("jobs", label_selector=self._selector())
        except KubernetesAPIError as exc:
            if exc.status == 403:
                return [
                    f"the executor may not list batch/v1 Jobs in namespace {ns} (403: {exc.message}): "
                    "bind it to the Role in corral's role.yaml in that namespace"
                ]
            if exc.status == 404:
                return [f"namespace {ns} does not exist, or the API has no batch/v1 Jobs ({exc.message})"]
            return [f"listing Jobs in namespace {ns} failed ({exc.status}): {exc.message}"]
        return []

    def telemetry(self) -> dict[str, str]:
        return dict(self._telemetry)

    def secrets(self, plan: JobPlan) -> list[str]:
        """The job's registry credentials, for its redactor (CredentialStager)."""
        return credentials.auth_values(plan.registry_auth)

    async def stage(self, space: JobSpace, plan: JobPlan) -> None:
        """Keep the job's own registry credentials (dockerAuthConfig) for its pods' pulls: they
        become the Secret `<job>-registry` the pods name in imagePullSecrets (the operator's
        registries: KUBERNETES_IMAGE_PULL_SECRETS)."""
        creds = credentials.job_credentials(plan.registry_auth, None, user_config=False)
        run = self._runs.setdefault(str(space.root), _Run())
        run.registry = {r: c.entry for r, c in creds.items()}

    async def prepare(self, space: JobSpace) -> None:
        self._runs.setdefault(str(space.root), _Run())

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        raise RuntimeFailure("the kubernetes runtime runs whole jobs (run_plan), not single steps")

    async def run_plan(self, space: JobSpace, plan: JobPlan, sink: PlanSink) -> None:
        if pre := plan.skip_points:
            raise StepFailed(
                f"{pre[0]} may leave a skip.json naming the next step, which the kubernetes runtime "
                "cannot honour (a pod's containers are fixed when it is created): run this job on "
                "the docker or shell runtime",
                Reason.SANDBOX,
            )
        staged = self.workspace.staged(space)
        run = self._runs.setdefault(str(space.root), _Run())
        objects = self._objects(space, plan, staged, run)
        staged.log_nonce, staged.outputs = objects.log_nonce, tuple(plan.outputs)
        api = await self.api()
        steps = dict(objects.containers)
        command = ["batch/v1", "Job", objects.names.job, "-n", self.settings.namespace]
        async with sink.open_log("setup.kubernetes.pod", command) as pod_log:
            pod_log.exit_code = 1
            try:
                for n, job in enumerate(objects.jobs):
                    created = await self._create(api, run, "jobs", job)
                    run.template = run.template or created
                    for kind, body in objects.first if n == 0 else ():
                        await self._create(api, run, kind, _owned_by(body, created))
                    follower = PodFollower(
                        api,
                        self.settings,
                        str(job["metadata"]["name"]),
                        frontend_url=self.settings.frontend_url or self.executor.frontend_url,
                        staged=staged,
                        sink=sink,
                        pod_log=pod_log,
                        phases=run.phases,
                    )
                    await follower.follow(job, steps)
                pod_log.exit_code = 0
            except KubernetesAPIError as exc:
                raise RuntimeFailure(f"the Kubernetes API: {exc.message}") from None
            finally:
                pod_log.write(f"{run.phases.summary()}\n".encode())

    def _objects(self, space: JobSpace, plan: JobPlan, staged: Staged, run: _Run) -> manifests.JobObjects:
        try:
            objects = manifests.job_objects(self.settings, self.executor, space, plan, staged)
            if run.registry:
                ns, labels = self.settings.namespace, manifests.job_labels(space)
                secret = manifests.registry_secret_manifest(objects.names, ns, labels, run.registry)
                objects.first.append(("secrets", secret))
                for job in objects.jobs:
                    pod = job["spec"]["template"]["spec"]
                    pod.setdefault("imagePullSecrets", []).append({"name": secret["metadata"]["name"]})
        except manifests.ManifestError as exc:
            raise StepFailed(exc.message, Reason.FILES) from None
        return objects

    async def _create(
        self, api: KubeClient, run: _Run, kind: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        name = str(body["metadata"]["name"])
        run.created.append((kind, name))  # first: cleanup (a 404 is fine) and the janitor know it at once
        try:
            return await api.create(kind, body)
        except KubernetesAPIError as exc:
            if exc.status == 409:  # someone else's object of that name: cleanup must never delete it
                run.created.remove((kind, name))
            raise

    async def cleanup(self, space: JobSpace) -> None:
        run = self._runs.get(str(space.root))
        if run is None or not run.created:
            self._runs.pop(str(space.root), None)
            return
        try:
            await self._cleanup(space, run)
        finally:
            self._runs.pop(str(space.root), None)  # the janitor leaves its Jobs alone until now

    async def _cleanup(self, space: JobSpace, run: _Run) -> None:
        if self.settings.keep_jobs:
            kept = ", ".join(n for _k, n in run.created)
            log.info("job %s: keeping %s (KUBERNETES_KEEP_JOBS)", space.job_id, kept)
            return
        api = await self.api()
        problems = []
        jobs_first = sorted(run.created, key=lambda k: k[0] != "jobs")  # the pods go before their Secret
        for kind, name in jobs_first:
            try:
                await api.delete(kind, name, propagation="Foreground" if kind == "jobs" else None)
            except KubernetesAPIError as exc:
                problems.append(f"deleting {kind} {name}: {exc.message}")
        if run.template is not None and sweep.shared_claim(self.settings):
            if problem := await self._remove_dir(api, run.template, space.kill_grace):
                problems.append(problem)
        if problems:
            raise RuntimeFailure("; ".join(problems))

    async def _remove_dir(self, api: KubeClient, template: Mapping[str, Any], grace: float) -> str:
        """The job's directory on the shared claim (sweep.py), its base in `_removing` meanwhile (the
        janitor leaves it and its remover alone)."""
        base = sweep.base_name(str(template["metadata"]["name"]))
        self._removing.add(base)
        try:
            return await sweep.remove_job_dir(api, self.settings, template, base, grace)
        finally:
            self._removing.discard(base)

    # --- Reattacher (reattach.py) -----------------------------------------------------------------

    async def orphans(self) -> list[Orphan]:
        from corral.executor.runtimes.kubernetes import reattach

        ours = {name for run in self._runs.values() for _kind, name in run.created} | self._claimed
        return await reattach.orphans(self, ours)

    def claim(self, orphan: Orphan) -> None:
        self._claimed.add(orphan.name)

    def unclaim(self, name: str) -> None:
        self._claimed.discard(name)

    async def reattach(self, space: JobSpace, plan: JobPlan, sink: ResumeSink) -> None:
        from corral.executor.runtimes.kubernetes import reattach

        await reattach.follow_again(self, space, plan, sink)

    async def janitor(self, live: set[str]) -> list[str]:
        """Delete this owner's Jobs (and their Secrets and PVC) that no job of this process holds:
        those of jobs that do not run here (`live`), and any other attempt's (a killed executor's
        Job of a job this process has taken again). What this process created and has not cleaned
        up yet is never touched, even when its job started after `live` was taken. With
        KUBERNETES_KEEP_JOBS finished Jobs stay (keeping them is the point); running ones go."""
        api = await self.api()
        jobs, _ = await api.list_all("jobs", label_selector=self._selector())
        ours = {name for run in self._runs.values() for _kind, name in run.created} | self._claimed
        running = manifests.live_labels(live)
        stale = []
        shared = sweep.shared_claim(self.settings) and not self.settings.keep_jobs
        leftovers: dict[str, dict[str, Any]] = {}  # base -> a Job of it: its directory on the claim
        for j in jobs:
            meta = j.get("metadata") or {}
            name = str(meta.get("name") or "")
            base = sweep.base_name(name)
            if not name or name in ours or base in self._removing:
                continue  # ours
            if shared and not name.endswith(sweep.REMOVER_SUFFIX):
                leftovers.setdefault(base, j)  # also when already going: its directory stays
            if meta.get("deletionTimestamp"):
                continue  # already going
            if self.settings.keep_jobs and _finished(j):
                continue
            # not this process's: a job that does not run here, or another attempt of one that does
            label = (meta.get("labels") or {}).get(LABEL_JOB)
            log.debug("janitor: %s (job %s, %s)", name, label, "live" if label in running else "not live")
            stale.append(name)
        removed = []
        for name in sorted(stale):
            await api.delete("jobs", name, propagation="Foreground")
            for kind, obj in manifests.companions(name):
                with contextlib.suppress(KubernetesAPIError):
                    await api.delete(kind, obj)
            removed.append(name)
        for _base, template in sorted(leftovers.items()):  # a killed executor's jobs' directories
            if problem := await self._remove_dir(api, template, 0.0):
                log.warning("janitor: %s", problem)
        return removed

    def _selector(self) -> str:
        return manifests.owner_selector(self.owner)


def _owned_by(body: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """`body` (the job's Secrets, its PVC) owned by the first Job as the API made it: created after
    that Job, each goes with it (the garbage collector deletes it when the Job goes, whoever deletes
    the Job: cleanup, the janitor, an operator), so an executor killed between two creations leaves
    nothing the janitor cannot find (it lists Jobs; it may not list Secrets, whose data a list
    returns). The pod waits for its Secret and claim. Not blockOwnerDeletion: that needs an update
    of jobs/finalizers the Role does not grant."""
    meta = job["metadata"]
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    return {**body, "metadata": {**body["metadata"], "ownerReferences": [ref]}}


def _finished(job: Mapping[str, Any]) -> bool:
    """A Job whose Complete or Failed condition is True."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)
