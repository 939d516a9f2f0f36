"""End to end, the kubernetes runtime: a real corral server, a real `corral executor run` process
with EXECUTOR_RUNTIME=kubernetes, and the stand-in cluster (tests/kubekit: the API server enforcing
the shipped Role, a Job controller, a scheduler and a kubelet running each pod's containers in the
Docker Engine, each pod in its own network namespace with a forwarder to the corral server).

Every test fails on any call outside the Role (the `kube` fixture checks the stand-in's violations
at teardown). A real-cluster test runs when CORRAL_TEST_KUBECONFIG names a kubeconfig."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.embedded import free_port
from corral.executor.runtimes.base import LABEL_JOB, LABEL_MANAGED, LABEL_OWNER
from tests.conftest import docker_ok, require
from tests.e2e.kit import (
    CORRAL,
    Server,
    executor_env,
    logs_text,
    make_repo,
    run_server,
    start_executor,
    stop_executor,
    wait_job,
    wait_log,
)

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX, TOOLS, CORRAL_IMAGE = "corral/busybox:1", "corral/tools:1", "corral/corral:1"
JOB_TIMEOUT = 120  # seconds for one job (pods start containers in the Docker Engine, under load)


@dataclass
class Kube:
    server: Server
    cluster: Any  # tests.kubekit.KubeCluster
    tmp: Path
    repo: str

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "EXECUTOR_KUBERNETES_CONFIG_PATH": str(self.cluster.executor_kubeconfig),
            "EXECUTOR_KUBERNETES_NAMESPACE": self.cluster.namespace,
            "EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT": "20s",
            "EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT": "20s",
            "KUBERNETES_JOB_DEADLINE": "300",
        }
        base.update(extra)
        return base

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        return start_executor(self.server, self.tmp, "kubernetes", **self.env(**extra))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.cluster.objects("jobs", "batch"))

    def pods(self) -> list[dict[str, Any]]:
        return list(self.cluster.objects("pods"))


def _image_label() -> str:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "dev.corral.image.inputs"}}',
         CORRAL_IMAGE],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def images() -> None:
    """The local images, with corral/corral:1 built from the current tree (its podside runs the pods'
    setup and main containers; build-images.sh rebuilds it only when its inputs changed)."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    digest = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "corral-image.py"), "digest"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    if _image_label() != digest:
        build = ["bash", str(ROOT / "scripts" / "build-images.sh")]
        done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
    found = subprocess.run(
        ["docker", "image", "inspect", BUSYBOX, TOOLS, CORRAL_IMAGE], capture_output=True, timeout=60
    )
    require(found.returncode == 0, f"images {BUSYBOX}, {TOOLS}, {CORRAL_IMAGE} (scripts/build-images.sh)")


@pytest.fixture
def kube(tmp_path: Path, images: None) -> Iterator[Kube]:
    with _kube(tmp_path) as k:
        yield k


@contextlib.contextmanager
def _kube(tmp_path: Path, **server: Any) -> Iterator[Kube]:
    from tests.kubekit import run_cluster

    with run_server(tmp_path, **server) as server:
        port = int(server.url.rsplit(":", 1)[-1])
        make_repo(tmp_path / "src", {"README.md": "hello\n", "src/app.txt": "one\n"})
        server.client.add_repo("acme/app", str(tmp_path / "src"))
        with run_cluster(tmp_path / "cluster", forward_ports=[port]) as cluster:
            yield Kube(server, cluster, tmp_path, "acme/app")
            for p in server.executors:
                stop_executor(p)
            violations = cluster.violations()
            assert not violations, f"calls outside the shipped Role: {violations}"
            assert not cluster.server_errors(), cluster.server_errors()


def _entries(kube: Kube, job_id: int) -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in kube.server.client.logs(job_id)["entries"]}


def _gone(kube: Kube, label: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        objects = [*kube.jobs(), *kube.pods()]
        left = [o["metadata"]["name"] for o in objects if o["metadata"]["labels"].get(LABEL_JOB) == label]
        if not left:
            return
        assert time.monotonic() < deadline, f"still there after {timeout}s: {left}"
        time.sleep(0.2)


def _two_images_and_a_cli_step(repo: str) -> dict[str, Any]:
    return {
        "repositoryName": repo,
        "dockerSteps": [
            {"image": BUSYBOX, "commands": ["echo from-busybox > a.txt", "cat README.md"], "env": ["G=hi"]},
            {"image": TOOLS, "commands": ['echo "$G from-tools" >> a.txt', "cat a.txt"], "env": ["G=yo"]},
        ],
        "cliSteps": [{"key": "ver", "command": ["version"]}],
        "outputs": ["a.txt"],
    }


def _check_two_images_job(kube: Kube, job_id: int) -> None:
    done = wait_job(kube.server, job_id, timeout=JOB_TIMEOUT)
    assert done["state"] == "completed", (done, logs_text(kube.server, job_id))
    assert done["exitCodes"] == [0, 0, 0]
    entries = _entries(kube, job_id)
    # the clone's entries are the host's (podside runs the host's git commands in the pod)
    wanted = {"setup.kubernetes.pod", "setup.git.fetch", "setup.git.checkout", "step.docker.0"}
    assert {*wanted, "step.src.ver"} <= set(entries), list(entries)
    assert entries["setup.git.fetch"]["exitCode"] == 0
    assert "hello" in entries["step.docker.0"]["out"]  # the clone reached the step's /data
    assert "yo from-tools" in entries["step.docker.1"]["out"]
    assert "0.1.0" in entries["step.src.ver"]["out"]  # corral's CLI ran in the pod
    assert all(entries[k]["exitCode"] == 0 for k in ("step.docker.0", "step.docker.1", "step.src.ver"))
    assert "phases: queued" in entries["setup.kubernetes.pod"]["out"]
    result = kube.server.client.result(job_id)
    assert "a.txt" in result["diff"] and "+from-busybox" in result["diff"]
    assert base64.b64decode(result["files"]["a.txt"]) == b"from-busybox\nyo from-tools\n"


def test_single_pod_job_two_images_and_a_cli_step(kube: Kube) -> None:
    kube.start()
    job = kube.server.client.submit("batches", _two_images_and_a_cli_step(kube.repo))
    _check_two_images_job(kube, job["id"])
    _gone(kube, f"batches-{job['id']}")  # the Job and its pod are deleted after completion
    # one pod for the whole job, watched, never polled
    calls = kube.cluster.calls(kube.cluster.executor_user)
    creates = [c for c in calls if c.verb == "create" and c.resource == "jobs"]
    assert len(creates) == 1
    assert not [c for c in kube.cluster.objects("secrets") if c["metadata"]["labels"].get(LABEL_MANAGED)]


def test_multi_pod_job_on_a_pvc(kube: Kube) -> None:
    kube.start(KUBERNETES_SINGLE_JOB_POD="false", KUBERNETES_JOB_VOLUME_TYPE="pvc")
    job = kube.server.client.submit("batches", _two_images_and_a_cli_step(kube.repo))
    _check_two_images_job(kube, job["id"])
    calls = kube.cluster.calls(kube.cluster.executor_user)
    assert len([c for c in calls if c.verb == "create" and c.resource == "jobs"]) == 3  # one per step
    assert [c for c in calls if c.verb == "create" and c.resource == "persistentvolumeclaims"]
    _gone(kube, f"batches-{job['id']}")
    assert not kube.cluster.objects("persistentvolumeclaims")


def test_step_output_is_redacted_and_secrets_stay_out_of_the_pod_spec(kube: Kube) -> None:
    secret = "hunter2-very-secret-value"
    b64 = base64.b64encode(secret.encode()).decode()
    kube.start(KUBERNETES_KEEP_JOBS="true")  # the pod stays, to read its spec back
    commands = [
        "set +x",
        f"printf '{secret[:9]}'; sleep 0.7; printf '{secret[9:]}\\n'",  # split across two reads
        f"echo {b64}",
        'echo "env: $MY_SECRET"',
    ]
    step = {"image": BUSYBOX, "commands": commands, "env": [f"MY_SECRET={secret}"]}
    spec = {"dockerSteps": [step], "redactedValues": {secret: "[SECRET]"}}
    job = kube.server.client.submit("batches", spec)
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "completed", (done, logs_text(kube.server, job["id"]))
    text = logs_text(kube.server, job["id"])
    assert text.count("[SECRET]") >= 3, text
    assert secret not in text and secret[9:] not in text and b64[:20] not in text
    pods = [p for p in kube.pods() if p["metadata"]["labels"].get(LABEL_JOB) == f"batches-{job['id']}"]
    assert pods and all(secret not in json.dumps(p) for p in pods)
    jobs = [j for j in kube.jobs() if j["metadata"]["labels"].get(LABEL_JOB) == f"batches-{job['id']}"]
    assert jobs and all(secret not in json.dumps(j) for j in jobs)


def test_a_failing_step_stops_the_job_with_its_exit_code(kube: Kube) -> None:
    kube.start()
    job = kube.server.client.submit(
        "batches",
        {
            "repositoryName": kube.repo,
            "dockerSteps": [
                {"image": BUSYBOX, "commands": ["echo before", "exit 3"]},
                {"image": BUSYBOX, "commands": ["echo never"]},
            ],
        },
    )
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", done
    assert "step.docker.0 failed with exit code 3" in (done.get("error") or ""), done
    assert done["exitCodes"] == [3]
    entries = _entries(kube, job["id"])
    assert entries["step.docker.0"]["exitCode"] == 3 and "before" in entries["step.docker.0"]["out"]
    assert "step.docker.1" not in entries
    _gone(kube, f"batches-{job['id']}")


def test_a_step_out_of_memory_is_reported_as_such(kube: Kube) -> None:
    kube.start(EXECUTOR_JOB_MEMORY="128M")  # every container's limit (setup and main run Python)
    hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}"
    job = kube.server.client.submit("batches", {"dockerSteps": [{"image": BUSYBOX, "commands": [hog]}]})
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", (done, logs_text(kube.server, job["id"]))
    assert "out of memory (limit 128 MiB)" in done["error"] and done["outcome"] == "oom", done
    _gone(kube, f"batches-{job['id']}")


def test_scheduling_settings_reach_the_pod_spec(kube: Kube) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "corral", "effect": "NoSchedule"}
    expression = {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
    kube.start(
        EXECUTOR_KUBERNETES_NODE_SELECTOR="kubernetes.io/os=linux",
        EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS=json.dumps([expression]),
        EXECUTOR_KUBERNETES_NODE_TOLERATIONS=json.dumps([toleration]),
        EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME="gvisor",
        KUBERNETES_KEEP_JOBS="true",
    )
    step = {"image": BUSYBOX, "commands": ["echo ok"], "env": ["SECRET_ENV=s3cr3t-v4lue"]}
    job = kube.server.client.submit("batches", {"dockerSteps": [step]})
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "completed", (done, logs_text(kube.server, job["id"]))
    pods = [p for p in kube.pods() if p["metadata"]["labels"].get(LABEL_JOB) == f"batches-{job['id']}"]
    assert len(pods) == 1  # kept (KUBERNETES_KEEP_JOBS), read back from the API
    spec = pods[0]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [{"matchExpressions": [expression]}]
    assert toleration in spec["tolerations"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    labels = pods[0]["metadata"]["labels"]
    assert labels[LABEL_OWNER] == executor_env(kube.server, kube.tmp, "kubernetes")["EXECUTOR_VM_PREFIX"]
    assert "s3cr3t-v4lue" not in json.dumps(pods[0])  # step env only by secretKeyRef
    for c in spec["initContainers"] + spec["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_jobs_registry_credentials_become_the_pods_pull_secret(kube: Kube) -> None:
    password = "pull-pa55word-for-the-registry"
    auth = {"auths": {"127.0.0.1:5999": {"auth": base64.b64encode(f"puller:{password}".encode()).decode()}}}
    kube.start()
    step = {"image": BUSYBOX, "commands": ["echo started", "sleep 4"]}
    job = kube.server.client.submit("batches", {"dockerSteps": [step], "dockerAuthConfig": auth})
    wait_log(kube.server, job["id"], "started", timeout=JOB_TIMEOUT)
    label = f"batches-{job['id']}"
    pod = next(p for p in kube.pods() if p["metadata"]["labels"].get(LABEL_JOB) == label)
    names = [s["name"] for s in pod["spec"].get("imagePullSecrets") or []]
    assert len(names) == 1 and names[0].endswith("-registry"), names
    secret = next(s for s in kube.cluster.objects("secrets") if s["metadata"]["name"] == names[0])
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert json.loads(base64.b64decode(secret["data"][".dockerconfigjson"])) == auth
    assert password not in json.dumps(pod)  # only the kubelet's pull reads it
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "completed", (done, logs_text(kube.server, job["id"]))
    _gone(kube, label)
    assert names[0] not in {s["metadata"]["name"] for s in kube.cluster.objects("secrets")}


def test_an_invalid_setting_stops_the_executor_at_start(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        env = executor_env(
            server,
            tmp_path,
            "kubernetes",
            EXECUTOR_KUBERNETES_NODE_TOLERATIONS='[{"key": "a", "operator": "Sometimes"}]',
            EXECUTOR_KUBERNETES_CONFIG_PATH=str(tmp_path / "none.yaml"),
        )
        done = subprocess.run([CORRAL, "executor", "run"], env=env, capture_output=True, timeout=60)
        assert done.returncode != 0
        out = (done.stdout + done.stderr).decode()
        assert "EXECUTOR_KUBERNETES_NODE_TOLERATIONS" in out, out


def test_validate_says_what_is_wrong(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        missing = str(tmp_path / "no.yaml")
        env = executor_env(server, tmp_path, "kubernetes", EXECUTOR_KUBERNETES_CONFIG_PATH=missing)
        done = subprocess.run([CORRAL, "executor", "validate"], env=env, capture_output=True, timeout=60)
        out = (done.stdout + done.stderr).decode()
        assert done.returncode != 0 and "no kubeconfig at" in out, out


def test_an_unschedulable_pod_fails_the_job_with_the_schedulers_reason(kube: Kube) -> None:
    kube.start(EXECUTOR_JOB_MEMORY="64G", EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT="3s")
    job = kube.server.client.submit("batches", {"dockerSteps": [{"image": BUSYBOX, "commands": ["echo hi"]}]})
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", done
    message = done.get("error") or ""
    assert "could not be scheduled within 3s" in message and "Insufficient memory" in message, message
    assert "Insufficient memory" in _entries(kube, job["id"])["setup.kubernetes.pod"]["out"]
    _gone(kube, f"batches-{job['id']}")


def test_an_image_that_cannot_be_pulled_fails_the_job_with_the_reason(kube: Kube) -> None:
    kube.start(EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT="3s")
    job = kube.server.client.submit(
        "batches", {"dockerSteps": [{"image": "corral/no-such-image:1", "commands": ["echo hi"]}]}
    )
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", done
    message = done.get("error") or ""
    assert "corral/no-such-image:1" in message and "not found" in message, message
    assert "EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT" in message
    assert _entries(kube, job["id"])["step.docker.0"]["exitCode"] == -1
    _gone(kube, f"batches-{job['id']}")


def test_cancel_deletes_the_job_and_its_pod(kube: Kube) -> None:
    kube.start()
    step = {"image": BUSYBOX, "commands": ["echo started", "sleep 120"]}
    job = kube.server.client.submit("batches", {"dockerSteps": [step]})
    wait_log(kube.server, job["id"], "started", timeout=JOB_TIMEOUT)
    label = f"batches-{job['id']}"
    assert [j for j in kube.jobs() if j["metadata"]["labels"].get(LABEL_JOB) == label]
    kube.server.client.cancel(job["id"])
    done = wait_job(kube.server, job["id"], timeout=30)
    assert done["state"] == "canceled", done
    _gone(kube, label, timeout=30)
    calls = kube.cluster.calls(kube.cluster.executor_user)
    assert [c for c in calls if c.verb == "delete" and c.resource == "jobs"]


def test_the_jobs_timeout_deletes_the_job(kube: Kube) -> None:
    kube.start(EXECUTOR_MAXIMUM_RUNTIME_PER_JOB="8s")
    step = {"image": BUSYBOX, "commands": ["echo started", "sleep 120"]}
    job = kube.server.client.submit("batches", {"dockerSteps": [step]})
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", done
    assert done["error"] == "job exceeded maximum execution time of 8s", done
    _gone(kube, f"batches-{job['id']}", timeout=30)


def test_kubernetes_job_deadline_fails_the_job_as_a_timeout(kube: Kube) -> None:
    kube.start(KUBERNETES_JOB_DEADLINE="6")
    step = {"image": BUSYBOX, "commands": ["echo started", "sleep 120"]}
    job = kube.server.client.submit("batches", {"dockerSteps": [step]})
    done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
    assert done["state"] == "failed", done
    assert "ran past KUBERNETES_JOB_DEADLINE (6s)" in (done.get("error") or ""), done
    _gone(kube, f"batches-{job['id']}", timeout=30)


def test_validate_names_a_namespace_the_executor_may_not_use(tmp_path: Path, images: None) -> None:
    from corral.executor.runtimes.kubernetes import rbac
    from tests.kubekit import run_cluster

    role = rbac.role_manifest()
    for rule in role["rules"]:
        if "jobs" in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "list"]
    with run_server(tmp_path) as server, run_cluster(tmp_path / "cluster", role=role) as cluster:
        env = executor_env(
            server,
            tmp_path,
            "kubernetes",
            EXECUTOR_KUBERNETES_CONFIG_PATH=str(cluster.executor_kubeconfig),
            EXECUTOR_KUBERNETES_NAMESPACE=cluster.namespace,
        )
        done = subprocess.run([CORRAL, "executor", "validate"], env=env, capture_output=True, timeout=60)
        out = (done.stdout + done.stderr).decode()
        assert done.returncode != 0, out
        assert f"may not list batch/v1 Jobs in namespace {cluster.namespace}" in out, out
        assert "role.yaml" in out
        assert [v for v in cluster.take_violations() if v.call.resource == "jobs"]  # the 403 was real


def test_validate_says_when_the_api_cannot_be_reached(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    with run_server(tmp_path) as server:
        env = executor_env(server, tmp_path, "kubernetes", EXECUTOR_KUBERNETES_CONFIG_PATH=str(config))
        done = subprocess.run([CORRAL, "executor", "validate"], env=env, capture_output=True, timeout=60)
        out = (done.stdout + done.stderr).decode()
        assert done.returncode != 0 and f"127.0.0.1:{port} cannot be reached" in out, out


def test_janitor_deletes_jobs_of_no_live_lease_and_only_its_owners(kube: Kube) -> None:
    from tests.kubekit.apiserver import KINDS

    owner = executor_env(kube.server, kube.tmp, "kubernetes")["EXECUTOR_VM_PREFIX"]

    def orphan(name: str, owner: str) -> dict[str, Any]:
        labels = {LABEL_MANAGED: "true", LABEL_OWNER: owner, LABEL_JOB: "batches-999"}
        container = {"name": "c", "image": BUSYBOX, "command": ["sleep", "300"]}
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": [container]},
                },
            },
        }

    ns, jobs = kube.cluster.namespace, KINDS[("batch", "jobs")]
    kube.cluster.call(kube.cluster.api.create, jobs, ns, orphan("corral-left-behind", owner))
    kube.cluster.call(kube.cluster.api.create, jobs, ns, orphan("someone-elses", "other-owner"))
    kube.start()
    deadline = time.monotonic() + 30
    while "corral-left-behind" in {j["metadata"]["name"] for j in kube.jobs()}:
        assert time.monotonic() < deadline, "the janitor left the orphaned Job"
        time.sleep(0.2)
    assert "someone-elses" in {j["metadata"]["name"] for j in kube.jobs()}
    # a live job's Job is never swept
    job = kube.server.client.submit("batches", {"dockerSteps": [{"image": BUSYBOX, "commands": ["echo ok"]}]})
    assert wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)["state"] == "completed"


LINES = 40  # lines the reattached step prints, one every 0.25 s


def test_after_kill_9_an_executor_of_the_same_name_reattaches_the_job(tmp_path: Path, images: None) -> None:
    """kill -9 of the executor mid-step; a new executor with the same EXECUTOR_NAME and
    EXECUTOR_VM_PREFIX takes the attempt back from the server (reattach) and follows the same Job:
    the job completes on attempt 1 with its whole log (each line once), one result, the Job gone."""
    with _kube(tmp_path, stalled_after=20.0) as kube:
        name = f"reattach-{os.getpid()}"
        first = kube.start(EXECUTOR_NAME=name)
        count = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.25; done"
        steps = [
            {"image": BUSYBOX, "commands": ["echo first step; echo hunter2"]},
            {"image": BUSYBOX, "commands": [count, "echo hunter2 > out.txt"]},
        ]
        spec = {"dockerSteps": steps, "redactedValues": {"hunter2": "PASSWORD"}, "outputs": ["out.txt"]}
        job = kube.server.client.submit("batches", spec)
        wait_log(kube.server, job["id"], "line 3\n", timeout=JOB_TIMEOUT)
        label = f"batches-{job['id']}"
        old = {j["metadata"]["name"] for j in kube.jobs() if j["metadata"]["labels"][LABEL_JOB] == label}
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert f"line {LINES}\n" not in logs_text(kube.server, job["id"])  # killed mid-step
        kube.start(EXECUTOR_NAME=name)
        done = wait_job(kube.server, job["id"], timeout=JOB_TIMEOUT)
        assert done["state"] == "completed", (done, logs_text(kube.server, job["id"]))
        assert done["attempt"] == 1 and done["numResets"] == 0 and done["exitCodes"] == [0, 0]
        entries = kube.server.client.logs(job["id"])["entries"]
        by_key: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            by_key.setdefault(e["key"], []).append(e)
        assert {k: len(v) for k, v in by_key.items() if k.startswith("step.")} == {
            "step.docker.0": 1,
            "step.docker.1": 1,
        }, by_key.keys()
        def printed(out: str) -> list[str]:  # the step's own lines, without the shell's xtrace
            return [line for line in out.splitlines() if not line.startswith("+")]

        assert printed(by_key["step.docker.0"][0]["out"]) == ["first step", "PASSWORD"]
        counted = by_key["step.docker.1"][0]
        out = counted["out"]
        assert printed(out) == [f"line {i}" for i in range(1, LINES + 1)], out  # each once, in order
        traced = [line for line in out.splitlines() if line.startswith("+ echo line")]
        assert traced == [f"+ echo line {i}" for i in range(1, LINES + 1)], out
        assert out.endswith("+ echo PASSWORD\n") and counted["exitCode"] == 0, out
        pod = by_key["setup.kubernetes.pod"]
        assert len(pod) == 1 and pod[0]["exitCode"] == 0 and "reattached to pod" in pod[0]["out"]
        assert "corral.attempt" not in by_key  # no attempt was lost
        result = kube.server.client.result(job["id"])
        assert base64.b64decode(result["files"]["out.txt"]) == b"PASSWORD\n"  # the redactor has its secret
        _gone(kube, label)
        assert not old & {j["metadata"]["name"] for j in kube.jobs()}


def test_a_job_whose_lease_is_gone_is_deleted_not_reattached(tmp_path: Path, images: None) -> None:
    """The same executor name, but the job was canceled while no executor ran: the new executor's
    reattach is refused (409) and its janitor deletes the Job."""
    with _kube(tmp_path, stalled_after=20.0) as kube:
        name = f"refused-{os.getpid()}"
        first = kube.start(EXECUTOR_NAME=name)
        step = {"image": BUSYBOX, "commands": ["echo started", "sleep 600"]}
        job = kube.server.client.submit("batches", {"dockerSteps": [step]})
        wait_log(kube.server, job["id"], "started", timeout=JOB_TIMEOUT)
        label = f"batches-{job['id']}"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        kube.server.client.cancel(job["id"])  # its executor is gone: the lease ends canceled
        kube.start(EXECUTOR_NAME=name)
        _gone(kube, label, timeout=60)
        log = (kube.tmp / f"executor-{len(kube.server.executors) - 1}.log").read_text()
        assert "no longer gives job" in log, log
        assert wait_job(kube.server, job["id"], timeout=60)["state"] == "canceled"


def test_after_kill_9_the_next_executor_deletes_the_old_job_and_the_job_runs_again(
    tmp_path: Path, images: None
) -> None:
    """Another executor name (EXECUTOR_NAME unset: a new uuid each start), so no reattach: a
    killed executor's Job is deleted by the janitor of the executor that starts after it (same
    EXECUTOR_VM_PREFIX), and the server requeues the job."""
    with _kube(tmp_path, stalled_after=3.0) as kube:
        first = kube.start()
        step = {"image": BUSYBOX, "commands": ["echo started", "sleep 600"]}
        job = kube.server.client.submit("batches", {"dockerSteps": [step]})
        wait_log(kube.server, job["id"], "started", timeout=JOB_TIMEOUT)
        label = f"batches-{job['id']}"
        old = {j["metadata"]["name"] for j in kube.jobs() if j["metadata"]["labels"][LABEL_JOB] == label}
        assert len(old) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        kube.start()  # its janitor runs at start, before any job of its own
        deadline = time.monotonic() + 60
        while old & {j["metadata"]["name"] for j in kube.jobs()}:
            assert time.monotonic() < deadline, "the old Job is still there"
            time.sleep(0.2)
        # the server requeues the stalled job: the new executor takes it as attempt 2, in a Job of its own
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            jobs = kube.jobs()
            names = {j["metadata"]["name"] for j in jobs if j["metadata"]["labels"][LABEL_JOB] == label}
            if names - old:
                break
            assert time.monotonic() < deadline, "the job never ran again"
            time.sleep(0.2)
        assert kube.server.client.get(job["id"])["state"] == "processing"
        kube.server.client.cancel(job["id"])
        assert wait_job(kube.server, job["id"], timeout=30)["state"] == "canceled"


def test_a_real_cluster_when_one_is_configured(tmp_path: Path) -> None:
    """A job with a clone, a step and a diff on the cluster of CORRAL_TEST_KUBECONFIG. Its pods must
    reach this test's server at CORRAL_TEST_FRONTEND_URL (e.g. through `kubectl port-forward` or a
    tunnel to 127.0.0.1), and pull CORRAL_TEST_STEP_IMAGE (a shell image) and CORRAL_TEST_CORRAL_IMAGE
    (corral/corral:1 pushed where the cluster pulls from). Skipped when no cluster is configured, in
    CI too: none can run on these machines."""
    config = os.environ.get("CORRAL_TEST_KUBECONFIG", "")
    if not config:
        pytest.skip("no real cluster configured (CORRAL_TEST_KUBECONFIG, CORRAL_TEST_FRONTEND_URL, ...)")
    image = os.environ["CORRAL_TEST_STEP_IMAGE"]
    with run_server(tmp_path) as server:
        make_repo(tmp_path / "src", {"README.md": "hello\n"})
        server.client.add_repo("acme/app", str(tmp_path / "src"))
        start_executor(
            server,
            tmp_path,
            "kubernetes",
            EXECUTOR_KUBERNETES_CONFIG_PATH=config,
            EXECUTOR_KUBERNETES_NAMESPACE=os.environ.get("CORRAL_TEST_NAMESPACE", "default"),
            EXECUTOR_KUBERNETES_FRONTEND_URL=os.environ["CORRAL_TEST_FRONTEND_URL"],
            KUBERNETES_SINGLE_JOB_STEP_IMAGE=os.environ["CORRAL_TEST_CORRAL_IMAGE"],
        )
        steps = [{"image": image, "commands": ["echo real >> README.md"]}]
        job = server.client.submit("batches", {"repositoryName": "acme/app", "dockerSteps": steps})
        done = wait_job(server, job["id"], timeout=600)
        assert done["state"] == "completed", (done, logs_text(server, job["id"]))
        assert "+real" in server.client.result(job["id"])["diff"]
