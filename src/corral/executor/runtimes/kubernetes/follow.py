"""Following one batch/v1 Job's pod, from its creation to its last container (KubernetesRuntime's
run_plan makes one `PodFollower` per Job it creates).

- the pod: one watch (watch.py); the phases it goes through are timed (`Phases`) and written to the
  job's `setup.kubernetes.pod` entry;
- scheduling: within EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT from the Job's creation, else the job
  fails with the PodScheduled condition's reason (or the pod's Warning events);
- each container in the order it runs: it must start within EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT
  (the pull budget, with the waiting reasons seen meanwhile and the Warning events as the reason; an
  image that can never be pulled fails at once), then its log is followed to its end and its exit
  code (and OOMKilled) read from the pod status:
  - `setup-workspace`: the log split at podside's section markers into the host's clone entries;
  - a step: its own entry (sink.started / sink.finished, which stops the job on a failure);
  - `main`: the framed Results, fed to podside's decoder as they come (bounded), never shown;
- a pod the Job controller deleted for KUBERNETES_JOB_DEADLINE, or that says DeadlineExceeded,
  fails the job as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.errors import KubernetesAPIError, Reason, RuntimeFailure, StepFailed
from corral.executor.runtimes.base import OutputSink, PlanSink, Step, StepResult
from corral.executor.runtimes.kubernetes.client import KubeClient
from corral.executor.runtimes.kubernetes.settings import DEFAULT_STEP_IMAGE, KubernetesSettings
from corral.executor.runtimes.kubernetes.watch import (
    PERMANENT_WAITING,
    ContainerState,
    PodWatch,
    container_state,
    phase,
    pod_reason,
    scheduling,
)
from corral.executor.runtimes.kubernetes.workspace import Staged
from corral.executor.workspace.host import Bounded, clone_commands, clone_url
from corral.units import format_duration

if TYPE_CHECKING:
    from corral.executor.workspace.base import CommandLog

__all__ = ["MAIN", "SETUP", "Phases", "PodFollower"]

log = logging.getLogger("corral.executor.runtimes.kubernetes")

SETUP = "setup-workspace"  # the init container that clones and writes the files
MAIN = "main"  # the container that prints the Results
TERMINATED_WAIT_S = 60.0  # seconds from a container's log ending to its terminated status
MAX_EVENT_MESSAGE = 1000  # characters of the pod's events quoted in the job's error
MAX_EVENTS = 3  # distinct Warning events quoted, newest first
SETUP_OUTPUT_MAX = 64 * 1024  # bytes kept of setup-workspace's output outside its git sections
MAIN_TAIL = 2000  # bytes of main's log quoted when it fails
LOG_FOLLOWS = 5  # streams of one container's log before a broken one is given up
LOG_RETRY_S = 1.0  # seconds before a broken log stream is followed again
PHASES = ("queued", "scheduling", "pulling", "running")


@dataclass
class Phases:
    """Seconds one job's pods spent queued (Job created -> pod exists), scheduling (-> PodScheduled),
    pulling (containers waiting to start) and running."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(seconds, 0.0)

    def summary(self) -> str:
        return "phases: " + ", ".join(f"{p} {self.seconds.get(p, 0.0):.2f}s" for p in PHASES)


class PodFollower:
    """One Job's pod (see the module docstring)."""

    def __init__(
        self,
        api: KubeClient,
        settings: KubernetesSettings,
        job_name: str,
        *,
        frontend_url: str,
        staged: Staged,
        sink: PlanSink,
        pod_log: CommandLog,
        phases: Phases,
    ) -> None:
        self.api, self.settings, self.job_name = api, settings, job_name
        self.frontend_url = frontend_url
        self.staged, self.sink, self.pod_log, self.phases = staged, sink, pod_log, phases
        self.watch = PodWatch(api, job_name)

    def note(self, line: str) -> None:
        self.pod_log.write(f"{line}\n".encode())

    async def follow(self, job: Mapping[str, Any], steps: Mapping[str, Step | None]) -> None:
        """Follow the pod of `job` (its manifest) to its last container; `steps`: container name ->
        the step it runs (setup and main: None)."""
        spec = job["spec"]["template"]["spec"]
        containers: Sequence[Mapping[str, Any]] = [
            *(spec.get("initContainers") or []),
            *(spec.get("containers") or []),
        ]
        self.watch.start()
        try:
            await self._scheduled()
            for c in containers:
                await self._container(str(c["name"]), str(c.get("image") or ""), steps.get(c["name"]))
        finally:
            await self.watch.stop()

    # --- scheduling -------------------------------------------------------------------------------

    async def _scheduled(self) -> None:
        watch, started = self.watch, time.monotonic()
        budget = self.settings.scheduling_timeout
        self.note(f"job {self.job_name} created in namespace {self.settings.namespace}")
        if not await watch.wait(lambda: watch.pod is not None, budget):
            message = f"no pod of job {self.job_name} appeared within {format_duration(budget)}"
            raise StepFailed(message, Reason.RUNTIME)
        queued = time.monotonic()
        self.phases.add("queued", queued - started)
        self.note(f"pod {watch.name} created after {queued - started:.2f}s")

        def done() -> bool:
            return scheduling(watch.pod)[0] or watch.deleted or phase(watch.pod) in ("Failed", "Succeeded")

        if not await watch.wait(done, max(budget - (queued - started), 0.0)):
            why = scheduling(watch.pod)[2] or await self._events() or "no reason given"
            self.note(f"not scheduled within {format_duration(budget)}: {why}")
            raise StepFailed(
                f"the job's pod could not be scheduled within {format_duration(budget)} "
                f"(EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT): {why}",
                Reason.RUNTIME,
            )
        if watch.deleted:
            raise RuntimeFailure("pod could not be scheduled: it was deleted while pending")
        now = time.monotonic()
        self.phases.add("scheduling", now - queued)
        node = scheduling(watch.pod)[1]
        self.note(f"scheduled{f' on node {node}' if node else ''} after {now - queued:.2f}s")

    # --- one container ----------------------------------------------------------------------------

    async def _container(self, name: str, image: str, step: Step | None) -> None:
        """Wait for the container to start (within the pull budget), follow its log to its end,
        report its exit code."""
        self.phases.add("pulling", await self._started(name, image, step))
        began = time.monotonic()
        try:
            if step is not None:
                out = await self.sink.started(step)
                await self._logs(name, out, 0)
                state = await self._terminated(name)
                self.phases.add("running", time.monotonic() - began)
                began = 0.0
                await self.sink.finished(step, self._result(name, state))
            elif name == SETUP:
                await self._setup()
            else:
                await self._main(name)
        finally:
            if began:
                self.phases.add("running", time.monotonic() - began)

    async def _main(self, name: str) -> None:
        """main's log fed to podside's ResultsDecoder chunk by chunk as it comes, never held whole:
        the decoder keeps what it decoded (within the host's bounds) and at most one line; after a
        chunk it refuses, the rest is only read to its end (a crash's traceback: its tail is kept)."""
        from corral.executor.runtimes.kubernetes import podside

        decoder = podside.ResultsDecoder(self.staged.outputs)
        refused, tail = "", b""
        async for chunk in self._log_chunks(name, podside.MAX_RESULTS_BYTES + 1):
            tail = (tail + chunk)[-MAIN_TAIL:]
            if not refused:
                try:
                    decoder.feed(chunk)
                except podside.MalformedResults as exc:
                    refused = str(exc)
        state = await self._terminated(name)
        staged = self.staged
        if state.exit_code != 0:
            self._check_deadline(name)
            text, code = tail.decode("utf-8", "replace").strip(), state.exit_code
            staged.results_problem = f"collecting the results in the pod failed (exit {code}): {text}"
        elif refused:
            staged.results_problem = f"the results the job's pod printed are not usable: {refused}"
        else:
            staged.results = decoder

    async def _setup(self) -> None:
        """The setup-workspace container: its log split by podside's markers into the host's clone
        entries (setup.git.init, setup.git.fetch, ...: each git command's output and exit code);
        output outside them (writing the job's files) goes to setup.kubernetes.workspace."""
        from corral.executor.runtimes.kubernetes.podside import CloneEvent, CloneLog

        staged, sink = self.staged, self.sink
        commands: dict[str, list[str]] = {}
        if staged.clone is not None:
            url = clone_url(self.frontend_url, staged.clone.repository_name)
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
            async for chunk in self._log_chunks(SETUP):
                await take(splitter.feed(chunk))
            await take(splitter.close())
        finally:
            await stack.aclose()
        state = await self._terminated(SETUP)
        if other.buf.strip() or (state.exit_code != 0 and failure is None):
            async with sink.open_log("setup.kubernetes.workspace", ["podside", "clone"]) as entry:
                entry.write(bytes(other.buf))
                entry.exit_code = state.exit_code
        if failure is not None:
            raise failure
        if state.exit_code != 0 or not done:
            self._check_deadline(SETUP)
            raise RuntimeFailure(
                f"setting up the workspace in the pod failed: {SETUP} exited with {state.exit_code}",
                reason=Reason.CLONE if staged.clone is not None else Reason.FILES,
            )

    async def _started(self, name: str, image: str, step: Step | None) -> float:
        """Seconds the container waited (for its image) before it started; fails the job when it
        cannot start."""
        watch, begin = self.watch, time.monotonic()
        budget = self.settings.image_pull_timeout
        seen: dict[str, str] = {}  # waiting reason -> its newest message: ErrImagePull says why, BackOff not

        def state() -> ContainerState:
            return container_state(watch.pod, name)

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
                self.note(f"{name}: started after {waited:.2f}s (image {image})")
            return waited
        if watch.deleted:
            await self._job_failure()
            raise RuntimeFailure(f"{name} never ran: the job's pod was deleted")
        if ok and s.reason not in PERMANENT_WAITING:  # the pod ended before this container ran
            self._check_deadline(name)
            why = pod_reason(watch.pod) or "no reason given"
            raise RuntimeFailure(f"{name} never ran: the pod is {phase(watch.pod)} ({why})")
        quiet = ("ContainerCreating", "PodInitializing")  # say nothing about why
        reasons = [f"{r}: {m}" if m else r for r, m in seen.items() if r not in quiet]
        if s.reason and s.reason not in seen:
            reasons.append(f"{s.reason}: {s.message}" if s.message else s.reason)
        event = await self._events()
        why = "; ".join([*reasons, event] if event else reasons) or "no reason given"
        if ok:
            message = f"image {image!r} cannot be pulled ({why})"
            if s.reason == "ErrImageNeverPull" and image == DEFAULT_STEP_IMAGE:
                message += (
                    f": {DEFAULT_STEP_IMAGE} is published on no registry, so it is never pulled; build "
                    "images/corral.Dockerfile, push it to a registry the cluster pulls from and set "
                    "KUBERNETES_SINGLE_JOB_STEP_IMAGE to it (README, Kubernetes)"
                )
        else:
            message = (
                f"image {image!r} was not pulled within {format_duration(budget)} "
                f"(EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT): {why}"
            )
        self.note(f"{name}: {message}")
        if step is not None:
            await self.sink.started(step)
            await self.sink.finished(step, StepResult(-1, reason=Reason.IMAGE, message=message))
        raise StepFailed(f"{name}: {message}", Reason.IMAGE)

    # --- logs and ends ----------------------------------------------------------------------------

    async def _logs(self, container: str, out: OutputSink, limit: int) -> None:
        async for chunk in self._log_chunks(container, limit):
            out(chunk)

    async def _log_chunks(self, container: str, limit: int = 0) -> AsyncIterator[bytes]:
        """The container's log as it comes (follow), at most `limit` bytes when > 0.

        A stream that breaks off (an error, or its end while the pod still says the container runs)
        is followed again from the start, skipping the bytes already given: the kubelet's log of a
        container is the same bytes each time (until the kubelet rotates it), so nothing is lost or
        repeated. After LOG_FOLLOWS streams it gives up with a line saying so."""
        watch = self.watch
        pod, got, problem = watch.name, 0, ""
        for attempt in range(1, LOG_FOLLOWS + 1):
            skip, problem = got, ""
            try:
                async for chunk in self.api.log(pod, container, follow=True, limit_bytes=limit):
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

    async def _terminated(self, name: str) -> ContainerState:
        watch = self.watch

        def ended() -> bool:
            return container_state(watch.pod, name).state == "terminated" or watch.deleted

        running = container_state(watch.pod, name).state == "running"
        if not await watch.wait(ended, None if running else TERMINATED_WAIT_S):
            raise RuntimeFailure(f"{name}: its log ended but the pod never reported it terminated")
        if watch.deleted:
            await self._job_failure()
            raise RuntimeFailure(f"{name}: the job's pod was deleted while it ran")
        return container_state(watch.pod, name)

    def _result(self, name: str, state: ContainerState) -> StepResult:
        if state.exit_code != 0:
            self._check_deadline(name)
        return StepResult(state.exit_code, oom_killed=state.reason == "OOMKilled")

    def _deadline(self) -> StepFailed:
        deadline = self.settings.job_deadline
        return StepFailed(
            f"the job's pod ran past KUBERNETES_JOB_DEADLINE ({deadline}s) and was stopped", Reason.TIMEOUT
        )

    def _check_deadline(self, name: str) -> None:
        if "DeadlineExceeded" in pod_reason(self.watch.pod):
            raise self._deadline()

    async def _job_failure(self) -> None:
        """The timeout when the Job failed for its activeDeadlineSeconds (the Job controller then
        deletes the pod, so the pod itself may never say so)."""
        try:
            jobs, _ = await self.api.list_all("jobs", field_selector=f"metadata.name={self.job_name}")
        except KubernetesAPIError:
            return
        for job in jobs:
            for c in (job.get("status") or {}).get("conditions") or []:
                failed = c.get("type") == "Failed" and c.get("status") == "True"
                if failed and c.get("reason") == "DeadlineExceeded":
                    raise self._deadline()

    async def _events(self) -> str:
        """The pod's Warning events, newest first, each once ("" when none can be read)."""
        pod = self.watch.name
        if not pod:
            return ""
        try:
            events, _ = await self.api.list_all("events", field_selector=f"involvedObject.name={pod}")
        except KubernetesAPIError as exc:
            log.warning("pod %s: cannot list its events: %s", pod, exc)
            return ""
        warnings = [e for e in events if e.get("type") == "Warning"] or events

        def when(e: dict[str, Any]) -> str:
            created = (e.get("metadata") or {}).get("creationTimestamp")
            return str(e.get("lastTimestamp") or e.get("eventTime") or created or "")

        texts: list[str] = []  # "Failed to pull image ..." outlives the newer "BackOff"
        for e in sorted(warnings, key=when, reverse=True):
            text = " ".join(x for x in (str(e.get("reason") or ""), str(e.get("message") or "")) if x)
            if text and text not in texts:
                texts.append(text)
        return "; ".join(texts[:MAX_EVENTS])[:MAX_EVENT_MESSAGE]
