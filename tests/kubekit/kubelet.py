"""The test-side kubelet (and scheduler) of the stand-in: one node whose pods really run in the local
Docker Engine. See the package docstring for what is enforced and what is only recorded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ctypes
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp.web

from corral.errors import DockerAPIError
from corral.executor import safefs
from corral.executor.runtimes.docker import pause
from corral.executor.runtimes.docker.api import DockerAPI, FrameDecoder
from tests.kubekit import scheduler
from tests.kubekit.apiserver import NODE, POD, PVC, PVC_PROTECTION, SECRET, Kind, KubeAPI, StatusError, now
from tests.kubekit.netns import Forwarder
from tests.kubekit.selectors import quantity

__all__ = ["LABEL", "LABEL_PID", "Kubelet", "KubeletConfig"]

LABEL = "dev.corral.kubekit"  # the cluster id, on every docker object the kubelet makes
LABEL_PID = "dev.corral.kubekit.pid"  # the test process: a sweep removes objects of dead processes
LABEL_POD = "dev.corral.kubekit.pod"
PULL_BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # seconds between looks for a missing image (ImagePullBackOff)
USAGE_PERIOD_S = 1.0  # seconds between emptyDir usage checks (the kubelet's housekeeping is 10 s)
USAGE_MAX_ENTRIES = 1_000_000  # files counted per check at most
RETRY_S = 1.0  # seconds between attempts of a pod whose Secret/PVC is missing
LOG_CHUNK_LIMIT = 1 << 20
CONTAINER_LOG_MAX = "64m"  # json-file max-size per container (docker rotates, one file)
PIDS_LIMIT = 4096
MS_BIND = 4096
MNT_DETACH = 2
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


@dataclass(frozen=True)
class KubeletConfig:
    cluster_id: str
    root: Path  # pod and PVC directories live here
    node: scheduler.Node = field(default_factory=scheduler.Node)
    forward_ports: tuple[int, ...] = ()  # host 127.0.0.1 ports each pod reaches at its own 127.0.0.1
    max_grace_s: float = 2.0  # cap on a deleted pod's grace period (tests do not wait 30 s)


class ContainerConfigError(Exception):
    """CreateContainerConfigError: the container cannot be made from its spec (kubelet retries)."""


class MountError(Exception):
    """FailedMount: a volume cannot be set up (kubelet retries)."""


@dataclass
class ContainerState:
    name: str
    image: str
    init: bool
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    container_id: str = ""
    image_id: str = ""

    def status(self) -> dict[str, Any]:
        running = "running" in self.state
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": running and not self.init,
            "restartCount": 0,
            "started": running,
            "state": copy.deepcopy(self.state),
        }
        if self.container_id:
            out["containerID"] = f"docker://{self.container_id}"
        return out


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    dir: Path
    containers: dict[str, ContainerState] = field(default_factory=dict)
    docker_ids: dict[str, str] = field(default_factory=dict)  # container name -> docker id, once started
    pause_id: str = ""
    forwarders: list[Forwarder] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)  # subPath bind mounts under dir
    task: asyncio.Task[None] | None = None
    phase: str = "Pending"
    reason: str = ""
    message: str = ""
    started_at: str = ""
    initialized: bool = False
    finished: bool = False
    deadline: asyncio.TimerHandle | None = None
    monitor: asyncio.Task[None] | None = None  # the emptyDir sizeLimit check
    cleaned: bool = False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bind(source: str, target: str) -> None:
    if _libc().mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount of {source} on {target}: {os.strerror(err)}")


def _unmount(target: str) -> None:
    if _libc().umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _usage(top: Path, limit: int) -> int:
    """Bytes allocated below `top` (st_blocks, symlinks not followed); stops counting past `limit`."""
    total, stack, seen = 0, [str(top)], 0
    while stack and total <= limit and seen < USAGE_MAX_ENTRIES:
        path = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    seen += 1
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _decode(value: str) -> str:
    return base64.b64decode(value).decode("utf-8", "replace")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


class Kubelet:
    def __init__(self, api: KubeAPI, docker: DockerAPI, config: KubeletConfig) -> None:
        self.api, self.docker, self.config = api, docker, config
        self.node = config.node
        self.runs: dict[str, PodRun] = {}
        self._unschedulable: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pause_ready = False
        api.hooks.append(self.observe)
        api.log_server = self.serve_log
        (config.root / "pods").mkdir(parents=True, exist_ok=True)
        (config.root / "pvcs").mkdir(parents=True, exist_ok=True)
        node = config.node
        api.create(
            NODE,
            None,
            {
                "metadata": {"name": node.name, "labels": node.all_labels()},
                "spec": {"taints": [dict(t) for t in node.taints]},
                "status": {
                    "capacity": {"cpu": node.cpu, "memory": node.memory, "pods": str(node.pods)},
                    "allocatable": {"cpu": node.cpu, "memory": node.memory, "pods": str(node.pods)},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                },
            },
        )

    # --- reacting to the API ----------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def observe(self, type_: str, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        loop = asyncio.get_running_loop()
        if kind is PVC and type_ == "ADDED":
            loop.call_soon(self._bind_pvc, meta["namespace"], meta["name"])
            loop.call_soon(self._retry_unschedulable)  # as the scheduler's queue moves on a claim's add
            return
        if kind is PVC and type_ == "DELETED":
            loop.call_soon(self._release_pvc, meta["namespace"], meta["name"])
            return
        if kind is PVC and meta.get("deletionTimestamp"):
            loop.call_soon(self._protect_pvcs)
            return
        if kind is not POD:
            return
        uid = meta["uid"]
        node = (obj.get("spec") or {}).get("nodeName")
        if type_ == "DELETED":
            self._unschedulable.pop(uid, None)
            if uid in self.runs:
                self._spawn(self._terminate(uid, remove=False))
            loop.call_soon(self._retry_unschedulable)
            loop.call_soon(self._protect_pvcs)
            return
        if meta.get("deletionTimestamp"):
            self._unschedulable.pop(uid, None)
            if uid in self.runs:
                self._spawn(self._terminate(uid, remove=True))
            elif node == self.node.name:
                self.api.remove(POD, meta["namespace"], meta["name"])
            return
        if not node:
            if type_ == "ADDED":
                loop.call_soon(self._schedule, meta["namespace"], meta["name"], uid)
            return
        if node == self.node.name and uid not in self.runs:
            run = PodRun(
                uid=uid, namespace=meta["namespace"], name=meta["name"], dir=self.config.root / "pods" / uid
            )
            spec = obj.get("spec") or {}
            for group, init in (("initContainers", True), ("containers", False)):
                for c in spec.get(group) or []:
                    run.containers[c["name"]] = ContainerState(c["name"], c.get("image", ""), init)
            self.runs[uid] = run
            run.task = loop.create_task(self._run(run))
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            loop.call_soon(self._retry_unschedulable)
            loop.call_soon(self._protect_pvcs)

    # --- scheduling -------------------------------------------------------------------------------

    def _used(self) -> tuple[Decimal, Decimal, int]:
        cpu, mem, count = Decimal(0), Decimal(0), 0
        for pod in self.api.list_objects(POD):
            if (pod.get("spec") or {}).get("nodeName") != self.node.name:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            c, m = scheduler.pod_requests(pod.get("spec") or {})
            cpu, mem, count = cpu + c, mem + m, count + 1
        return cpu, mem, count

    def _schedule(self, namespace: str, name: str, uid: str) -> None:
        pod = self.api.get(POD, namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            return
        message = ""
        for vol in spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and self.api.get(PVC, namespace, claim) is None:
                message = f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.'
                break
        if not message:
            try:
                reasons = scheduler.unfit_reasons(self.node, spec, *self._used())
            except ValueError as exc:
                reasons = [f"invalid resources: {exc}"]
            if reasons:
                message = scheduler.fit_message(reasons)
        stamp = now()
        status = pod.setdefault("status", {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        if message:
            self._unschedulable[uid] = (namespace, name)
            was = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
            if was is None or was.get("message") != message:
                conditions.append(
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                        "lastProbeTime": None,
                        "lastTransitionTime": stamp,
                    }
                )
                status["conditions"], status["phase"] = conditions, "Pending"
                self.api.replace(POD, pod)
            self.api.record_event(
                pod, "FailedScheduling", message, type_="Warning", component="default-scheduler"
            )
            return
        self._unschedulable.pop(uid, None)
        spec["nodeName"] = self.node.name
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
        )
        status["conditions"] = conditions
        self.api.replace(POD, pod)
        self.api.record_event(
            pod,
            "Scheduled",
            f"Successfully assigned {namespace}/{name} to {self.node.name}",
            component="default-scheduler",
        )

    def _retry_unschedulable(self) -> None:
        for uid, (ns, name) in list(self._unschedulable.items()):
            self._schedule(ns, name, uid)

    # --- PVCs: bound at once to a host directory ----------------------------------------------------

    def _pvc_dir(self, namespace: str, name: str) -> Path:
        return self.config.root / "pvcs" / namespace / name

    def _bind_pvc(self, namespace: str, name: str) -> None:
        pvc = self.api.get(PVC, namespace, name)
        if pvc is None:
            return
        path = self._pvc_dir(namespace, name)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        pvc["status"] = {
            "phase": "Bound",
            "accessModes": (pvc.get("spec") or {}).get("accessModes") or [],
            "capacity": {
                "storage": ((pvc.get("spec") or {}).get("resources") or {})
                .get("requests", {})
                .get("storage", "")
            },
        }
        pvc["spec"]["volumeName"] = f"pv-{pvc['metadata']['uid']}"
        self.api.replace(PVC, pvc)

    def _protect_pvcs(self) -> None:
        """The pvc-protection controller: a deleted claim keeps its finalizer while a pod that has
        not ended uses it, then goes (and its directory with it)."""
        in_use = set()
        for pod in self.api.list_objects(POD):
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for vol in (pod.get("spec") or {}).get("volumes") or []:
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim:
                    in_use.add((pod["metadata"]["namespace"], claim))
        for pvc in self.api.list_objects(PVC):
            meta = pvc["metadata"]
            if not meta.get("deletionTimestamp") or (meta["namespace"], meta["name"]) in in_use:
                continue
            if PVC_PROTECTION in (meta.get("finalizers") or []):
                meta["finalizers"] = [f for f in meta["finalizers"] if f != PVC_PROTECTION]
                self.api.replace(PVC, pvc)

    def _release_pvc(self, namespace: str, name: str) -> None:
        shutil.rmtree(self._pvc_dir(namespace, name), ignore_errors=True)

    # --- running a pod ----------------------------------------------------------------------------

    def _publish(self, run: PodRun) -> None:
        """Write the run's state into the pod's status (nothing if the pod is gone)."""
        pod = self.api.get(POD, run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return
        spec = pod.get("spec") or {}
        status = pod.setdefault("status", {})
        stamp = now()
        scheduled = [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        main_names = [c["name"] for c in spec.get("containers") or []]
        main_ready = all("running" in run.containers[n].state for n in main_names)
        pending_init = [n for n in init_names if "terminated" not in run.containers[n].state]
        not_ready = [n for n in main_names if "running" not in run.containers[n].state]

        def cond(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
            c: dict[str, Any] = {
                "type": type_,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": stamp,
            }
            if not ok and reason:
                c["reason"], c["message"] = reason, message
            return c

        done_reason = "PodCompleted" if run.finished else "ContainersNotReady"
        status["conditions"] = [
            cond("PodReadyToStartContainers", bool(run.pause_id)),
            cond(
                "Initialized",
                run.initialized,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending_init)}]",
            ),
            cond(
                "Ready",
                main_ready and not run.finished,
                done_reason,
                f"containers with unready status: [{' '.join(not_ready)}]",
            ),
            cond(
                "ContainersReady",
                main_ready and not run.finished,
                done_reason,
                f"containers with unready status: [{' '.join(not_ready)}]",
            ),
            *scheduled,
        ]
        status["phase"] = run.phase
        status["hostIP"] = "127.0.0.1"
        if run.started_at:
            status["startTime"] = run.started_at
        if run.reason:
            status["reason"], status["message"] = run.reason, run.message
        cpu_req, mem_req = scheduler.pod_requests(spec)
        status["qosClass"] = "Burstable" if (cpu_req or mem_req) else "BestEffort"
        if init_names:
            status["initContainerStatuses"] = [run.containers[n].status() for n in init_names]
        status["containerStatuses"] = [run.containers[n].status() for n in sorted(main_names)]
        self.api.replace(POD, pod)

    def _event(self, run: PodRun, reason: str, message: str, *, warning: bool = False) -> None:
        pod = self.api.get(POD, run.namespace, run.name)
        if pod is not None and pod["metadata"]["uid"] == run.uid:
            self.api.record_event(pod, reason, message, type_="Warning" if warning else "Normal")

    async def _run(self, run: PodRun) -> None:
        try:
            pod = self.api.get(POD, run.namespace, run.name)
            if pod is None:
                return
            run.started_at = now()
            self._publish(run)
            spec = pod.get("spec") or {}
            while True:
                try:
                    await self._setup(run, pod)
                    break
                except MountError as exc:
                    self._event(run, "FailedMount", str(exc), warning=True)
                    await asyncio.sleep(RETRY_S)
                    fresh = self.api.get(POD, run.namespace, run.name)
                    if fresh is None:
                        return
            limits = {
                v["name"]: (v["emptyDir"] or {})["sizeLimit"]
                for v in spec.get("volumes") or []
                if "emptyDir" in v and (v["emptyDir"] or {}).get("sizeLimit")
            }
            if limits:
                sizes = {name: int(quantity(text)) for name, text in limits.items()}
                run.monitor = asyncio.get_running_loop().create_task(self._watch_usage(run, sizes, limits))
            deadline = spec.get("activeDeadlineSeconds")
            if deadline:
                run.deadline = asyncio.get_running_loop().call_later(
                    float(deadline), self._deadline_exceeded, run
                )
            self._publish(run)
            for c in spec.get("initContainers") or []:
                code = await self._run_container(run, pod, c)
                if code != 0:
                    run.phase, run.finished = "Failed", True
                    self._publish(run)
                    return
            run.initialized = True
            self._publish(run)
            mains = spec.get("containers") or []
            codes = await asyncio.gather(*(self._run_container(run, pod, c) for c in mains))
            run.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            run.finished = True
            self._publish(run)
        except asyncio.CancelledError:
            raise
        finally:
            if run.deadline is not None:
                run.deadline.cancel()
            if run.monitor is not None and run.monitor is not asyncio.current_task():
                run.monitor.cancel()

    def _deadline_exceeded(self, run: PodRun) -> None:
        self._fail(run, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline")

    def _fail(self, run: PodRun, reason: str, message: str) -> None:
        """Stop a running pod for the kubelet's own reason (deadline, eviction): phase Failed, its
        containers killed (exit code 137), the reason and message in the pod's status and an event."""
        if run.finished or run.task is None:
            return
        run.task.cancel()
        run.phase, run.finished = "Failed", True
        run.reason, run.message = reason, message
        self._event(run, reason, message, warning=True)

        async def stop() -> None:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
            for name, cid in run.docker_ids.items():
                with contextlib.suppress(DockerAPIError):
                    await self.docker.container_kill(cid)
                state = run.containers[name]
                if "running" in state.state:
                    state.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "finishedAt": now(),
                            "startedAt": state.state["running"].get("startedAt"),
                            "containerID": f"docker://{cid}",
                        }
                    }
            self._publish(run)

        self._spawn(stop())

    async def _watch_usage(self, run: PodRun, limits: dict[str, int], texts: dict[str, str]) -> None:
        """The eviction manager for emptyDir sizeLimit: usage (allocated blocks, as du counts them,
        never following symlinks) checked every USAGE_PERIOD_S; over the limit evicts the pod."""
        while not run.finished:
            await asyncio.sleep(USAGE_PERIOD_S)
            for name, limit in limits.items():
                used = await asyncio.to_thread(_usage, run.dir / "volumes" / name, limit)
                if used > limit:
                    self._fail(
                        run,
                        "Evicted",
                        f'Usage of EmptyDir volume "{name}" exceeds the limit "{texts[name]}". ',
                    )
                    return

    async def _setup(self, run: PodRun, pod: dict[str, Any]) -> None:
        """The pod's directories, volumes, sandbox (pause container) and forwarders."""
        spec = pod.get("spec") or {}
        sc = spec.get("securityContext") or {}
        fs_group = sc.get("fsGroup")
        run.dir.mkdir(mode=0o711, exist_ok=True)
        for vol in spec.get("volumes") or []:
            await asyncio.to_thread(self._volume, run, pod, vol, fs_group)
        if not run.pause_id:
            if not self._pause_ready:
                await pause.ensure_image(self.docker)
                self._pause_ready = True
            labels = self._labels(run, "pause")
            config = {
                "Image": pause.PAUSE_IMAGE,
                "Entrypoint": ["/busybox", "sleep", pause.PAUSE_SECONDS],
                "User": "65534:65534",
                "Hostname": run.name[:63].rstrip("-."),  # the pod's containers share it, as in a pod
                "Labels": labels,
                "HostConfig": {
                    "NetworkMode": "none",
                    "CapDrop": ["ALL"],
                    "SecurityOpt": ["no-new-privileges"],
                    "ReadonlyRootfs": True,
                    "IpcMode": "shareable",
                    "Memory": 16 * 1024**2,
                    "MemorySwap": 16 * 1024**2,
                    "PidsLimit": 8,
                    "LogConfig": {"Type": "none", "Config": {}},
                },
            }
            cid = await self.docker.container_create(f"kubekit-{run.uid}-pause", config)
            run.pause_id = cid
            await self.docker.container_start(cid)
            info = await self.docker.container_inspect(cid) or {}
            pid = int((info.get("State") or {}).get("Pid") or 0)
            for port in self.config.forward_ports:
                fwd = Forwarder(pid, port)
                await fwd.start()
                run.forwarders.append(fwd)

    def _labels(self, run: PodRun, container: str) -> dict[str, str]:
        return {
            LABEL: self.config.cluster_id,
            LABEL_PID: str(os.getpid()),
            LABEL_POD: f"{run.namespace}/{run.name}",
            f"{LABEL}.uid": run.uid,
            f"{LABEL}.container": container,
        }

    def _volume(self, run: PodRun, pod: dict[str, Any], vol: dict[str, Any], fs_group: int | None) -> None:
        name = vol["name"]
        base = run.dir / "volumes" / name
        if "emptyDir" in vol:
            base.mkdir(parents=True, exist_ok=True)
            if fs_group is not None:
                os.chown(base, 0, int(fs_group))
                base.chmod(0o777 | stat.S_ISGID)
            else:
                base.chmod(0o777)
        elif "secret" in vol or "projected" in vol or "configMap" in vol:
            if base.exists():
                return
            files = self._volume_files(pod, vol)
            tmp = base.with_name(name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, mode=0o755)
            for rel, (data, mode) in files.items():
                safefs.write_beneath(tmp, rel, data, 0o600)
                target_fd = safefs.open_dir(tmp)
                try:
                    fd = safefs.open_beneath(target_fd, rel, os.O_RDONLY)
                finally:
                    os.close(target_fd)
                try:
                    if fs_group is not None:
                        os.fchown(fd, 0, int(fs_group))
                        mode |= 0o440
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            tmp.rename(base)
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"].get("claimName", "")
            if self.api.get(PVC, run.namespace, claim) is None:
                raise MountError(
                    f'MountVolume.SetUp failed for volume "{name}" : '
                    f'persistentvolumeclaim "{claim}" not found'
                )
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : the stand-in does not mount {kinds} volumes'
            )

    def _volume_files(self, pod: dict[str, Any], vol: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
        ns = pod["metadata"]["namespace"]
        name = vol["name"]
        files: dict[str, tuple[bytes, int]] = {}

        def add_source(src: dict[str, Any], kind: str, default_mode: int) -> None:
            ref = src.get("secretName") if kind == "secret" else src.get("name")
            optional = bool(src.get("optional"))
            if kind == "secret":
                obj = self.api.get(SECRET, ns, ref or "")
                data = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
            else:
                from tests.kubekit.apiserver import KINDS

                obj = self.api.get(KINDS[("", "configmaps")], ns, ref or "")
                data = {k: str(v).encode() for k, v in ((obj or {}).get("data") or {}).items()}
            if obj is None:
                if optional:
                    return
                raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {kind} "{ref}" not found')
            items = src.get("items")
            if items:
                for item in items:
                    key = item.get("key", "")
                    if key not in data:
                        if optional:
                            continue
                        raise MountError(
                            f'MountVolume.SetUp failed for volume "{name}" : '
                            f"configmap references non-existent config key: {key}"
                            if kind != "secret"
                            else f'MountVolume.SetUp failed for volume "{name}" : '
                            f"references non-existent secret key: {key}"
                        )
                    files[item.get("path") or key] = (data[key], int(item.get("mode", default_mode)))
            else:
                for key, value in data.items():
                    files[key] = (value, default_mode)

        if "secret" in vol:
            add_source(vol["secret"], "secret", int(vol["secret"].get("defaultMode", 0o644)))
        elif "configMap" in vol:
            add_source(vol["configMap"], "configMap", int(vol["configMap"].get("defaultMode", 0o644)))
        else:
            projected = vol["projected"]
            default_mode = int(projected.get("defaultMode", 0o644))
            for source in projected.get("sources") or []:
                if "secret" in source:
                    add_source(
                        {**source["secret"], "secretName": source["secret"].get("name")},
                        "secret",
                        default_mode,
                    )
                elif "configMap" in source:
                    add_source(source["configMap"], "configMap", default_mode)
                else:
                    raise MountError(
                        f'MountVolume.SetUp failed for volume "{name}" : the stand-in projects secrets and '
                        f"configMaps only, not {sorted(source)}"
                    )
        return files

    def _security(
        self, pod: dict[str, Any], c: dict[str, Any], image_user: str
    ) -> tuple[str, dict[str, Any]]:
        """The docker User and the HostConfig security fields; ContainerConfigError for runAsNonRoot."""
        psc, csc = (pod.get("spec") or {}).get("securityContext") or {}, c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        pmeta = pod["metadata"]
        where = f'(pod: "{pmeta["name"]}_{pmeta["namespace"]}({pmeta["uid"]})", container: {c["name"]})'
        if non_root:
            if uid is None:
                user_part = image_user.split(":", 1)[0]
                if user_part and not user_part.isdigit():
                    raise ContainerConfigError(
                        f"container has runAsNonRoot and image has non-numeric user ({user_part}), "
                        f"cannot verify user is non-root {where}"
                    )
                if not user_part or int(user_part) == 0:
                    raise ContainerConfigError(
                        f"container has runAsNonRoot and image will run as root {where}"
                    )
            elif int(uid) == 0:
                raise ContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
        if uid is None and gid is None:
            user = image_user
        elif uid is None:
            user = f"{image_user.split(':', 1)[0] or 0}:{gid}"
        else:
            user = f"{uid}:{gid if gid is not None else 0}" if gid is not None else str(uid)
        groups = [str(g) for g in (psc.get("supplementalGroups") or [])]
        if psc.get("fsGroup") is not None:
            groups.insert(0, str(psc["fsGroup"]))
        caps = csc.get("capabilities") or {}
        security_opt = []
        if csc.get("allowPrivilegeEscalation") is False:
            security_opt.append("no-new-privileges")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            security_opt.append("seccomp=unconfined")
        host: dict[str, Any] = {
            "ReadonlyRootfs": bool(csc.get("readOnlyRootFilesystem")),
            "CapDrop": list(caps.get("drop") or []),
            "CapAdd": list(caps.get("add") or []),
            "SecurityOpt": security_opt,
            "Privileged": bool(csc.get("privileged")),
            "GroupAdd": groups,
        }
        return user, host

    def _env(self, pod: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            ref = src.get("secretRef")
            if ref:
                secret = self.api.get(SECRET, ns, ref.get("name", ""))
                if secret is None:
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(f'secret "{ref.get("name")}" not found')
                for k, v in (secret.get("data") or {}).items():
                    env[prefix + k] = _decode(v)
        for item in c.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = _expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.api.get(SECRET, ns, ref.get("name", ""))
                if secret is None:
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(f'secret "{ref.get("name")}" not found')
                data = secret.get("data") or {}
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(
                        f"couldn't find key {ref.get('key')} in Secret {ns}/{ref.get('name')}"
                    )
                env[name] = _decode(data[ref["key"]])
            elif "fieldRef" in source:
                path = source["fieldRef"].get("fieldPath", "")
                env[name] = self._field(pod, path)
            else:
                raise ContainerConfigError(f"the stand-in does not resolve env {name} from {sorted(source)}")
        return env

    def _field(self, pod: dict[str, Any], path: str) -> str:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": spec.get("nodeName") or self.node.name,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.podIP": "",
        }
        if path in simple:
            return str(simple[path] or "")
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise ContainerConfigError(f"unsupported fieldPath {path!r}")

    def _mounts(self, run: PodRun, pod: dict[str, Any], c: dict[str, Any]) -> list[dict[str, Any]]:
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        mounts = []
        for m in c.get("volumeMounts") or []:
            vol = volumes[m["name"]]
            read_only = bool(m.get("readOnly"))
            if "persistentVolumeClaim" in vol:
                base = self._pvc_dir(run.namespace, vol["persistentVolumeClaim"]["claimName"])
                read_only = read_only or bool(vol["persistentVolumeClaim"].get("readOnly"))
            else:
                base = run.dir / "volumes" / m["name"]
            if "secret" in vol or "projected" in vol or "configMap" in vol:
                read_only = True
            source = self._pinned(run, base, m.get("subPath") or "")
            mounts.append({"Type": "bind", "Source": source, "Target": m["mountPath"], "ReadOnly": read_only})
        return mounts

    def _pinned(self, run: PodRun, base: Path, sub_path: str) -> str:
        """A bind source the pod cannot redirect. The subPath directory is made (with the mode of the
        volume's root, as the kubelet does) and opened component by component without following any
        symlink; that descriptor is bind-mounted (mount(2) on /proc/self/fd/<n>, which names the open
        directory itself, not a path) under the pod's own directory, which no pod sees, and docker
        mounts that. A symlink a pod swaps in later is never followed (the real kubelet's
        volume-subpaths do the same)."""
        if not sub_path:
            return str(base)
        root_fd = safefs.open_dir(base)
        try:
            mode = stat.S_IMODE(os.fstat(root_fd).st_mode)
            cur = os.dup(root_fd)
        finally:
            os.close(root_fd)
        for part in [p for p in sub_path.split("/") if p not in ("", ".")]:
            if part == "..":
                os.close(cur)
                raise ContainerConfigError(f"subPath {sub_path!r} leaves its volume")
            try:
                os.mkdir(part, 0o700, dir_fd=cur)
                created = True
            except FileExistsError:
                created = False
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            except OSError as exc:
                raise ContainerConfigError(
                    f"subPath {sub_path!r}: {part!r} is a symlink or not a directory"
                ) from exc
            finally:
                os.close(cur)
            if created:
                os.fchmod(nxt, mode)
            cur = nxt
        target = run.dir / "subpaths" / str(len(run.mounts))
        target.mkdir(parents=True, mode=0o700)
        try:
            _bind(f"/proc/self/fd/{cur}", str(target))
        finally:
            os.close(cur)
        run.mounts.append(target)
        return str(target)

    async def _image(self, run: PodRun, c: dict[str, Any]) -> dict[str, Any] | None:
        """The local image (never pulled); None while missing (ErrImagePull, then ImagePullBackOff)."""
        state = run.containers[c["name"]]
        image = c["image"]
        attempt = 0
        while True:
            info = await self.docker.image_inspect(image)
            if info is not None:
                if attempt == 0:
                    self._event(run, "Pulled", f'Container image "{image}" already present on machine')
                else:
                    self._event(run, "Pulled", f'Successfully pulled image "{image}"')
                return info
            message = f'image "{image}" not found'
            state.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            self._publish(run)
            self._event(run, "Pulling", f'Pulling image "{image}"')
            self._event(run, "Failed", f'Failed to pull image "{image}": {message}', warning=True)
            self._event(run, "Failed", "Error: ErrImagePull", warning=True)
            await asyncio.sleep(PULL_BACKOFF_S[min(attempt, len(PULL_BACKOFF_S) - 1)] / 2)
            state.state = {
                "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            }
            self._publish(run)
            self._event(run, "BackOff", f'Back-off pulling image "{image}"')
            self._event(run, "Failed", "Error: ImagePullBackOff", warning=True)
            await asyncio.sleep(PULL_BACKOFF_S[min(attempt, len(PULL_BACKOFF_S) - 1)] / 2)
            attempt += 1

    async def _run_container(self, run: PodRun, pod: dict[str, Any], c: dict[str, Any]) -> int:
        state = run.containers[c["name"]]
        info = await self._image(run, c)
        assert info is not None
        image_cfg = info.get("Config") or {}
        while True:
            try:
                fresh = self.api.get(POD, run.namespace, run.name) or pod
                env = self._env(fresh, c)
                user, security = self._security(fresh, c, str(image_cfg.get("User") or ""))
                mounts = self._mounts(run, fresh, c)
                break
            except ContainerConfigError as exc:
                state.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self._publish(run)
                self._event(run, "Failed", f"Error: {exc}", warning=True)
                await asyncio.sleep(RETRY_S)
        limits = (c.get("resources") or {}).get("limits") or {}
        host: dict[str, Any] = {
            **security,
            "NetworkMode": f"container:{run.pause_id}",
            "IpcMode": f"container:{run.pause_id}",
            "Mounts": mounts,
            "PidsLimit": PIDS_LIMIT,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": CONTAINER_LOG_MAX, "max-file": "1"}},
        }
        if "memory" in limits:
            host["Memory"] = host["MemorySwap"] = int(quantity(limits["memory"]))
        if "cpu" in limits:
            host["NanoCpus"] = int(quantity(limits["cpu"]) * 10**9)
        config: dict[str, Any] = {
            "Image": c["image"],
            "Env": [f"{k}={v}" for k, v in env.items()],
            "User": user,
            "Labels": self._labels(run, c["name"]),
            "WorkingDir": c.get("workingDir", ""),
            "HostConfig": host,
            "AttachStdin": False,
            "OpenStdin": False,
            "Tty": False,
        }
        if c.get("command"):
            config["Entrypoint"] = [_expand(a, env) for a in c["command"]]
            config["Cmd"] = [_expand(a, env) for a in c.get("args") or []] or None
        elif c.get("args"):
            config["Cmd"] = [_expand(a, env) for a in c["args"]]
        try:
            cid = await self.docker.container_create(f"kubekit-{run.uid}-{c['name']}", config)
        except DockerAPIError as exc:
            state.state = {"waiting": {"reason": "CreateContainerError", "message": exc.message}}
            self._publish(run)
            self._event(run, "Failed", f"Error: {exc.message}", warning=True)
            return 128
        state.container_id, state.image_id = cid, str(info.get("Id", ""))
        self._event(run, "Created", f"Created container {c['name']}")
        try:
            await self.docker.container_start(cid)
        except DockerAPIError as exc:
            state.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": exc.message,
                    "startedAt": None,
                    "finishedAt": now(),
                    "containerID": f"docker://{cid}",
                }
            }
            self._publish(run)
            self._event(
                run, "Failed", f"Error: failed to start container {c['name']!r}: {exc.message}", warning=True
            )
            return 128
        run.docker_ids[c["name"]] = cid
        started = now()
        state.state = {"running": {"startedAt": started}}
        if "running" in state.state and not state.init:
            run.phase = "Running"
        self._publish(run)
        self._event(run, "Started", f"Started container {c['name']}")
        code = await self.docker.container_wait(cid)
        details = await self.docker.container_inspect(cid) or {}
        oom = bool((details.get("State") or {}).get("OOMKilled"))
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        state.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now(),
                "containerID": f"docker://{cid}",
            }
        }
        if not (state.init and code == 0):
            self._publish(run)
        return code

    async def _terminate(self, uid: str, *, remove: bool) -> None:
        run = self.runs.get(uid)
        if run is None or run.cleaned:
            return
        run.cleaned = True
        pod = self.api.get(POD, run.namespace, run.name)
        grace = float((pod or {}).get("metadata", {}).get("deletionGracePeriodSeconds") or 0)
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        stop_s = int(min(grace, self.config.max_grace_s))
        await asyncio.gather(
            *(self._stop_container(cid, stop_s) for cid in run.docker_ids.values()), return_exceptions=True
        )
        await self._cleanup(run)
        self.runs.pop(uid, None)
        if remove and pod is not None and pod["metadata"]["uid"] == uid:
            self.api.remove(POD, run.namespace, run.name)
        self._retry_unschedulable()

    async def _stop_container(self, cid: str, stop_s: int) -> None:
        with contextlib.suppress(DockerAPIError):
            await self.docker.container_stop(cid, stop_s)

    async def _cleanup(self, run: PodRun) -> None:
        if run.monitor is not None:
            run.monitor.cancel()
        for fwd in run.forwarders:
            await fwd.close()
        run.forwarders.clear()
        for state in run.containers.values():
            if state.container_id:
                with contextlib.suppress(DockerAPIError):
                    await self.docker.container_remove(state.container_id)
        if run.pause_id:
            with contextlib.suppress(DockerAPIError):
                await self.docker.container_remove(run.pause_id)
        for target in reversed(run.mounts):
            with contextlib.suppress(OSError):
                _unmount(str(target))
        run.mounts.clear()
        await asyncio.to_thread(shutil.rmtree, run.dir, True)

    async def close(self) -> None:
        """Stop and remove every pod's containers and directories (the cluster's teardown)."""
        for uid in list(self.runs):
            run = self.runs[uid]
            run.cleaned = True
            if run.task is not None and not run.task.done():
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
            await self._cleanup(run)
            self.runs.pop(uid, None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- pods/log -----------------------------------------------------------------------------------

    async def serve_log(
        self, request: aiohttp.web.BaseRequest, pod: dict[str, Any], params: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        mains = [c["name"] for c in spec.get("containers") or []]
        inits = [c["name"] for c in spec.get("initContainers") or []]
        container = params.get("container") or ""
        if not container:
            if len(mains) != 1:
                raise StatusError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {meta['name']}, "
                    f"choose one of: [{' '.join(mains)}]"
                    + (f" or one of the init containers: [{' '.join(inits)}]" if inits else ""),
                )
            container = mains[0]
        if container not in mains and container not in inits:
            raise StatusError(400, "BadRequest", f"container {container} is not valid for pod {meta['name']}")
        run = self.runs.get(meta["uid"])
        cid = run.docker_ids.get(container) if run else None
        if run is None or cid is None:
            reason = "ContainerCreating"
            if run is not None:
                reason = run.containers[container].state.get("waiting", {}).get("reason", "PodInitializing")
            raise StatusError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{meta["name"]}" is waiting to start: {reason}',
            )
        follow = (params.get("follow") or "").lower() in ("true", "1")
        docker_params: dict[str, Any] = {"stdout": 1, "stderr": 1, "follow": int(follow)}
        if (params.get("timestamps") or "").lower() in ("true", "1"):
            docker_params["timestamps"] = 1
        if params.get("tailLines"):
            docker_params["tail"] = int(params["tailLines"])
        if params.get("sinceSeconds"):
            docker_params["since"] = int(time.time()) - int(params["sinceSeconds"])
        limit = int(params["limitBytes"]) if params.get("limitBytes") else None
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = "text/plain"
        response.charset = "utf-8"
        await response.prepare(request)
        sent = 0
        try:
            async with self.docker.stream(
                "GET", f"/containers/{cid}/logs", params=docker_params, read_timeout=None
            ) as resp:
                decoder = FrameDecoder()
                async for chunk in resp.aiter_raw():
                    data = b"".join(p for _, p in decoder.feed(chunk))
                    if limit is not None:
                        data = data[: max(0, limit - sent)]
                    if data:
                        await response.write(data)
                        sent += len(data)
                    if limit is not None and sent >= limit:
                        break
        except (DockerAPIError, ConnectionError, RuntimeError):
            pass  # the container was removed or the client left: the log ends
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response
