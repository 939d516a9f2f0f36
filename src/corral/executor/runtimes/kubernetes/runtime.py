"""The `kubernetes` runtime: each corral job attempt is one batch/v1 Job in the executor's namespace.

A job (`run_plan`, PlanRunner; the workspace is the pod's, see workspace.py):
1. the job's Secret `<job>-secrets` (token, step env values, scripts, inline files), then the PVC in
   pvc mode, then the Job (manifests.py builds all of them from the settings, the plan and what the
   handler staged);
2. one watch on its pods (`job-name=<job>`, watch.py): no polling; the pod's phases are timed and
   written to the entry `setup.kubernetes.pod` (queued: Job created -> pod exists; scheduling: ->
   PodScheduled; pulling: each container waiting for its image; running: the rest);
3. each container in order: `setup-workspace` (podside clone: its log, split at podside's section
   markers, becomes the host's clone entries setup.git.init ... setup.git.checkout with each git
   command's exit code; other output goes to `setup.kubernetes.workspace`), one per step (the
   step's own entry, `step.docker.N` / `step.src.N` as on every runtime; Sourcegraph's runtime names them
   `step.kubernetes.N`), then `main` (podside collect: its log is the job's Results, read back
   bounded and never shown). Each log comes from pods/log?follow=true as the container runs,
   through the handler's redactor; each exit code (and OOMKilled) from the pod's status.
   Multi-pod mode (KUBERNETES_SINGLE_JOB_POD=false): one Job per step, run one after the other on
   the shared PVC, each followed the same way.
4. Budgets (corral's own): a pod not scheduled within EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT, or a
   container still waiting for its image after EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT, fails the
   job with the reason from the pod's conditions and the pod's latest Warning event (listed once,
   when the budget runs out: fewer calls than a watch on events). An image reference the kubelet
   can never pull (InvalidImageName, ErrImageNeverPull) fails at once. A pending pod that is
   deleted fails as Sourcegraph says it: "pod could not be scheduled".
5. cleanup (also after a cancel or the job's timeout): the Job deleted with propagationPolicy
   Foreground (its pods go first: their containers get the pod's terminationGracePeriodSeconds,
   the job's kill grace), then the Secret and the PVC; nothing when KUBERNETES_KEEP_JOBS.

The janitor lists Jobs carrying `dev.corral.managed=true,dev.corral.owner=<EXECUTOR_VM_PREFIX>` and
deletes (with their Secret and PVC) those of no live job of this executor. Reattach after a restart
is not built (see the README): the janitor deletes a restarted executor's Jobs, the server's
resetter requeues their jobs.

Network: a pod has the cluster's pod network (the setup container fetches the repository from the
server); what it may reach is the cluster's NetworkPolicy, which the deploy manifests set, not
EXECUTOR_NETWORK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from corral.errors import ConfigError, KubernetesAPIError, Reason, RuntimeFailure, StepFailed
from corral.executor.janitor import orphans
from corral.executor.plan import JobPlan, is_pre_step
from corral.executor.runtimes.base import (
    LABEL_JOB,
    JobSpace,
    OutputSink,
    PlanSink,
    Step,
    StepResult,
)
from corral.executor.runtimes.docker import credentials
from corral.executor.runtimes.kubernetes import manifests
from corral.executor.runtimes.kubernetes.client import KubeClient
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings
from corral.executor.runtimes.kubernetes.watch import (
    PERMANENT_WAITING,
    ContainerState,
    PodWatch,
    container_state,
    phase,
    pod_reason,
    scheduling,
)
from corral.executor.runtimes.kubernetes.workspace import PodWorkspace, Staged
from corral.executor.workspace.host import Bounded, clone_commands, clone_url
from corral.units import format_duration

if TYPE_CHECKING:
    from corral.executor.settings import ExecutorSettings
    from corral.executor.workspace.base import CommandLog, Workspace

__all__ = ["KubernetesRuntime"]

log = logging.getLogger("corral.executor.runtimes.kubernetes")

SETUP = "setup-workspace"  # the init container that clones and writes the files
MAIN = "main"  # the container that prints the Results
TERMINATED_WAIT_S = 60.0  # seconds from a container's log ending to its terminated status
WAIT_SLICE_S = 1.0  # seconds between checks of a budget while nothing changes
MAX_EVENT_MESSAGE = 1000  # characters of the pod's events quoted in the job's error
MAX_EVENTS = 3  # distinct Warning events quoted, newest first
SETUP_OUTPUT_MAX = 64 * 1024  # bytes kept of setup-workspace's output outside its git sections
LOG_FOLLOWS = 5  # streams of one container's log before a broken one is given up
LOG_RETRY_S = 1.0  # seconds before a broken log stream is followed again


@dataclass
class _Run:
    """One job's objects in the API (what cleanup deletes) and its phase clock."""

    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), in creation order
    # the job's own registry credentials (dockerAuthConfig), per registry: the pods' imagePullSecret
    registry: dict[str, Mapping[str, str]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # queued, scheduling, pulling, running

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(seconds, 0.0)

    def summary(self) -> str:
        order = ("queued", "scheduling", "pulling", "running")
        return "phases: " + ", ".join(f"{p} {self.phases.get(p, 0.0):.2f}s" for p in order)


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
        self._telemetry: dict[str, str] = {}

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
        if plan.skips and (pre := [s.key for s in plan.steps if is_pre_step(s.key)]):
            raise StepFailed(
                f"{pre[0]} may leave a skip.json naming the next step, which the kubernetes runtime "
                "cannot honour (a pod's containers are fixed when it is created): run this job on "
                "the docker or shell runtime",
                Reason.SANDBOX,
            )
        staged = self.workspace.staged(space)
        run = self._runs.setdefault(str(space.root), _Run())
        objects = self._objects(space, plan, staged, run)
        staged.log_nonce = objects.log_nonce
        api = await self.api()
        steps = dict(objects.containers)
        command = ["batch/v1", "Job", objects.names.job, "-n", self.settings.namespace]
        async with sink.open_log("setup.kubernetes.pod", command) as pod_log:
            pod_log.exit_code = 1
            try:
                for kind, body in objects.first:
                    await self._create(api, run, kind, body)
                for job in objects.jobs:
                    await self._create(api, run, "jobs", job)
                    await self._follow(api, job, steps, staged, sink, pod_log, run)
                pod_log.exit_code = 0
            except KubernetesAPIError as exc:
                raise RuntimeFailure(f"the Kubernetes API: {exc.message}") from None
            finally:
                pod_log.write(f"{run.summary()}\n".encode())

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

    async def _create(self, api: KubeClient, run: _Run, kind: str, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        run.created.append((kind, name))  # first: cleanup (a 404 is fine) and the janitor know it at once
        await api.create(kind, body)

    async def _follow(
        self,
        api: KubeClient,
        job: Mapping[str, Any],
        steps: Mapping[str, Step | None],
        staged: Staged,
        sink: PlanSink,
        pod_log: CommandLog,
        run: _Run,
    ) -> None:
        """Follow one Job's pod from its creation to its last container (in the order they run)."""
        name = str(job["metadata"]["name"])
        spec = job["spec"]["template"]["spec"]
        containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        watch = PodWatch(api, name)
        watch.start()
        try:
            await self._scheduled(api, watch, name, pod_log, run)
            for c in containers:
                step = steps.get(c["name"])
                image = str(c.get("image") or "")
                await self._container(api, watch, c["name"], image, step, staged, sink, pod_log, run)
        finally:
            await watch.stop()

    async def _scheduled(
        self, api: KubeClient, watch: PodWatch, job: str, pod_log: CommandLog, run: _Run
    ) -> None:
        started = time.monotonic()
        budget = self.settings.scheduling_timeout
        pod_log.write(f"job {job} created in namespace {self.settings.namespace}\n".encode())
        if not await watch.wait(lambda: watch.pod is not None, budget):
            raise StepFailed(f"no pod of job {job} appeared within {format_duration(budget)}", Reason.RUNTIME)
        queued = time.monotonic()
        run.add("queued", queued - started)
        pod_log.write(f"pod {watch.name} created after {queued - started:.2f}s\n".encode())

        def done() -> bool:
            return scheduling(watch.pod)[0] or watch.deleted or phase(watch.pod) in ("Failed", "Succeeded")

        if not await watch.wait(done, max(budget - (queued - started), 0.0)):
            why = scheduling(watch.pod)[2] or await self._event(api, watch.name) or "no reason given"
            pod_log.write(f"not scheduled within {format_duration(budget)}: {why}\n".encode())
            raise StepFailed(
                f"the job's pod could not be scheduled within {format_duration(budget)} "
                f"(EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT): {why}",
                Reason.RUNTIME,
            )
        if watch.deleted:
            raise RuntimeFailure("pod could not be scheduled: it was deleted while pending")
        now = time.monotonic()
        run.add("scheduling", now - queued)
        node = scheduling(watch.pod)[1]
        pod_log.write(f"scheduled{f' on node {node}' if node else ''} after {now - queued:.2f}s\n".encode())

    async def _container(
        self,
        api: KubeClient,
        watch: PodWatch,
        name: str,
        image: str,
        step: Step | None,
        staged: Staged,
        sink: PlanSink,
        pod_log: CommandLog,
        run: _Run,
    ) -> None:
        """Wait for the container to start (within the pull budget), follow its log to its end,
        report its exit code."""
        waited = await self._started(api, watch, name, image, step, sink, pod_log)
        run.add("pulling", waited)
        began = time.monotonic()
        if step is not None:
            out = await sink.started(step)
            await self._logs(api, watch, name, out, 0)
            state = await self._terminated(watch, name)
            run.add("running", time.monotonic() - began)
            await sink.finished(step, self._result(watch, name, state))
            return
        if name == SETUP:
            await self._setup(api, watch, staged, sink)
            run.add("running", time.monotonic() - began)
            return
        from corral.executor.runtimes.kubernetes import podside

        buf = bytearray()
        limit = podside.MAX_RESULTS_BYTES
        await self._logs(api, watch, name, buf.extend, limit + 1)
        state = await self._terminated(watch, name)
        run.add("running", time.monotonic() - began)
        if len(buf) > limit:
            staged.results_problem = f"the job's results are larger than {limit} bytes"
        elif state.exit_code != 0:
            self._check_deadline(watch, name)
            tail = bytes(buf[-2000:]).decode("utf-8", "replace").strip()
            code = state.exit_code
            staged.results_problem = f"collecting the results in the pod failed (exit {code}): {tail}"
        else:
            staged.results = bytes(buf)

    async def _setup(
        self, api: KubeClient, watch: PodWatch, staged: Staged, sink: PlanSink
    ) -> None:
        """The setup-workspace container: its log split by podside's markers into the host's clone
        entries (setup.git.init, setup.git.fetch, ...: each git command's output and exit code);
        output outside them (writing the job's files) goes to setup.kubernetes.workspace."""
        from corral.executor.runtimes.kubernetes.podside import CloneEvent, CloneLog

        commands: dict[str, list[str]] = {}
        if staged.clone is not None:
            frontend = self.settings.frontend_url or self.executor.frontend_url
            url = clone_url(frontend, staged.clone.repository_name)
            commands = dict(clone_commands(staged.clone, url))
        splitter = CloneLog(staged.log_nonce)
        stack = contextlib.AsyncExitStack()
        section: CommandLog | None = None
        other = Bounded(SETUP_OUTPUT_MAX)
        failure: BaseException | None = None
        done = False

        async def take(events: list[CloneEvent]) -> None:
            nonlocal section, failure, done
            for e in events:
                if e.kind == "start":
                    await stack.aclose()
                    section = await stack.enter_async_context(sink.open_log(e.key, commands.get(e.key, [])))
                elif e.kind == "output":
                    (section.write if section is not None and e.key else other)(e.data)
                elif e.kind == "end":
                    if section is not None:
                        section.exit_code = e.exit_code
                    await stack.aclose()
                    section = None
                elif e.kind == "error":
                    failure = e.error
                elif e.kind == "done":
                    done = True

        try:
            async for chunk in self._log_chunks(api, watch, SETUP):
                await take(splitter.feed(chunk))
            await take(splitter.close())
        finally:
            await stack.aclose()
        state = await self._terminated(watch, SETUP)
        if other.buf.strip() or (state.exit_code != 0 and failure is None):
            async with sink.open_log("setup.kubernetes.workspace", ["podside", "clone"]) as entry:
                entry.write(bytes(other.buf))
                entry.exit_code = state.exit_code
        if failure is not None:
            raise failure
        if state.exit_code != 0 or not done:
            self._check_deadline(watch, SETUP)
            raise RuntimeFailure(
                f"setting up the workspace in the pod failed: {SETUP} exited with {state.exit_code}",
                reason=Reason.CLONE if staged.clone is not None else Reason.FILES,
            )

    async def _started(
        self,
        api: KubeClient,
        watch: PodWatch,
        name: str,
        image: str,
        step: Step | None,
        sink: PlanSink,
        pod_log: CommandLog,
    ) -> float:
        """Seconds the container waited (for its image) before it started; fails the job when it
        cannot start."""
        begin = time.monotonic()
        budget = self.settings.image_pull_timeout

        def state() -> ContainerState:
            return container_state(watch.pod, name)

        seen: dict[str, str] = {}  # waiting reason -> its newest message: ErrImagePull says why, BackOff not

        def ready() -> bool:
            s = state()
            if s.state == "waiting" and s.reason:
                seen[s.reason] = s.message
            ended = phase(watch.pod) in ("Failed", "Succeeded") or watch.deleted
            return s.started or s.reason in PERMANENT_WAITING or ended

        ok = await watch.wait(ready, budget)
        s, waited = state(), time.monotonic() - begin
        if s.started:
            if waited >= 0.5:
                pod_log.write(f"{name}: started after {waited:.2f}s (image {image})\n".encode())
            return waited
        if watch.deleted:
            await self._job_failure(watch)
            raise RuntimeFailure(f"{name} never ran: the job's pod was deleted")
        if ok and s.reason not in PERMANENT_WAITING:  # the pod ended before this container ran
            self._check_deadline(watch, name)
            why = pod_reason(watch.pod) or "no reason given"
            raise RuntimeFailure(f"{name} never ran: the pod is {phase(watch.pod)} ({why})")
        quiet = ("ContainerCreating", "PodInitializing")  # say nothing about why
        reasons = [f"{r}: {m}" if m else r for r, m in seen.items() if r not in quiet]
        if s.reason and s.reason not in seen:
            reasons.append(f"{s.reason}: {s.message}" if s.message else s.reason)
        event = await self._event(api, watch.name)
        why = "; ".join([*reasons, event] if event else reasons) or "no reason given"
        if ok:
            message = f"image {image!r} cannot be pulled ({why})"
        else:
            message = (
                f"image {image!r} was not pulled within {format_duration(budget)} "
                f"(EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT): {why}"
            )
        pod_log.write(f"{name}: {message}\n".encode())
        if step is not None:
            await sink.started(step)
            await sink.finished(step, StepResult(-1, reason=Reason.IMAGE, message=message))
        raise StepFailed(f"{name}: {message}", Reason.IMAGE)

    async def _logs(
        self, api: KubeClient, watch: PodWatch, container: str, out: OutputSink, limit: int
    ) -> None:
        async for chunk in self._log_chunks(api, watch, container, limit):
            out(chunk)

    async def _log_chunks(
        self, api: KubeClient, watch: PodWatch, container: str, limit: int = 0
    ) -> AsyncIterator[bytes]:
        """The container's log as it comes (follow), at most `limit` bytes when > 0.

        A stream that breaks off (an error, or its end while the pod still says the container runs)
        is followed again from the start, skipping the bytes already given: the kubelet's log of a
        container is the same bytes each time (until the kubelet rotates it), so nothing is lost or
        repeated. After LOG_FOLLOWS streams it gives up with a line saying so."""
        pod, got = watch.name, 0
        for attempt in range(1, LOG_FOLLOWS + 1):
            skip = got
            problem = ""
            try:
                async for chunk in api.log(pod, container, follow=True, limit_bytes=limit):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    got += len(chunk)
                    yield chunk
                    if limit and got >= limit:
                        return
            except KubernetesAPIError as exc:
                problem = exc.message
            if not problem:

                def ended() -> bool:
                    return container_state(watch.pod, container).state != "running" or watch.deleted

                if await watch.wait(ended, LOG_RETRY_S):  # at once when the pod says so (status lags)
                    return  # the container ended: so did its log
                problem = "the stream ended while the container still runs"
            elif attempt < LOG_FOLLOWS:
                await asyncio.sleep(LOG_RETRY_S)
            log.warning("pod %s: the log of %s broke off (%s); following it again", pod, container, problem)
        yield f"\n[corral] the log stream from the Kubernetes API broke off: {problem}\n".encode()

    async def _terminated(self, watch: PodWatch, name: str) -> ContainerState:
        def ended() -> bool:
            return container_state(watch.pod, name).state == "terminated" or watch.deleted

        running = container_state(watch.pod, name).state == "running"
        if not await watch.wait(ended, None if running else TERMINATED_WAIT_S):
            raise RuntimeFailure(f"{name}: its log ended but the pod never reported it terminated")
        if watch.deleted:
            await self._job_failure(watch)
            raise RuntimeFailure(f"{name}: the job's pod was deleted while it ran")
        return container_state(watch.pod, name)

    async def _job_failure(self, watch: PodWatch) -> None:
        """StepFailed(TIMEOUT) when the Job failed for its activeDeadlineSeconds (the Job controller
        then deletes the pod, so the pod itself may never say so)."""
        try:
            jobs, _ = await watch.client.list_all("jobs", field_selector=f"metadata.name={watch.job_name}")
        except KubernetesAPIError:
            return
        for job in jobs:
            for c in (job.get("status") or {}).get("conditions") or []:
                failed = c.get("type") == "Failed" and c.get("status") == "True"
                if failed and c.get("reason") == "DeadlineExceeded":
                    raise StepFailed(
                        f"the job's pod ran past KUBERNETES_JOB_DEADLINE ({self.settings.job_deadline}s) "
                        "and was stopped",
                        Reason.TIMEOUT,
                    )

    def _result(self, watch: PodWatch, name: str, state: ContainerState) -> StepResult:
        if state.exit_code != 0:
            self._check_deadline(watch, name)
        return StepResult(state.exit_code, oom_killed=state.reason == "OOMKilled")

    def _check_deadline(self, watch: PodWatch, name: str) -> None:
        if "DeadlineExceeded" in pod_reason(watch.pod):
            deadline = self.settings.job_deadline
            raise StepFailed(
                f"{name}: the job's pod ran past KUBERNETES_JOB_DEADLINE ({deadline}s) and was stopped",
                Reason.TIMEOUT,
            )

    async def _event(self, api: KubeClient, pod: str) -> str:
        """The newest Warning event's message about the pod ("" when none can be read)."""
        if not pod:
            return ""
        try:
            events, _ = await api.list_all("events", field_selector=f"involvedObject.name={pod}")
        except KubernetesAPIError as exc:
            log.warning("pod %s: cannot list its events: %s", pod, exc)
            return ""
        warnings = [e for e in events if e.get("type") == "Warning"] or events

        def when(e: dict[str, Any]) -> str:
            created = (e.get("metadata") or {}).get("creationTimestamp")
            return str(e.get("lastTimestamp") or e.get("eventTime") or created or "")

        texts: list[str] = []  # newest first, each once: "Failed to pull image ..." outlives "BackOff"
        for e in sorted(warnings, key=when, reverse=True):
            text = " ".join(x for x in (str(e.get("reason") or ""), str(e.get("message") or "")) if x)
            if text and text not in texts:
                texts.append(text)
        return "; ".join(texts[:MAX_EVENTS])[:MAX_EVENT_MESSAGE]

    async def cleanup(self, space: JobSpace) -> None:
        run = self._runs.pop(str(space.root), None)
        if run is None or not run.created:
            return
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
        if problems:
            raise RuntimeFailure("; ".join(problems))

    async def janitor(self, live: set[str]) -> list[str]:
        api = await self.api()
        jobs, _ = await api.list_all("jobs", label_selector=self._selector())
        found = {
            str(j["metadata"]["name"]): (j["metadata"].get("labels") or {}).get(LABEL_JOB)
            for j in jobs
            if isinstance(j.get("metadata"), dict) and j["metadata"].get("name")
        }
        # What this process created and has not cleaned up yet is never an orphan, even when its
        # job started after `live` was taken (the janitor and a new job may interleave).
        ours = {name for run in self._runs.values() for _kind, name in run.created}
        removed = []
        for name in orphans({k: v for k, v in found.items() if k not in ours}, manifests.live_labels(live)):
            await api.delete("jobs", name, propagation="Foreground")
            for kind, obj in manifests.companions(name):
                with contextlib.suppress(KubernetesAPIError):
                    await api.delete(kind, obj)
            removed.append(name)
        return removed

    def _selector(self) -> str:
        return manifests.owner_selector(self.owner)
