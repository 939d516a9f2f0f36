"""The pod of one batch/v1 Job as the API reports it: one watch (list, then watch from its
resourceVersion, renewed when the API server ends it), and the pure readings of a pod's status the
runtime decides by (container states, scheduling, why a pod failed).

Pod status shapes read here (core/v1 PodStatus): `phase`; `conditions[]` ({type: PodScheduled,
status: "False", reason: Unschedulable, message: "0/3 nodes are available: ..."}); `reason`
(DeadlineExceeded, Evicted); `initContainerStatuses[]` / `containerStatuses[]`, each with
`state` = {waiting: {reason, message}} | {running: {startedAt}} | {terminated: {exitCode, reason,
message}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.errors import KubernetesAPIError
from corral.executor.runtimes.kubernetes.client import KubeClient

__all__ = [
    "PERMANENT_WAITING",
    "PULL_WAITING",
    "ContainerState",
    "PodWatch",
    "container_state",
    "scheduling",
]

log = logging.getLogger("corral.executor.runtimes.kubernetes")

# waiting reasons of a container whose image is being fetched (or cannot be): the pull budget
PULL_WAITING = frozenset({"ContainerCreating", "PodInitializing", "ErrImagePull", "ImagePullBackOff"})
# waiting reasons no wait will cure: the job fails at once
PERMANENT_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
RETRY_DELAY_S = 1.0  # seconds before a watch that broke is opened again
MAX_WATCH_FAILURES = 30  # watches in a row that break before the job's runtime gives up


@dataclass(frozen=True)
class ContainerState:
    """One container of the pod: `state` is "absent" (no status yet), "waiting", "running" or
    "terminated"."""

    state: str
    reason: str = ""
    message: str = ""
    exit_code: int = -1

    @property
    def started(self) -> bool:
        return self.state in ("running", "terminated")


def container_state(pod: dict[str, Any] | None, name: str) -> ContainerState:
    status = (pod or {}).get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for c in status.get(key) or []:
            if not isinstance(c, dict) or c.get("name") != name:
                continue
            state = c.get("state") or {}
            if t := state.get("terminated"):
                return ContainerState(
                    "terminated",
                    str(t.get("reason") or ""),
                    str(t.get("message") or ""),
                    _int(t.get("exitCode"), -1),
                )
            if state.get("running") is not None:
                return ContainerState("running")
            w = state.get("waiting") or {}
            return ContainerState("waiting", str(w.get("reason") or ""), str(w.get("message") or ""))
    return ContainerState("absent")


def scheduling(pod: dict[str, Any] | None) -> tuple[bool, str, str]:
    """(scheduled, node, why not): the PodScheduled condition's message when it is False."""
    if pod is None:
        return False, "", ""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "PodScheduled":
            if c.get("status") == "True":
                return True, node, ""
            return False, node, _joined(c.get("reason"), c.get("message"))
    return bool(node), node, ""


def phase(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("status") or {}).get("phase") or "")


def pod_reason(pod: dict[str, Any] | None) -> str:
    status = (pod or {}).get("status") or {}
    return _joined(status.get("reason"), status.get("message"))


def _joined(*parts: Any) -> str:
    return " ".join(str(p) for p in parts if p)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class PodWatch:
    """The newest pod of Job `job_name`, kept current by one watch on `job-name=<job>`; `wait`
    blocks until a predicate holds (or a timeout)."""

    def __init__(self, client: KubeClient, job_name: str) -> None:
        self.client, self.job_name = client, job_name
        self.selector = f"job-name={job_name}"
        self.pod: dict[str, Any] | None = None
        self.deleted = False  # the pod we followed was deleted (e.g. preempted while pending)
        self.error: KubernetesAPIError | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(((self.pod or {}).get("metadata") or {}).get("name") or "")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch pods of {self.job_name}")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Whether `ready()` holds (checked at each change) within `timeout` seconds. Raises the
        watch's error when it gave up."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    while not ready():
                        if self.error is not None:
                            raise self.error
                        await self._changed.wait()
            except TimeoutError:
                return ready()
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        failures, version = 0, ""
        while True:
            try:
                if not version:
                    pods, version = await self.client.list_all("pods", label_selector=self.selector)
                    for p in pods:
                        self._take("ADDED", p)
                    await self._notify()
                async for event in self.client.watch(
                    "pods", label_selector=self.selector, resource_version=version
                ):
                    failures = 0
                    rv = str((event.object.get("metadata") or {}).get("resourceVersion") or "")
                    version = rv or version
                    if event.type != "BOOKMARK":
                        self._take(event.type, event.object)
                        await self._notify()
            except KubernetesAPIError as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again
                    version = ""
                    continue
                failures += 1
                if exc.status in (401, 403) or failures >= MAX_WATCH_FAILURES:
                    self.error = exc
                    await self._notify()
                    return
                log.warning("watching the pods of %s: %s; watching again", self.job_name, exc)
                await asyncio.sleep(RETRY_DELAY_S)

    def _take(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        if kind == "DELETED":
            if meta.get("name") == self.name:
                self.deleted = True
            return
        created = str(meta.get("creationTimestamp") or "")
        current = str(((self.pod or {}).get("metadata") or {}).get("creationTimestamp") or "")
        if self.pod is None or meta.get("name") == self.name or created >= current:
            if meta.get("name") != self.name:
                self.deleted = False
            self.pod = pod
