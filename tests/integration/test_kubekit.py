"""The Kubernetes stand-in's own behaviour (tests/kubekit), driven with kubernetes_asyncio (the
runtime's client) over HTTP, its pods really run by the Docker Engine (local images only; every pod
has its own `--network none` namespace)."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kubekit import KubeCluster, Node, run_cluster, sweep_leftovers
from tests.kubekit.kubelet import LABEL, LABEL_PID, LABEL_POD

pytestmark = pytest.mark.docker

T = TypeVar("T")
NS = "corral"
IMAGE = "corral/busybox:1"
WAIT_S = 60.0  # seconds any awaited state may take on a loaded 2-core machine
USER = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": True}


def job(
    name: str, containers: list[dict[str, Any]], *, init: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": USER,
        "containers": containers,
        **spec,
    }
    if init:
        pod_spec["initContainers"] = init
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"dev.corral.managed": "true"}},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
    }


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": ["sh", "-c", script], **extra}


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT_S) -> T:
    """Poll `probe` (bounded) until it returns something other than None/False."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def job_pod(core: client.CoreV1Api, name: str) -> client.V1Pod:
    async def probe() -> client.V1Pod | None:
        pods = await core.list_namespaced_pod(NS, label_selector=f"job-name={name}")
        return pods.items[0] if pods.items else None

    return await eventually(probe, f"the pod of job {name}")


async def pod_where(
    core: client.CoreV1Api, name: str, pred: Callable[[client.V1Pod], bool], what: str
) -> client.V1Pod:
    async def probe() -> client.V1Pod | None:
        pod = await core.read_namespaced_pod(name, NS)
        return pod if pred(pod) else None

    return await eventually(probe, what)


def terminated(pod: client.V1Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def docker_containers(pod_name: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_POD}={NS}/{pod_name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.split()


async def test_init_containers_run_in_order_then_main_with_logs_and_exit_codes(
    kube_cluster: KubeCluster,
) -> None:
    data = [{"name": "data", "mountPath": "/data", "subPath": "workspace"}]
    manifest = job(
        "ordered",
        [sh("main", "echo main; cat /data/order; exit 3", volumeMounts=data)],
        init=[
            sh("first", "echo first >> /data/order; echo one", volumeMounts=data),
            sh("second", "echo second >> /data/order; echo two >&2", volumeMounts=data),
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    async with kube_cluster.client() as api:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        await batch.create_namespaced_job(NS, manifest)
        pod = await job_pod(core, "ordered")
        assert pod.metadata.labels["controller-uid"] and pod.metadata.labels["app"] == "ordered"
        pod = await pod_where(core, pod.metadata.name, terminated, "the pod's end")
        assert pod.status.phase == "Failed"
        inits = [
            (s.name, s.state.terminated.exit_code, s.state.terminated.reason)
            for s in pod.status.init_container_statuses
        ]
        assert inits == [("first", 0, "Completed"), ("second", 0, "Completed")]
        (main,) = pod.status.container_statuses
        assert (main.name, main.state.terminated.exit_code, main.state.terminated.reason) == (
            "main",
            3,
            "Error",
        )
        logs = {
            c: await core.read_namespaced_pod_log(pod.metadata.name, NS, container=c)
            for c in ("first", "second", "main")
        }
        assert logs == {"first": "one\n", "second": "two\n", "main": "main\nfirst\nsecond\n"}

        async def failed() -> client.V1Job | None:
            j = await batch.list_namespaced_job(NS, label_selector="dev.corral.managed=true")
            conds = {c.type: c for c in j.items[0].status.conditions or []}
            return j.items[0] if "Failed" in conds else None

        done = await eventually(failed, "the Job's Failed condition")
        assert {c.type: c.reason for c in done.status.conditions}["Failed"] == "BackoffLimitExceeded"
        assert done.status.failed == 1
        await batch.delete_namespaced_job("ordered", NS, propagation_policy="Foreground")


async def test_first_failing_init_container_stops_the_pod(kube_cluster: KubeCluster) -> None:
    manifest = job("stops", [sh("main", "echo never")], init=[sh("bad", "exit 7"), sh("after", "echo never")])
    async with kube_cluster.client() as api:
        await client.BatchV1Api(api).create_namespaced_job(NS, manifest)
        core = client.CoreV1Api(api)
        pod = await pod_where(core, (await job_pod(core, "stops")).metadata.name, terminated, "the pod's end")
        bad, after = pod.status.init_container_statuses
        assert bad.state.terminated.exit_code == 7
        assert after.state.waiting.reason == "PodInitializing" and pod.status.phase == "Failed"
        assert pod.status.container_statuses[0].state.waiting is not None
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_pod_log(pod.metadata.name, NS, container="after")
        assert err.value.status == 400 and "is waiting to start" in json.loads(err.value.body)["message"]


async def test_unschedulable_pod_has_the_schedulers_condition_and_event(
    tmp_path: Path, docker_available: None
) -> None:
    node = Node(
        memory="1Gi",
        cpu="1",
        labels={"pool": "jobs"},
        taints=[{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}],
    )
    with run_cluster(tmp_path / "kube", node=node) as cluster:
        big = sh("main", "true", resources={"requests": {"memory": "2Gi"}})
        tolerate = [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}]
        async with cluster.client() as api:
            batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
            await batch.create_namespaced_job(NS, job("toobig", [big], tolerations=tolerate))
            await batch.create_namespaced_job(
                NS, job("elsewhere", [sh("main", "true")], tolerations=tolerate, nodeSelector={"pool": "gpu"})
            )
            await batch.create_namespaced_job(NS, job("tainted", [sh("main", "true")]))
            expected = {
                "toobig": "0/1 nodes are available: 1 Insufficient memory.",
                "elsewhere": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
                "tainted": "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: ci}.",
            }
            for name, message in expected.items():
                pod = await job_pod(core, name)

                def unschedulable(p: client.V1Pod) -> bool:
                    return any(
                        c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or []
                    )

                pod = await pod_where(core, pod.metadata.name, unschedulable, f"{name}'s PodScheduled=False")
                (cond,) = [c for c in pod.status.conditions if c.type == "PodScheduled"]
                assert (cond.reason, cond.message) == ("Unschedulable", message)
                assert pod.status.phase == "Pending" and not pod.spec.node_name
                events = await core.list_namespaced_event(
                    NS, field_selector=f"involvedObject.name={pod.metadata.name}"
                )
                assert [(e.reason, e.type, e.message) for e in events.items] == [
                    ("FailedScheduling", "Warning", message)
                ]
        cluster.check_clean()


async def test_missing_image_is_never_pulled_err_image_pull_then_back_off(kube_cluster: KubeCluster) -> None:
    missing = "corral/not-here:404"
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(
            NS, job("noimage", [{"name": "main", "image": missing}])
        )
        name = (await job_pod(core, "noimage")).metadata.name

        def waiting(reason: str) -> Callable[[client.V1Pod], bool]:
            def pred(p: client.V1Pod) -> bool:
                st = (p.status.container_statuses or [None])[0]
                return st is not None and st.state.waiting is not None and st.state.waiting.reason == reason

            return pred

        pod = await pod_where(core, name, waiting("ErrImagePull"), "ErrImagePull")
        assert pod.status.container_statuses[0].state.waiting.message == f'image "{missing}" not found'
        pod = await pod_where(core, name, waiting("ImagePullBackOff"), "ImagePullBackOff")
        assert pod.status.phase == "Pending"
        events = await core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name},type=Warning"
        )
        messages = {e.message for e in events.items}
        assert f'Failed to pull image "{missing}": image "{missing}" not found' in messages
        assert "Error: ErrImagePull" in messages
    inspect = subprocess.run(["docker", "image", "inspect", missing], capture_output=True, timeout=60)
    assert inspect.returncode != 0  # still not there: nothing pulled it


async def test_a_call_outside_the_role_is_forbidden_and_recorded(kube_cluster: KubeCluster) -> None:
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        secret = {"metadata": {"name": "job-secrets"}, "stringData": {"token": "t0ken"}}
        created = await core.create_namespaced_secret(NS, secret)  # allowed: secrets create
        assert created.metadata.name == "job-secrets"
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_secret("job-secrets", NS)  # not allowed: secrets get
        assert err.value.status == 403
        status = json.loads(err.value.body)
        assert status["kind"] == "Status" and status["reason"] == "Forbidden"
        assert 'cannot get resource "secrets"' in status["message"]
        with pytest.raises(ApiException) as err:
            await core.list_namespaced_pod("default")  # allowed verb, other namespace
        assert err.value.status == 403
        await core.list_namespaced_pod(NS)  # allowed
    violations = kube_cluster.take_violations()
    assert [(v.call.verb, v.call.resource, v.call.namespace) for v in violations] == [
        ("get", "secrets", NS),
        ("list", "pods", "default"),
    ]
    calls = kube_cluster.calls(kube_cluster.executor_user)
    assert [(c.verb, c.resource, c.status) for c in calls] == [
        ("create", "secrets", 201),
        ("get", "secrets", 403),
        ("list", "pods", 403),
        ("list", "pods", 200),
    ]


async def test_watch_from_the_lists_resource_version_sees_the_phases(kube_cluster: KubeCluster) -> None:
    async with kube_cluster.client() as api:
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        listed = await core.list_namespaced_pod(NS, label_selector="job-name=phases")
        assert listed.items == []
        await batch.create_namespaced_job(NS, job("phases", [sh("main", "sleep 1")]))
        seen: list[tuple[str, str]] = []
        w = watch.Watch()
        async with asyncio.timeout(WAIT_S):
            async for event in w.stream(
                core.list_namespaced_pod,
                NS,
                label_selector="job-name=phases",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=int(WAIT_S),
            ):
                phase = event["object"].status.phase
                if not seen or seen[-1] != (event["type"], phase):
                    seen.append((event["type"], phase))
                if phase in ("Succeeded", "Failed"):
                    w.stop()
        assert seen[0] == ("ADDED", "Pending")
        phases = [p for _, p in seen]
        assert phases.index("Running") < phases.index("Succeeded")
        assert phases[-1] == "Succeeded" and "Failed" not in phases
    watches = [c for c in kube_cluster.calls(kube_cluster.executor_user) if c.watch]
    assert [(c.resource, c.params.get("resourceVersion")) for c in watches] == [
        ("pods", listed.metadata.resource_version)
    ]


async def test_follow_log_streams_while_the_container_runs(kube_cluster: KubeCluster) -> None:
    script = "echo first; while [ ! -e /data/go ]; do sleep 0.1; done; echo second"
    mounts = [{"name": "data", "mountPath": "/data"}]
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(
            NS,
            job(
                "follow",
                [sh("main", script, volumeMounts=mounts)],
                volumes=[{"name": "data", "emptyDir": {}}],
            ),
        )
        pod = await job_pod(core, "follow")
        pod = await pod_where(core, pod.metadata.name, lambda p: p.status.phase == "Running", "Running")
        resp = await core.read_namespaced_pod_log(
            pod.metadata.name, NS, container="main", follow=True, _preload_content=False
        )
        got = b""
        async with asyncio.timeout(WAIT_S):
            while b"first\n" not in got:
                got += await resp.content.readany()
            # the container is still running (it waits for /data/go): the log came while it ran
            assert (await core.read_namespaced_pod(pod.metadata.name, NS)).status.phase == "Running"
            run = next(iter(kube_cluster.call(lambda: list(kube_cluster._parts["kubelet"].runs.values()))))
            (run.dir / "volumes" / "data" / "go").touch()
            got += await resp.content.read()
        resp.release()
        assert got == b"first\nsecond\n"


async def test_foreground_delete_removes_the_pod_and_its_containers(kube_cluster: KubeCluster) -> None:
    # the admin's client: the shipped Role has no watch of Jobs (the runtime never follows one)
    async with kube_cluster.client(admin=True) as api:
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        await batch.create_namespaced_job(NS, job("sleeper", [sh("main", "exec sleep 600")]))
        pod = await job_pod(core, "sleeper")
        name = pod.metadata.name
        await pod_where(core, name, lambda p: p.status.phase == "Running", "Running")
        assert len(docker_containers(name)) == 2  # the pause container and main
        listed = await batch.list_namespaced_job(NS)
        await batch.delete_namespaced_job("sleeper", NS, propagation_policy="Foreground")
        kinds: list[tuple[str, str]] = []
        w = watch.Watch()
        async with asyncio.timeout(WAIT_S):
            async for event in w.stream(
                batch.list_namespaced_job, NS, resource_version=listed.metadata.resource_version
            ):
                meta = event["object"].metadata
                kinds.append((event["type"], "deleting" if meta.deletion_timestamp else "live"))
                if event["type"] == "DELETED":
                    w.stop()
        assert kinds[0] == ("MODIFIED", "deleting") and kinds[-1][0] == "DELETED"
        assert "foregroundDeletion" not in (event["object"].metadata.finalizers or [])
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_pod(name, NS)
        assert err.value.status == 404  # the pod went before its Job
    assert docker_containers(name) == []


async def test_secret_volume_files_env_and_security(kube_cluster: KubeCluster) -> None:
    script = (
        "stat -c '%a %g' /secrets/tok; cat /secrets/tok; echo; echo $TOKEN $NODE; id -u; "
        "touch /rootfs-test 2>/dev/null && echo rw || echo ro; ls /secrets"
    )
    main = sh(
        "main",
        script,
        env=[
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "token"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        volumeMounts=[{"name": "sec", "mountPath": "/secrets"}],
        securityContext={
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    )
    volume = {
        "name": "sec",
        "secret": {"secretName": "s1", "defaultMode": 0o400, "items": [{"key": "token", "path": "tok"}]},
    }
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_secret(
            NS, {"metadata": {"name": "s1"}, "stringData": {"token": "abc", "other": "x"}}
        )
        await client.BatchV1Api(api).create_namespaced_job(NS, job("secrets", [main], volumes=[volume]))
        pod = await pod_where(core, (await job_pod(core, "secrets")).metadata.name, terminated, "the end")
        assert pod.status.phase == "Succeeded"
        log = await core.read_namespaced_pod_log(pod.metadata.name, NS)
        assert log.splitlines() == ["440 1000", "abc", f"abc {kube_cluster.node.name}", "1000", "ro", "tok"]


async def test_run_as_non_root_refuses_an_image_running_as_root(kube_cluster: KubeCluster) -> None:
    manifest = job("rootimage", [sh("main", "true")])
    manifest["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRoot": True}
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(NS, manifest)
        name = (await job_pod(core, "rootimage")).metadata.name

        def config_error(p: client.V1Pod) -> bool:
            st = (p.status.container_statuses or [None])[0]
            return (
                st is not None
                and st.state.waiting is not None
                and st.state.waiting.reason == "CreateContainerConfigError"
            )

        pod = await pod_where(core, name, config_error, "CreateContainerConfigError")
        assert (
            "runAsNonRoot and image will run as root"
            in pod.status.container_statuses[0].state.waiting.message
        )
    assert len(docker_containers(name)) == 1  # only the pause container: main was never made


async def test_sub_path_through_a_symlink_is_refused(kube_cluster: KubeCluster) -> None:
    """A container plants a symlink in the volume; a later container's subPath through it must not mount
    the host's directory it points to."""
    whole = [{"name": "data", "mountPath": "/vol"}]
    through = [{"name": "data", "mountPath": "/escape", "subPath": "evil"}]
    manifest = job(
        "subpath",
        [sh("main", "ls /escape", volumeMounts=through)],
        init=[sh("plant", "ln -s / /vol/evil", volumeMounts=whole)],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(NS, manifest)
        name = (await job_pod(core, "subpath")).metadata.name

        def refused(p: client.V1Pod) -> bool:
            st = (p.status.container_statuses or [None])[0]
            return (
                st is not None
                and st.state.waiting is not None
                and st.state.waiting.reason == "CreateContainerConfigError"
            )

        pod = await pod_where(core, name, refused, "the subPath refused")
        assert "symlink" in pod.status.container_statuses[0].state.waiting.message


async def test_job_deadline_fails_it_and_removes_its_pod(kube_cluster: KubeCluster) -> None:
    manifest = job("deadline", [sh("main", "exec sleep 600")])
    manifest["spec"]["activeDeadlineSeconds"] = 2
    async with kube_cluster.client() as api:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        await batch.create_namespaced_job(NS, manifest)
        name = (await job_pod(core, "deadline")).metadata.name

        async def failed() -> list[Any] | None:
            j = await batch.list_namespaced_job(NS)
            return [c for c in j.items[0].status.conditions or [] if c.type == "Failed"] or None

        (cond,) = await eventually(failed, "DeadlineExceeded")
        assert cond.reason == "DeadlineExceeded"

        async def gone() -> bool:
            return not (await core.list_namespaced_pod(NS, field_selector=f"metadata.name={name}")).items

        await eventually(gone, "the pod removed")
    assert docker_containers(name) == []


@pytest.fixture
def host_server() -> Iterator[int]:
    """A tiny HTTP server on the host's 127.0.0.1 (what the corral server is to pods)."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from the host {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


async def test_pods_reach_the_hosts_loopback_port_through_their_own_namespace(
    tmp_path: Path, docker_available: None, host_server: int
) -> None:
    script = f"wget -q -O - http://127.0.0.1:{host_server}/x; echo; grep -c : /proc/net/dev"
    with run_cluster(tmp_path / "kube", forward_ports=[host_server]) as cluster:
        async with cluster.client() as api:
            core = client.CoreV1Api(api)
            await client.BatchV1Api(api).create_namespaced_job(NS, job("reach", [sh("main", script)]))
            pod = await pod_where(core, (await job_pod(core, "reach")).metadata.name, terminated, "the end")
            log = await core.read_namespaced_pod_log(pod.metadata.name, NS)
            assert pod.status.phase == "Succeeded", log
            lines = log.splitlines()
            assert lines[0] == "hello from the host /x"
            assert lines[-1] == "1"  # only lo in the pod's namespace
        cluster.check_clean()
    with socket.socket() as s:  # the forwarder was in the pod's namespace, not on the host's port
        assert s.connect_ex(("127.0.0.1", host_server)) == 0


async def test_empty_dir_over_its_size_limit_evicts_the_pod(kube_cluster: KubeCluster) -> None:
    script = "dd if=/dev/zero of=/data/big bs=1024 count=3072 2>/dev/null; exec sleep 600"
    manifest = job(
        "evicted",
        [sh("main", script, volumeMounts=[{"name": "data", "mountPath": "/data"}])],
        volumes=[{"name": "data", "emptyDir": {"sizeLimit": "1Mi"}}],
    )
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(NS, manifest)
        pod = await pod_where(
            core, (await job_pod(core, "evicted")).metadata.name, terminated, "the eviction"
        )
        assert (pod.status.phase, pod.status.reason) == ("Failed", "Evicted")
        assert pod.status.message.startswith('Usage of EmptyDir volume "data" exceeds the limit "1Mi".')
        assert pod.status.container_statuses[0].state.terminated.exit_code == 137


async def test_a_pvc_is_shared_by_the_pods_of_two_jobs_and_kept_while_used(kube_cluster: KubeCluster) -> None:
    pvc = {
        "metadata": {"name": "ws"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    mount = [{"name": "ws", "mountPath": "/data", "subPath": "workspace"}]
    volumes = [{"name": "ws", "persistentVolumeClaim": {"claimName": "ws"}}]
    async with kube_cluster.client() as api:
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        await core.create_namespaced_persistent_volume_claim(NS, pvc)
        await batch.create_namespaced_job(
            NS, job("write", [sh("main", "echo answer 42 > /data/f", volumeMounts=mount)], volumes=volumes)
        )
        await pod_where(core, (await job_pod(core, "write")).metadata.name, terminated, "the writer's end")
        reader = sh("main", "cat /data/f; while [ ! -e /data/stop ]; do sleep 0.1; done", volumeMounts=mount)
        await batch.create_namespaced_job(NS, job("read", [reader], volumes=volumes))
        name = (await job_pod(core, "read")).metadata.name
        await pod_where(core, name, lambda p: p.status.phase == "Running", "the reader running")
        await core.delete_namespaced_persistent_volume_claim("ws", NS)
        claims = kube_cluster.objects("persistentvolumeclaims")
        assert [c["metadata"]["finalizers"] for c in claims] == [["kubernetes.io/pvc-protection"]]
        assert claims[0]["metadata"]["deletionTimestamp"]
        claim_dir = kube_cluster.root / "pvcs" / NS / "ws"
        (claim_dir / "workspace" / "stop").touch()
        pod = await pod_where(core, name, terminated, "the reader's end")
        assert pod.status.phase == "Succeeded"
        assert await core.read_namespaced_pod_log(name, NS) == "answer 42\n"

        async def claim_gone() -> bool:
            return not kube_cluster.objects("persistentvolumeclaims") and not claim_dir.exists()

        await eventually(claim_gone, "the claim and its directory removed once unused")


async def test_api_bounds_secrets_tokens_and_selectors(tmp_path: Path) -> None:
    """API-only (no kubelet): the Secret size limit as kube-apiserver's, the request body limit, list
    pagination and a bad selector."""
    with run_cluster(tmp_path / "kube", kubelet=False) as cluster:
        async with cluster.client() as api:
            core = client.CoreV1Api(api)
            near = {"metadata": {"name": "big"}, "data": {"k": base64.b64encode(b"x" * 1_000_000).decode()}}
            await core.create_namespaced_secret(
                NS, near
            )  # 1.33 MB of JSON: above aiohttp's default body limit
            over = {
                "metadata": {"name": "over"},
                "data": {"k": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()},
            }
            with pytest.raises(ApiException) as err:
                await core.create_namespaced_secret(NS, over)
            assert err.value.status == 422 and "Too long: must have at most 1048576 bytes" in err.value.body
            with pytest.raises(ApiException) as err:
                await core.list_namespaced_pod(NS, label_selector="a in (b")
            assert err.value.status == 400
            greedy = sh(
                "main", "true", resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}
            )
            invalid = {
                "too-long-" + "x" * 60: [sh("main", "true")],
                "badlimits": [greedy],
                "badquantity": [sh("main", "true", resources={"limits": {"cpu": "lots"}})],
                "badname": [sh("Main_1", "true")],
            }
            messages = {}
            for name, containers in invalid.items():
                with pytest.raises(ApiException) as err:
                    await client.BatchV1Api(api).create_namespaced_job(NS, job(name, containers))
                assert err.value.status == 422, name
                body = json.loads(err.value.body)
                assert body["reason"] == "Invalid"
                messages[name] = body["message"]
            assert "must be no more than 63 characters" in messages["too-long-" + "x" * 60]
            assert "must be less than or equal to memory limit of 1Gi" in messages["badlimits"]
            assert "spec.template.spec.containers[0].resources.limits[cpu]" in messages["badquantity"]
            assert "spec.template.spec.containers[0].name" in messages["badname"]
        async with cluster.client(admin=True) as api:
            core = client.CoreV1Api(api)
            for i in range(5):
                await core.create_namespaced_config_map(NS, {"metadata": {"name": f"cm{i}"}, "data": {}})
            page = await core.list_namespaced_config_map(NS, limit=2)
            names = [c.metadata.name for c in page.items]
            while page.metadata._continue:
                page = await core.list_namespaced_config_map(NS, limit=2, _continue=page.metadata._continue)
                names += [c.metadata.name for c in page.items]
            assert names == [f"cm{i}" for i in range(5)]
        cluster.check_clean()


async def test_a_request_without_a_token_is_401_and_a_violation(tmp_path: Path) -> None:
    with run_cluster(tmp_path / "kube", kubelet=False) as cluster:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{cluster.url}/api/v1/namespaces/{NS}/pods", timeout=10)
        assert err.value.code == 401
        (violation,) = cluster.take_violations()
        assert (violation.call.verb, violation.call.resource, violation.reason) == (
            "list",
            "pods",
            "no or unknown bearer token",
        )
        cluster.check_clean()


def test_sweep_removes_the_containers_of_dead_test_processes(docker_available: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = ["--label", f"{LABEL}=kkdead", "--label", f"{LABEL_PID}={dead.pid}"]
    cid = subprocess.run(
        ["docker", "create", "--network", "none", *labels, IMAGE, "true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    live = subprocess.run(
        [
            "docker",
            "create",
            "--network",
            "none",
            "--label",
            f"{LABEL}=kklive",
            "--label",
            f"{LABEL_PID}={os.getpid()}",
            IMAGE,
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    try:
        sweep_leftovers()
        left = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True, timeout=60
        ).stdout
        assert cid not in left and live in left
    finally:
        subprocess.run(["docker", "rm", "-f", cid, live], capture_output=True, timeout=60)


async def test_log_options_and_the_container_name_rule(kube_cluster: KubeCluster) -> None:
    two = job("logopts", [sh("main", "echo a; echo b; echo c"), sh("side", "true")])
    async with kube_cluster.client() as api:
        core = client.CoreV1Api(api)
        await client.BatchV1Api(api).create_namespaced_job(NS, two)
        name = (await job_pod(core, "logopts")).metadata.name
        await pod_where(core, name, terminated, "the end")
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_pod_log(name, NS)
        assert err.value.status == 400
        assert "a container name must be specified" in json.loads(err.value.body)["message"]
        assert await core.read_namespaced_pod_log(name, NS, container="main", tail_lines=2) == "b\nc\n"
        assert await core.read_namespaced_pod_log(name, NS, container="main", limit_bytes=3) == "a\nb"
        stamped = await core.read_namespaced_pod_log(name, NS, container="main", timestamps=True)
        assert [line.split(" ", 1)[1] for line in stamped.splitlines()] == ["a", "b", "c"]
        assert all(line.split(" ", 1)[0].endswith("Z") for line in stamped.splitlines())


async def test_a_watch_from_a_forgotten_resource_version_is_410(tmp_path: Path) -> None:
    with run_cluster(tmp_path / "kube", kubelet=False) as cluster:
        assert cluster.api is not None
        cluster.call(setattr, cluster.api, "_history", collections.deque(maxlen=3))
        async with cluster.client(admin=True) as api:
            core = client.CoreV1Api(api)
            start = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            for i in range(5):
                await core.create_namespaced_config_map(NS, {"metadata": {"name": f"cm{i}"}})
            w = watch.Watch()
            with pytest.raises(ApiException) as err:
                async for _ in w.stream(
                    core.list_namespaced_config_map, NS, resource_version=start, timeout_seconds=10
                ):
                    pass
            assert err.value.status == 410
            recent = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "late"}})
            names = []
            async for event in watch.Watch().stream(
                core.list_namespaced_config_map, NS, resource_version=recent, timeout_seconds=1
            ):
                names.append((event["type"], event["object"].metadata.name))
            assert names == [("ADDED", "late")]
        cluster.check_clean()
