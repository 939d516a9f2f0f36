"""A Kubernetes stand-in cluster for tests: no real API server can run on these machines
(../shared/machine-notes.md §7), so the kit is kmock's emulator as the API server (apiserver.py) on
127.0.0.1:<random port>, a Job controller (controller.py) and a one-node scheduler + kubelet
(scheduler.py, kubelet.py) that really run each pod's containers in the local Docker Engine. It runs
on its own event loop in a thread, so sync tests, async tests and executor subprocesses can all talk
to it over HTTP while the test blocks.

ENFORCED (a wrong runtime fails against the stand-in as it would against a cluster):
* authentication: a bearer token per identity; the executor's kubeconfig (`executor_kubeconfig`)
  carries a token whose every request is checked against the shipped Role
  (src/corral/executor/runtimes/kubernetes/role.yaml) in the Role's namespace: anything outside it
  answers 403 Forbidden (a Status, as kube-apiserver's RBAC authorizer words it) AND is recorded as a
  violation, which the `kube_cluster` fixture turns into a test failure at teardown. Tests inspect
  with `admin_kubeconfig` (not RBAC-checked, recorded under its own user);
* validation the runtime's manifests must pass on a real cluster: names (DNS-1123, Job names <= 63),
  label keys/values, container names, env names, volume mounts naming volumes, subPath without '..',
  restartPolicy (Never/OnFailure in Jobs), resource quantities (parsable, requests <= limits), Secret
  keys and the 1 MiB Secret size (stringData folded into data); 3 MiB request bodies;
* resourceVersions, list + watch from a resourceVersion with label/field selectors, 404/409/410;
* DELETE propagation (Foreground/Background/Orphan, Orphan being the default for Jobs) and graceful
  pod deletion (containers stopped and removed, then the pod object goes);
* Jobs: one pod per attempt with job-name/controller-uid labels, backoffLimit, activeDeadlineSeconds
  (DeadlineExceeded), Complete/Failed conditions;
* scheduling: cpu/memory requests (limits when no requests) against the node's capacity minus the pods
  bound to it, nodeSelector, required node affinity, taints/tolerations; an unfit pod stays Pending
  with PodScheduled=False/Unschedulable, kube-scheduler's message and a FailedScheduling event;
* images: only local images of the Docker Engine are used, NEVER pulled (a missing image gives
  ErrImagePull then ImagePullBackOff, `image "x" not found`, Failed/BackOff events, and is looked
  for again with back-off);
* running: init containers one after another (the first failure fails the pod), then the containers;
  command/args with $(VAR) expansion, env (value, secretKeyRef, fieldRef incl. spec.nodeName,
  envFrom secretRef), runAsUser/runAsGroup/fsGroup/supplementalGroups, runAsNonRoot (refused with
  CreateContainerConfigError like the kubelet), readOnlyRootFilesystem, capabilities drop/add,
  allowPrivilegeEscalation=false (no-new-privileges), limits -> --memory/--memory-swap/--cpus,
  emptyDir and PVC volumes as host directories (subPath made with the volume's mode, opened without
  following symlinks and mounted through /proc/<pid>/fd), Secret/projected/configMap volumes as
  read-only files (items, defaultMode/mode, gid fsGroup and g+r as the kubelet does);
  exit codes and reasons (Completed, Error, OOMKilled) in initContainerStatuses/containerStatuses,
  phases Pending -> Running -> Succeeded/Failed, the pod's activeDeadlineSeconds, emptyDir sizeLimit
  (allocated blocks checked every second; over it the pod is Evicted with the kubelet's message);
* PVCs: bound at once to a host directory shared by every pod naming the claim (multi-pod jobs), with
  the kubernetes.io/pvc-protection finalizer (a deleted claim stays while a pod using it runs);
* networking: each pod has its own network namespace (a `--network none` pause container all its
  containers join) and, for each port in `forward_ports`, a forwarder listening on 127.0.0.1:<port>
  inside it that relays to the host's 127.0.0.1:<port> (the test's corral server), like a Service;
  never host networking, nothing but loopback is contacted;
* pods/log: docker's log of the container, `container` (required when the pod has several), `follow`
  (streams until the container ends), timestamps, tailLines, sinceSeconds, limitBytes; a container not
  started yet answers 400 "is waiting to start: <reason>" as the kubelet does.

ONLY RECORDED (in the stored pod spec, for tests to assert; the stand-in cannot enforce them):
runtimeClassName (no gVisor handler behind it), imagePullSecrets and imagePullPolicy (nothing is ever
pulled), emptyDir medium (always a directory), PVC storage size and storageClassName, seccompProfile
RuntimeDefault (docker's default profile applies anyway; Unconfined is honoured), pod (anti-)affinity
(one node), automountServiceAccountToken/enableServiceLinks (no tokens or services are injected),
ttlSecondsAfterFinished, priority/preemption, probes, restartPolicy Always/OnFailure (containers are
never restarted). Strategic merge patches are applied as JSON merge patches; json-patch is refused.

Every request is recorded (`cluster.calls`: user, verb, resource, subresource, watch, status), so a
benchmark can count API calls per job. Every docker object is labelled dev.corral.kubekit=<cluster
id> and dev.corral.kubekit.pid=<test pid>; teardown removes the cluster's, and each new cluster
sweeps the ones of dead test processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml

from corral.executor.runtimes.kubernetes import rbac
from tests.kubekit.apiserver import Call, Identity, KubeAPI, LargeBodyServer, Violation, rules_of
from tests.kubekit.scheduler import Node

__all__ = ["Call", "KubeCluster", "Node", "Violation", "run_cluster", "sweep_leftovers"]

T = TypeVar("T")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
EXECUTOR_USER = "system:serviceaccount:{ns}:corral-executor"
ADMIN_USER = "kubekit:admin"


def sweep_leftovers(cluster_id: str | None = None) -> None:
    """Remove kubekit containers of `cluster_id`, or (None) of test processes that are gone."""
    from tests.kubekit.kubelet import LABEL, LABEL_PID

    flt = f"label={LABEL}={cluster_id}" if cluster_id else f"label={LABEL}"
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            flt,
            "--format",
            f'{{{{.ID}}}} {{{{.Label "{LABEL_PID}"}}}}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doomed = []
    for line in out.stdout.splitlines():
        cid, _, pid = line.partition(" ")
        if cluster_id is None:
            if not pid.isdigit():
                continue  # not made by a kubekit (no test pid): leave it
            try:
                os.kill(int(pid), 0)
                continue  # its test process is alive: not ours to remove
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        doomed.append(cid)
    if doomed:
        subprocess.run(["docker", "rm", "-f", *doomed], capture_output=True, timeout=120)


class KubeCluster:
    """The stand-in cluster; `start()` then `close()` (or use `run_cluster`)."""

    def __init__(
        self,
        root: Path,
        *,
        namespace: str = "corral",
        node: Node | None = None,
        forward_ports: Sequence[int] = (),
        role: dict[str, Any] | None = None,
        max_grace_s: float = 2.0,
        kubelet: bool = True,
    ) -> None:
        self.root = root
        self.namespace = namespace
        self.node = node or Node()
        self.forward_ports = tuple(forward_ports)
        self.max_grace_s = max_grace_s
        self.cluster_id = f"kk{secrets.token_hex(5)}"
        self.role = role if role is not None else rbac.role_manifest()  # the shipped Role by default
        self.rules = rules_of(role) if role is not None else rbac.load_role()
        self.executor_token = secrets.token_urlsafe(24)
        self.admin_token = secrets.token_urlsafe(24)
        self.executor_user = EXECUTOR_USER.format(ns=namespace)
        self._with_kubelet = kubelet
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"kubekit-{self.cluster_id}", daemon=True
        )
        self.api: KubeAPI | None = None
        self.port = 0
        self._parts: dict[str, Any] = {}

    # --- running things on the cluster's loop -------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STOP_TIMEOUT_S) -> T:
        """Run a coroutine on the cluster's loop and wait for its result (from any other thread)."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a plain function on the cluster's loop (the store is not thread-safe)."""

        async def go() -> Any:
            return fn(*args, **kwargs)

        return self.run(go())

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> KubeCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._with_kubelet:
            sweep_leftovers()
        self._thread.start()
        self.run(self._start(), timeout=START_TIMEOUT_S)
        self._write_kubeconfigs()
        return self

    async def _start(self) -> None:
        from tests.kubekit.controller import JobController

        api = KubeAPI(
            tokens={
                self.executor_token: Identity(self.executor_user, rbac=True),
                self.admin_token: Identity(ADMIN_USER, rbac=False),
            },
            rules=self.rules,
            rbac_namespace=self.namespace,
        )
        await api.__aenter__()
        self.api = api
        server = LargeBodyServer(api, host="127.0.0.1")
        await server.start_server()
        self._parts["server"] = server
        assert server.port is not None
        self.port = server.port
        self._parts["controller"] = JobController(api)
        if self._with_kubelet:
            from corral.executor.runtimes.docker.api import DockerAPI, socket_from_env
            from tests.kubekit.kubelet import Kubelet, KubeletConfig

            docker = DockerAPI(socket_from_env())
            self._parts["docker"] = docker
            self._parts["kubelet"] = Kubelet(
                api,
                docker,
                KubeletConfig(
                    cluster_id=self.cluster_id,
                    root=self.root,
                    node=self.node,
                    forward_ports=self.forward_ports,
                    max_grace_s=self.max_grace_s,
                ),
            )

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self._close(), timeout=STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()
            if self._with_kubelet:
                sweep_leftovers(self.cluster_id)

    async def _close(self) -> None:
        kubelet = self._parts.get("kubelet")
        if kubelet is not None:
            await kubelet.close()
        controller = self._parts.get("controller")
        if controller is not None:
            controller.close()
        if self.api is not None:
            self.api.close_watches()
        server = self._parts.get("server")
        if server is not None:
            await server.close()
        if self.api is not None:
            await self.api.__aexit__(None, None, None)
        docker = self._parts.get("docker")
        if docker is not None:
            await docker.aclose()

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what tests use -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def executor_kubeconfig(self) -> Path:
        """The kubeconfig for the executor (EXECUTOR_KUBERNETES_CONFIG_PATH): RBAC-checked token."""
        return self.root / "kubeconfig-executor.yaml"

    @property
    def admin_kubeconfig(self) -> Path:
        """A kubeconfig for the test itself (inspection, setup): not RBAC-checked."""
        return self.root / "kubeconfig-admin.yaml"

    def _write_kubeconfigs(self) -> None:
        for path, user, token in (
            (self.executor_kubeconfig, "corral-executor", self.executor_token),
            (self.admin_kubeconfig, "kubekit-admin", self.admin_token),
        ):
            doc = {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kubekit",
                "preferences": {},
                "clusters": [{"name": "kubekit", "cluster": {"server": self.url}}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "kubekit",
                        "context": {"cluster": "kubekit", "user": user, "namespace": self.namespace},
                    }
                ],
            }
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(doc, f)

    def calls(self, user: str | None = None) -> list[Call]:
        """Every request so far (of `user` only, e.g. cluster.executor_user)."""
        assert self.api is not None
        calls: list[Call] = self.call(lambda: list(self.api.calls))  # type: ignore[union-attr]
        return [c for c in calls if user is None or c.user == user]

    def violations(self) -> list[Violation]:
        assert self.api is not None
        out: list[Violation] = self.call(lambda: list(self.api.violations))  # type: ignore[union-attr]
        return out

    def take_violations(self) -> list[Violation]:
        """The violations so far, forgotten (for a test that provokes one on purpose)."""
        assert self.api is not None
        out: list[Violation] = self.call(self.api.take_violations)
        return out

    def objects(self, plural: str, group: str = "") -> list[dict[str, Any]]:
        """A snapshot of the stored objects of a kind (e.g. "pods", or "jobs", "batch")."""
        from tests.kubekit.apiserver import KINDS

        assert self.api is not None
        out: list[dict[str, Any]] = self.call(self.api.list_objects, KINDS[(group, plural)])
        return out

    def client(self, *, admin: bool = False) -> Any:
        """An async context manager giving a kubernetes_asyncio ApiClient on the caller's loop, with
        the executor's kubeconfig (RBAC-checked) or the admin's."""
        from kubernetes_asyncio import config

        path = self.admin_kubeconfig if admin else self.executor_kubeconfig

        @contextlib.asynccontextmanager
        async def open_client() -> Any:
            api_client = await config.new_client_from_config(config_file=str(path))
            async with api_client:
                yield api_client

        return open_client()

    def check_clean(self) -> None:
        """Fail when the executor's identity made a call outside the Role or the stand-in itself broke."""
        violations = self.violations()
        errors = self.server_errors()
        lines = [
            f"{v.call.verb} {v.call.group or 'core'}/{v.call.resource}"
            f"{'/' + v.call.subresource if v.call.subresource else ''} ns={v.call.namespace}: {v.reason}"
            for v in violations
        ]
        assert not violations, "calls outside the shipped Role (403):\n" + "\n".join(lines)
        assert not errors, f"the stand-in API server failed while serving: {errors!r}"

    def server_errors(self) -> list[Exception]:
        """Exceptions the API server raised while serving (bugs of the stand-in, not of the client)."""
        assert self.api is not None
        return list(self.call(lambda: list(self.api.errors)))  # type: ignore[union-attr]


@contextlib.contextmanager
def run_cluster(root: Path, **kwargs: Any) -> Iterator[KubeCluster]:
    cluster = KubeCluster(root, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()  # also after a start that failed half-way: whatever was made goes
