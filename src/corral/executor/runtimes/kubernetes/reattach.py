"""Reattach: after an executor restart, the Jobs a previous process of this executor left are
followed again instead of deleted, when the server still gives their attempt to this executor.

- `orphans`: this owner's Jobs (EXECUTOR_VM_PREFIX) labelled with this executor's name that no job
  of this process holds, one job attempt each (name, queue, id and attempt checked against each
  other: a Job's labels are the cluster's, not ours to trust); multi-pod Jobs are not offered;
- the worker asks the server for each (QueueClient.reattach) and `claim`s those it gets back (the
  janitor leaves them alone; it deletes the rest);
- `follow_again`: the handler runs the job with a `ResumeSink` (the attempt's entries as the
  server has them) and a fresh job token; nothing is created again. The pod is followed from where
  the server's log stands: `setup-workspace` must have finished (it used the old token, which the
  reattach replaced: a pod still setting up cannot be followed, the job errors and is retried); a
  step whose entry has its exit code is counted as it was; a step whose entry is unfinished has its
  container's log read again from its start (pods/log has no byte offset; the kubelet keeps the
  same bytes), redacted as before, and only what the server does not have yet is sent; a step with
  no entry yet, and `main`, as run_plan does. The entry `setup.kubernetes.pod` is continued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.errors import KubernetesAPIError, RuntimeFailure
from corral.executor.runtimes.base import LABEL_JOB, Orphan, ResumeSink, Step
from corral.executor.runtimes.kubernetes import manifests
from corral.executor.runtimes.kubernetes.follow import MAIN, SETUP, PodFollower
from corral.executor.runtimes.kubernetes.watch import container_state

if TYPE_CHECKING:
    from corral.executor.plan import JobPlan
    from corral.executor.runtimes.base import JobSpace
    from corral.executor.runtimes.kubernetes.runtime import KubernetesRuntime

__all__ = ["ReattachedFollower", "follow_again", "orphans"]

POD_WAIT_S = 30.0  # seconds for a reattached Job's pod to be seen


def _orphan(meta: Mapping[str, Any], owner: str, queues: list[str]) -> Orphan | None:
    """The job attempt a Job of ours runs, when its labels and name agree on it."""
    labels = meta.get("labels") or {}
    name, value = str(meta.get("name") or ""), str(labels.get(LABEL_JOB) or "")
    attempt = labels.get(manifests.LABEL_ATTEMPT)
    if not isinstance(attempt, str) or not attempt.isdigit() or len(attempt) > 9:
        return None
    # the id: the job label's tail, or (that label hashed: a long queue name) the job-id label
    tail = str(labels.get(manifests.LABEL_JOB_ID) or value.rpartition("-")[2])
    if not tail.isdigit() or len(tail) > 18:
        return None
    job_id = int(tail)
    for queue in queues:
        if manifests.label_value(f"{queue}-{job_id}") != value:
            continue
        if manifests.job_names(owner, queue, job_id, int(attempt)).job == name:
            return Orphan(queue=queue, job_id=job_id, attempt=int(attempt), name=name)
    return None


async def orphans(runtime: KubernetesRuntime, ours: set[str]) -> list[Orphan]:
    """This owner's and executor's single-pod Jobs that are not in `ours` and not being deleted."""
    api = await runtime.api()
    jobs, _ = await api.list_all("jobs", label_selector=manifests.owner_selector(runtime.owner))
    me = manifests.label_value(runtime.executor.name)
    found = []
    for j in jobs:
        meta = j.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("name") in ours or meta.get("deletionTimestamp"):
            continue
        if labels.get(manifests.LABEL_EXECUTOR) != me or manifests.LABEL_STEP in labels:
            continue  # another executor's, or a multi-pod step Job (never reattached: see the README)
        if (o := _orphan(meta, runtime.owner, list(runtime.executor.queues))) is not None:
            found.append(o)
    return sorted(found, key=lambda o: (o.queue, o.job_id))


async def follow_again(runtime: KubernetesRuntime, space: JobSpace, plan: JobPlan, sink: ResumeSink) -> None:
    """Follow the claimed Job of space's attempt to its end (see the module docstring)."""
    from corral.executor.runtimes.kubernetes.runtime import _Run

    names = manifests.job_names(space.owner, space.queue, space.job_id, space.attempt)
    run = runtime._runs.setdefault(str(space.root), _Run())
    # cleanup deletes these (what is already gone is fine), the janitor leaves them to cleanup
    run.created = [("jobs", names.job), *manifests.companions(names.job)]
    runtime.unclaim(names.job)
    staged = runtime.workspace.staged(space)
    staged.clone, staged.outputs = plan.clone, tuple(plan.outputs)
    api = await runtime.api()
    command = ["batch/v1", "Job", names.job, "-n", runtime.settings.namespace]
    async with sink.resume_log("setup.kubernetes.pod", command) as pod_log:
        pod_log.exit_code = 1
        try:
            jobs, _ = await api.list_all("jobs", field_selector=f"metadata.name={names.job}")
            job = next((j for j in jobs if not (j.get("metadata") or {}).get("deletionTimestamp")), None)
            if job is None:
                raise RuntimeFailure(f"the job's Job {names.job} is gone: it cannot be reattached")
            follower = ReattachedFollower(
                api,
                runtime.settings,
                names.job,
                frontend_url=runtime.settings.frontend_url or runtime.executor.frontend_url,
                staged=staged,
                sink=sink,
                pod_log=pod_log,
                phases=run.phases,
            )
            follower.resume = sink
            await follower.follow(job, dict(manifests.step_containers(plan)))
            pod_log.exit_code = 0
        except KubernetesAPIError as exc:
            raise RuntimeFailure(f"the Kubernetes API: {exc.message}") from None
        finally:
            pod_log.write(f"{run.phases.summary()}\n".encode())


class ReattachedFollower(PodFollower):
    """A PodFollower that takes the pod up where the server's log of the attempt stands."""

    resume: ResumeSink

    async def follow(self, job: Mapping[str, Any], steps: Mapping[str, Step | None]) -> None:
        spec = job["spec"]["template"]["spec"]
        containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        watch = self.watch
        watch.start()
        try:
            if not await watch.wait(lambda: watch.pod is not None or watch.deleted, POD_WAIT_S):
                raise RuntimeFailure(f"no pod of job {self.job_name} was seen within {POD_WAIT_S:g}s")
            if watch.pod is None:
                raise RuntimeFailure(f"the pod of job {self.job_name} was deleted")
            self.note(f"the executor restarted: reattached to pod {watch.name} of job {self.job_name}")
            for c in containers:
                name, image = str(c["name"]), str(c.get("image") or "")
                step = steps.get(name)
                if name == SETUP:
                    await self._setup_done()
                elif step is None:
                    if name != MAIN:
                        raise RuntimeFailure(f"the Job's container {name} runs no step of this job")
                    await self._container(name, image, None)
                else:
                    await self._step(name, image, step)
        finally:
            await watch.stop()

    async def _setup_done(self) -> None:
        running = container_state(self.watch.pod, SETUP).state != "terminated"
        if running:
            self.note(f"{SETUP} had not finished: it fetched with the job token the reattach replaced")
        state = await self._terminated(SETUP)
        if running or state.exit_code != 0:
            raise RuntimeFailure(
                f"the executor restarted while the pod set up its workspace ({SETUP} exited with "
                f"{state.exit_code}): the job runs again"
            )

    async def _step(self, name: str, image: str, step: Step) -> None:
        known = self.resume.known(step.key)
        if known is None:  # the old process never opened its entry: as run_plan does
            await self._container(name, image, step)
            return
        if known.exit_code is not None:
            self.note(f"{name}: had finished with exit code {known.exit_code}")
            await self.resume.skipped(step, known.exit_code)
            return
        self.phases.add("pulling", await self._started(name, image, step))
        out = await self.resume.resume(step)
        self.note(f"{name}: its log followed again ({known.out_len} bytes were shipped before)")
        await self._logs(name, out, 0)
        state = await self._terminated(name)
        await self.sink.finished(step, self._result(name, state))
