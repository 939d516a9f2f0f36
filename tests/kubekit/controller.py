"""The Job controller of the stand-in (batch/v1, non-indexed Jobs): a Job gets one Pod at a time named
`<job>-<5 chars>` from its template, labelled job-name/controller-uid (and their batch.kubernetes.io/
forms), owned by the Job (controller ownerReference, so propagation policies reach it). The Job's
status follows its pods: active/ready/succeeded/failed, startTime; `completions` successes make it
Complete (SuccessCriteriaMet first, as since Kubernetes 1.31); more than `backoffLimit` failures make it
Failed with reason BackoffLimitExceeded (a new pod is created after each failure until then; a pod
deleted before it ended counts as failed, as with pod-tracking finalizers); `activeDeadlineSeconds`
from startTime fails it with reason DeadlineExceeded and deletes its active pods. `suspend: true`
creates no pods. Events: SuccessfulCreate, Completed, BackoffLimitExceeded, DeadlineExceeded.
Not done: indexed Jobs, parallelism above one, podFailurePolicy, ttlSecondsAfterFinished (recorded
only: a finished Job stays until deleted).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tests.kubekit.apiserver import JOB, POD, Kind, KubeAPI, now

__all__ = ["JobController"]


def _condition(job: dict[str, Any], type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _finished(job: dict[str, Any]) -> bool:
    return _condition(job, "Complete") or _condition(job, "Failed")


def _controller_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return dict(ref)
    return None


class JobController:
    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self._queued: set[tuple[str, str]] = set()
        self._lost: dict[str, set[str]] = {}  # job uid -> names of pods deleted before they ended
        self._timers: dict[str, asyncio.TimerHandle] = {}
        api.hooks.append(self.observe)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def observe(self, type_: str, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        if kind is JOB:
            if type_ == "DELETED":
                timer = self._timers.pop(meta["uid"], None)
                if timer is not None:
                    timer.cancel()
                self._lost.pop(meta["uid"], None)
                return
            self._queue(meta.get("namespace"), meta["name"])
        elif kind is POD:
            ref = _controller_of(obj)
            if ref is None:
                return
            if type_ == "DELETED" and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                self._lost.setdefault(ref["uid"], set()).add(meta["name"])
            self._queue(meta.get("namespace"), ref["name"])

    def _queue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._queued:
            self._queued.add(key)
            asyncio.get_running_loop().call_soon(self._sync, key)

    def _sync(self, key: tuple[str, str]) -> None:
        self._queued.discard(key)
        job = self.api.get(JOB, *key)
        if job is None or job["metadata"].get("deletionTimestamp") or _finished(job):
            return
        uid = job["metadata"]["uid"]
        spec, status = job["spec"], dict(job.get("status") or {})
        before = copy.deepcopy(status)
        pods = [
            p
            for p in self.api.list_objects(POD, key[0])
            if (ref := _controller_of(p)) is not None and ref.get("uid") == uid
        ]
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        succeeded = phases.count("Succeeded")
        failed = phases.count("Failed") + len(self._lost.get(uid, set()))
        active = [
            p
            for p, ph in zip(pods, phases, strict=True)
            if ph not in ("Succeeded", "Failed") and not p["metadata"].get("deletionTimestamp")
        ]
        ready = sum(
            1
            for p in active
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        status.update({"active": len(active), "ready": ready, "succeeded": succeeded, "failed": failed})
        if not status.get("startTime") and not spec.get("suspend"):
            status["startTime"] = now()
            deadline = spec.get("activeDeadlineSeconds")
            if deadline:
                self._timers[uid] = asyncio.get_running_loop().call_later(
                    float(deadline), self._deadline, key, uid
                )
        if succeeded >= int(spec.get("completions") or 1):
            self._finish(job, status, "Complete", "", "", "Completed", "Job completed")
            return
        if failed > int(spec.get("backoffLimit", 6)):
            for pod in active:
                self.api.delete(POD, key[0], pod["metadata"]["name"])
            self._finish(
                job,
                status,
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                warning=True,
            )
            return
        if not active and not spec.get("suspend"):
            pod = self._pod_for(job)
            created = self.api.create(POD, key[0], pod)
            self.api.record_event(
                job,
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                component="job-controller",
            )
            status["active"] = 1
        if status != before:
            job["status"] = status
            self.api.replace(JOB, job)

    def _pod_for(self, job: dict[str, Any]) -> dict[str, Any]:
        meta, template = job["metadata"], job["spec"]["template"]
        tmeta = template.get("metadata") or {}
        return {
            "metadata": {
                "generateName": f"{meta['name']}-",
                "labels": dict(tmeta.get("labels") or {}),
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
        }

    def _finish(
        self,
        job: dict[str, Any],
        status: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        event_reason: str,
        event_message: str,
        *,
        warning: bool = False,
    ) -> None:
        stamp = now()
        first = "SuccessCriteriaMet" if type_ == "Complete" else "FailureTarget"
        conditions = [
            {
                "type": t,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": stamp,
                "lastTransitionTime": stamp,
            }
            for t in (first, type_)
        ]
        status["conditions"] = [*(status.get("conditions") or []), *conditions]
        status["active"] = 0
        if type_ == "Complete":
            status["completionTime"] = stamp
        job["status"] = status
        timer = self._timers.pop(job["metadata"]["uid"], None)
        if timer is not None:
            timer.cancel()
        self.api.replace(JOB, job)
        self.api.record_event(
            job,
            event_reason,
            event_message,
            type_="Warning" if warning else "Normal",
            component="job-controller",
        )

    def _deadline(self, key: tuple[str, str], uid: str) -> None:
        self._timers.pop(uid, None)
        job = self.api.get(JOB, *key)
        if (
            job is None
            or job["metadata"]["uid"] != uid
            or _finished(job)
            or job["metadata"].get("deletionTimestamp")
        ):
            return
        for pod in self.api.list_objects(POD, key[0]):
            ref = _controller_of(pod)
            if (
                ref is not None
                and ref.get("uid") == uid
                and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ):
                self.api.delete(POD, key[0], pod["metadata"]["name"])
        status = dict(job.get("status") or {})
        self._finish(
            job,
            status,
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            warning=True,
        )
