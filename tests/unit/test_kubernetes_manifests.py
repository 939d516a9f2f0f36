"""manifests.py: the objects of one job attempt. Every setting reaches the pod spec, the pod is locked
down, names are valid DNS-1123 labels whatever the queue, the Secret is bounded, and no secret value
(token, step env, file content, CA) is anywhere in a Job."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import models

from corral.executor.plan import CloneSpec, JobPlan
from corral.executor.runtimes.base import LABEL_JOB, LABEL_MANAGED, LABEL_OWNER, META_MOUNT, JobSpace, Step
from corral.executor.runtimes.kubernetes import manifests, podside
from corral.executor.runtimes.kubernetes.manifests import (
    MAX_SECRET,
    JobObjects,
    ManifestError,
    companions,
    job_labels,
    job_names,
    job_objects,
    label_value,
    live_labels,
    owner_selector,
)
from corral.executor.runtimes.kubernetes.shapes import check_shape
from corral.executor.settings import ExecutorSettings

TOKEN = "tok-3f9a1c77d2b84e06a5c1"
ENV_SECRET = "env-secret-Zq81Lm"
FILE_SECRET = b"file-secret-Pw72Kx"
CA = b"-----BEGIN CERTIFICATE-----\nCA-Kq19Xv\n-----END CERTIFICATE-----\n"
GOOD = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "Vx3kq9Lw2RzT7mN4pB8dYc1F",
    "EXECUTOR_QUEUE_NAME": "batches",
    "EXECUTOR_RUNTIME": "kubernetes",
    "EXECUTOR_NAME": "exec-host-1",
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@dataclass
class Staged:
    token: str = TOKEN
    clone: CloneSpec | None = field(
        default_factory=lambda: CloneSpec("acme/api", "deadbeef", shallow_clone=True)
    )
    repository_directory: str = ""
    files: dict[str, bytes] = field(default_factory=lambda: {"conf/app.json": FILE_SECRET})
    scripts: dict[str, str] = field(
        default_factory=lambda: {"step-0.sh": "set -x\nmake\n", "step-1.sh": "ls\n"}
    )


def executor(**env: str) -> ExecutorSettings:
    return ExecutorSettings.from_env({**GOOD, **env})


def space(queue: str = "batches", job_id: int = 42, attempt: int = 2, **kw: Any) -> JobSpace:
    return JobSpace(
        job_id=job_id,
        queue=queue,
        root=Path("/nonexistent/job"),
        workspace=Path("/nonexistent/job/workspace"),
        executor_name=kw.pop("executor_name", "exec-host-1"),
        owner=kw.pop("owner", "executor"),
        attempt=attempt,
        **kw,
    )


STEPS = (
    Step("step.docker.0", "docker", 0, "corral/tools:1", ("/bin/sh", "/.corral-steps/step-0.sh"), "sub/dir",
         {"API_KEY": ENV_SECRET, "LANG": "C.UTF-8"}),
    Step("step.docker.fmt", "docker", 1, "corral/busybox:1", ("/bin/sh", "/.corral-steps/step-1.sh")),
    Step("step.src.2", "cli", 2, None, ("/opt/venv/bin/corral", "version"), "", {"TOKENISH": ENV_SECRET}),
)


def plan(steps: tuple[Step, ...] = STEPS, **kw: Any) -> JobPlan:
    fields: dict[str, Any] = {
        "scripts": {"step-0.sh": "", "step-1.sh": ""},
        "repository": "acme/api",
        "commit": "deadbeef",
        "clone": CloneSpec("acme/api", "deadbeef", shallow_clone=True),
        "outputs": ("out/report.json",),
    }
    return JobPlan(job_id=42, queue="batches", steps=steps, **{**fields, **kw})


def build(env: dict[str, str] | None = None, staged: Staged | None = None, **kw: Any) -> JobObjects:
    ex = executor(**(env or {}))
    the_space, the_plan = kw.pop("space", space()), kw.pop("plan", plan())
    return job_objects(ex.kubernetes, ex, the_space, the_plan, staged or Staged())


def pod(objects: JobObjects, i: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = objects.jobs[i]["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_data(objects: JobObjects) -> dict[str, bytes]:
    kind, secret = objects.first[0]
    assert kind == "secrets"
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


# -- shape ----------------------------------------------------------------------------------------------
def test_the_objects_have_the_shapes_of_the_kubernetes_models() -> None:
    objects = build({"KUBERNETES_JOB_VOLUME_TYPE": "pvc"})
    for job in objects.jobs:
        check_shape(job, "V1Job", "job")
    kinds = {kind: body for kind, body in objects.first}
    check_shape(kinds["secrets"], "V1Secret", "secret")
    check_shape(kinds["persistentvolumeclaims"], "V1PersistentVolumeClaim", "pvc")
    assert [k for k, _ in objects.first] == ["secrets", "persistentvolumeclaims"]
    assert models.V1Job.attribute_map["api_version"] == "apiVersion"  # the walker reads the models


def test_the_single_pod_job() -> None:
    objects = build()
    assert len(objects.jobs) == 1
    job = objects.jobs[0]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == objects.names.job == "corral-executor-batches-42-2"
    assert job["metadata"]["namespace"] == "default"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (0, 1, 1)
    assert spec["activeDeadlineSeconds"] == 1200
    p = pod(objects)
    assert p["restartPolicy"] == "Never"
    assert [c["name"] for c in p["initContainers"]] == [
        "setup-workspace",
        "step-docker-0",
        "step-docker-fmt",
        "step-src-2",
    ]
    assert [c["name"] for c in p["containers"]] == ["main"]
    assert [(n, s.key if s else None) for n, s in objects.containers] == [
        ("setup-workspace", None),
        ("step-docker-0", "step.docker.0"),
        ("step-docker-fmt", "step.docker.fmt"),
        ("step-src-2", "step.src.2"),
        ("main", None),
    ]


def test_containers_run_podside_the_steps_and_corrals_cli() -> None:
    by_name = {c["name"]: c for c in containers(pod(build()))}
    setup, main = by_name["setup-workspace"], by_name["main"]
    assert setup["image"] == main["image"] == "corral/corral:1"
    # -P -s and workingDir "/": nothing imported from the workspace or HOME (test_kubernetes_hostile)
    module = "corral.executor.runtimes.kubernetes.podside"
    assert setup["command"][:6] == ["python3", "-P", "-s", "-m", module, "clone"]
    assert main["command"][:6] == ["python3", "-P", "-s", "-m", module, "collect"]
    assert setup["workingDir"] == main["workingDir"] == "/"
    docker = by_name["step-docker-0"]
    assert docker["image"] == "corral/tools:1"
    assert docker["command"] == ["/bin/sh", "/.corral-steps/step-0.sh"]
    assert docker["workingDir"] == "/data/sub/dir"
    assert by_name["step-docker-fmt"]["workingDir"] == "/data"
    cli = by_name["step-src-2"]
    assert cli["image"] == "corral/corral:1" and cli["command"] == ["corral", "version"]
    assert not any("/opt/venv" in part for part in cli["command"])  # the host's path means nothing in a pod


def test_step_env_reaches_the_steps_only_by_secret_key_ref() -> None:
    objects = build()
    data = secret_data(objects)
    by_name = {c["name"]: c for c in containers(pod(objects))}
    env = {e["name"]: e for e in by_name["step-docker-0"]["env"]}
    assert set(env) == {"API_KEY", "LANG"}
    for name, entry in env.items():
        assert "value" not in entry
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == objects.names.secret
        assert data[ref["key"]] == dict(STEPS[0].env)[name].encode()
    cli_env = {e["name"]: e for e in by_name["step-src-2"]["env"]}
    assert data[cli_env["TOKENISH"]["valueFrom"]["secretKeyRef"]["key"]] == ENV_SECRET.encode()


def test_no_secret_value_is_anywhere_in_a_job(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(CA)
    for env in ({}, {"KUBERNETES_SINGLE_JOB_POD": "false"}, {"KUBERNETES_JOB_VOLUME_TYPE": "pvc"}):
        objects = build({**env, "KUBERNETES_GIT_CA_CERT": str(ca)})
        text = json.dumps(objects.jobs)
        secrets = (TOKEN, ENV_SECRET, FILE_SECRET.decode(), "CA-Kq19Xv", GOOD["EXECUTOR_FRONTEND_PASSWORD"])
        for secret in secrets:
            assert secret not in text
            assert base64.b64encode(secret.encode()).decode() not in text
        data = secret_data(objects)
        assert data["token"] == TOKEN.encode() and data["git-ca.crt"] == CA
        assert GOOD["EXECUTOR_FRONTEND_PASSWORD"].encode() not in b"".join(data.values())


def test_the_secret_holds_token_config_files_scripts_and_env() -> None:
    objects = build()
    _, secret = objects.first[0]
    assert secret["metadata"]["name"] == f"{objects.names.job}-secrets"
    assert secret["type"] == "Opaque" and secret["immutable"] is True
    data = secret_data(objects)
    spec = podside.PodJob.from_json(data["job.json"])  # what podside clone and collect read
    assert spec.frontend_url == "http://127.0.0.1:3080"
    assert (spec.repository, spec.commit, spec.shallow_clone) == ("acme/api", "deadbeef", True)
    assert spec.outputs == ("out/report.json",)
    assert [(path, src.secret_key) for path, src in spec.files.items()] == [("conf/app.json", "file-0")]
    assert spec.git_ca_cert is None
    assert (spec.job_id, spec.queue, spec.executor_name) == (42, "batches", "exec-host-1")
    assert spec.log_nonce == objects.log_nonce
    assert data["file-0"] == FILE_SECRET
    assert data["step-0.sh"] == b"set -x\nmake\n"
    assert TOKEN not in data["job.json"].decode()


def test_the_frontend_url_for_pods_overrides_the_executors() -> None:
    objects = build({"EXECUTOR_KUBERNETES_FRONTEND_URL": "http://corral.corral.svc:3080"})
    spec = podside.PodJob.from_json(secret_data(objects)["job.json"])
    assert spec.frontend_url == "http://corral.corral.svc:3080"


def test_a_clone_without_a_job_token_is_refused() -> None:
    with pytest.raises(ManifestError, match="never gives the executor's own secret to a pod"):
        build(staged=Staged(token=""))
    objects = build(staged=Staged(token="", clone=None), plan=plan(clone=None))  # nothing to fetch
    assert GOOD["EXECUTOR_FRONTEND_PASSWORD"].encode() not in b"".join(secret_data(objects).values())


def test_the_secret_is_bounded() -> None:
    room = MAX_SECRET - 64 * 1024
    build(staged=Staged(files={"a.bin": b"x" * room}))
    with pytest.raises(ManifestError, match=f"at most {MAX_SECRET}"):
        build(staged=Staged(files={"a.bin": b"x" * (MAX_SECRET // 2), "b.bin": b"y" * (MAX_SECRET // 2)}))
    big_env = Step("step.docker.0", "docker", 0, "img", ("/bin/sh",), "", {"BIG": "v" * MAX_SECRET})
    with pytest.raises(ManifestError, match="the job's Secret would hold"):
        build(plan=plan(steps=(big_env,)))


def test_a_bad_env_name_or_dir_is_refused_naming_the_step() -> None:
    bad = Step("step.docker.0", "docker", 0, "img", ("/bin/sh",), "", {"1BAD NAME": "v"})
    with pytest.raises(ManifestError, match=r"step\.docker\.0: environment variable name '1BAD NAME'"):
        build(plan=plan(steps=(bad,)))
    climb = Step("step.docker.0", "docker", 0, "img", ("/bin/sh",), "../../etc")
    with pytest.raises(ManifestError, match=r"step\.docker\.0: dir"):
        build(plan=plan(steps=(climb,)))


# -- volumes and mounts ---------------------------------------------------------------------------------
def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_volumes_and_who_mounts_what() -> None:
    p = pod(build())
    volumes = {v["name"]: v for v in p["volumes"]}
    assert volumes["job-data"] == {"name": "job-data", "emptyDir": {"sizeLimit": "5Gi"}}
    setup_items = [i["key"] for i in volumes["job-secrets"]["secret"]["items"]]
    assert set(setup_items) == {"token", "job.json", "file-0"}
    assert [i["key"] for i in volumes["job-config"]["secret"]["items"]] == ["job.json"]
    assert sorted(i["key"] for i in volumes["job-scripts"]["secret"]["items"]) == ["step-0.sh", "step-1.sh"]
    by_name = {c["name"]: c for c in containers(p)}
    setup, main = mounts(by_name["setup-workspace"]), mounts(by_name["main"])
    # podside clone makes workspace/ and meta.git/ in the volume's root (owned by the pod's user)
    assert setup[podside.SETUP_ROOT] == {"name": "job-data", "mountPath": podside.SETUP_ROOT}
    assert main["/data"]["subPath"] == "workspace" and main[META_MOUNT]["subPath"] == "meta.git"
    assert setup["/.corral-secrets"]["name"] == "job-secrets" and setup["/.corral-secrets"]["readOnly"]
    assert {m["name"] for m in main.values()} == {"job-data", "job-config", "job-tmp"}  # no token
    for name in ("step-docker-0", "step-docker-fmt", "step-src-2"):
        step = mounts(by_name[name])
        assert step["/data"]["subPath"] == "workspace"
        scripts = {"name": "job-scripts", "mountPath": "/.corral-steps", "readOnly": True}
        assert step["/.corral-steps"] == scripts
        assert META_MOUNT not in step  # the diff's git dir is never a step's
        assert not any(m["name"] in ("job-secrets", "job-config") for m in step.values())  # no token


def test_the_pvc_mode_uses_a_per_job_claim() -> None:
    objects = build({"KUBERNETES_JOB_VOLUME_TYPE": "pvc", "KUBERNETES_JOB_VOLUME_SIZE": "10Gi"})
    pvc = dict(objects.first)["persistentvolumeclaims"]
    assert pvc["metadata"]["name"] == objects.names.pvc == f"{objects.names.job}-pvc"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["metadata"]["labels"][LABEL_MANAGED] == "true"
    volumes = {v["name"]: v for v in pod(objects)["volumes"]}
    assert volumes["job-data"]["persistentVolumeClaim"] == {"claimName": objects.names.pvc}


def test_additional_volumes_go_to_the_pod_and_their_mounts_to_the_steps() -> None:
    volumes = [{"name": "cache", "persistentVolumeClaim": {"claimName": "build-cache"}}]
    extra = [{"name": "cache", "mountPath": "/cache", "readOnly": True}]
    p = pod(build({
        "KUBERNETES_ADDITIONAL_JOB_VOLUMES": json.dumps(volumes),
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS": json.dumps(extra),
    }))
    assert volumes[0] in p["volumes"]
    by_name = {c["name"]: c for c in containers(p)}
    for name in ("step-docker-0", "step-docker-fmt", "step-src-2"):
        assert mounts(by_name[name])["/cache"] == extra[0]
    assert "/cache" not in mounts(by_name["setup-workspace"]) and "/cache" not in mounts(by_name["main"])


def test_the_git_ca_goes_into_the_secret_for_the_setup_container(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(CA)
    objects = build({"KUBERNETES_GIT_CA_CERT": str(ca)})
    spec = podside.PodJob.from_json(secret_data(objects)["job.json"])
    assert spec.git_ca_cert == "/.corral-secrets/git-ca.crt"  # where the setup container finds it
    volumes = {v["name"]: v for v in pod(objects)["volumes"]}
    assert "git-ca.crt" in [i["key"] for i in volumes["job-secrets"]["secret"]["items"]]


# -- security -------------------------------------------------------------------------------------------
def test_the_pod_is_locked_down() -> None:
    p = pod(build())
    assert p["automountServiceAccountToken"] is False and p["enableServiceLinks"] is False
    assert p["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in p and "hostPID" not in p and "serviceAccountName" not in p
    for c in containers(p):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        expected_ro = c["name"] in ("setup-workspace", "main", "step-src-2")
        assert sc["readOnlyRootFilesystem"] is expected_ro, c["name"]
        if expected_ro:
            assert mounts(c)["/tmp"]["name"] == "job-tmp"


def test_run_as_settings_reach_the_pod() -> None:
    ids = {"KUBERNETES_RUN_AS_USER": "2000", "KUBERNETES_RUN_AS_GROUP": "3000", "KUBERNETES_FS_GROUP": "-1"}
    p = pod(build(ids))
    sc = p["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (2000, 3000) and "fsGroup" not in sc
    volumes = {v["name"]: v for v in p["volumes"]}
    assert volumes["job-secrets"]["secret"]["defaultMode"] == 0o444  # no fsGroup: the uid must read it
    p = pod(build({"KUBERNETES_FS_GROUP": "4000"}))
    assert p["securityContext"]["fsGroup"] == 4000
    assert {v["name"]: v for v in p["volumes"]}["job-secrets"]["secret"]["defaultMode"] == 0o440


# -- scheduling settings --------------------------------------------------------------------------------
def test_every_scheduling_setting_reaches_the_pod_spec() -> None:
    expressions = [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]
    fields = [{"key": "metadata.name", "operator": "NotIn", "values": ["bad-node"]}]
    affinity = [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "example.com/zone"}]
    anti = [{"labelSelector": {"matchLabels": {LABEL_MANAGED: "true"}}, "topologyKey": "example.com/host"}]
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "corral", "effect": "NoSchedule"}]
    objects = build({
        "EXECUTOR_KUBERNETES_NAMESPACE": "corral-jobs",
        "EXECUTOR_KUBERNETES_NODE_NAME": "node-7",
        "EXECUTOR_KUBERNETES_NODE_SELECTOR": "disk=ssd,pool=jobs",
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS": json.dumps(expressions),
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS": json.dumps(fields),
        "EXECUTOR_KUBERNETES_POD_AFFINITY": json.dumps(affinity),
        "EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY": json.dumps(anti),
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS": json.dumps(tolerations),
        "KUBERNETES_IMAGE_PULL_SECRETS": "regcred,mirror-cred",
        "EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME": "gvisor",
        "KUBERNETES_JOB_DEADLINE": "600",
        "KUBERNETES_JOB_ANNOTATIONS": json.dumps({"example.com/team": "infra"}),
        "KUBERNETES_JOB_POD_ANNOTATIONS": json.dumps({"example.com/evict": "false"}),
        "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU": "2",
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU": "500m",
        "EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY": "4Gi",
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY": "1Gi",
    })
    job = objects.jobs[0]
    p = pod(objects)
    assert job["metadata"]["namespace"] == "corral-jobs"
    assert all(body["metadata"]["namespace"] == "corral-jobs" for _, body in objects.first)
    assert p["nodeName"] == "node-7"
    assert p["nodeSelector"] == {"disk": "ssd", "pool": "jobs"}
    required = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"nodeSelectorTerms": [{"matchExpressions": expressions, "matchFields": fields}]}
    assert p["affinity"]["podAffinity"] == {"requiredDuringSchedulingIgnoredDuringExecution": affinity}
    assert p["affinity"]["podAntiAffinity"] == {"requiredDuringSchedulingIgnoredDuringExecution": anti}
    assert p["tolerations"] == tolerations
    assert p["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert p["runtimeClassName"] == "gvisor"
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["metadata"]["annotations"] == {"example.com/team": "infra"}
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/evict": "false"}
    for c in containers(p):
        assert c["resources"] == {
            "limits": {"cpu": "2", "memory": "4Gi"},
            "requests": {"cpu": "500m", "memory": "1Gi"},
        }


def test_unset_scheduling_settings_leave_the_pod_spec_alone() -> None:
    p = pod(build())
    for key in "nodeName nodeSelector affinity tolerations imagePullSecrets runtimeClassName".split():
        assert key not in p
    assert "annotations" not in build().jobs[0]["metadata"]


def test_resources_follow_the_job_limits() -> None:
    p = pod(build({"EXECUTOR_JOB_NUM_CPUS": "1", "EXECUTOR_JOB_MEMORY": "2G"}))
    for c in containers(p):
        one = {"cpu": "1", "memory": "2Gi"}
        assert c["resources"] == {"limits": one, "requests": one}
    p = pod(build({"EXECUTOR_JOB_NUM_CPUS": "0", "EXECUTOR_JOB_MEMORY": "0"}))
    assert all("resources" not in c or c["resources"] == {} for c in containers(p))


# -- multi-pod mode ---------------------------------------------------------------------------------------
def test_multi_pod_mode_runs_one_job_per_step_on_the_shared_claim() -> None:
    objects = build({"KUBERNETES_SINGLE_JOB_POD": "false"})
    names = [j["metadata"]["name"] for j in objects.jobs]
    base = objects.names.job
    assert names == [f"{base}-s0", f"{base}-s1", f"{base}-s2"]
    layout = [
        (
            [c["name"] for c in pod(objects, i).get("initContainers", [])],
            [c["name"] for c in pod(objects, i)["containers"]],
        )
        for i in range(3)
    ]
    assert layout == [
        (["setup-workspace"], ["step-docker-0"]),
        ([], ["step-docker-fmt"]),
        (["step-src-2"], ["main"]),
    ]
    for i in range(3):
        p = pod(objects, i)
        data = {v["name"]: v for v in p["volumes"]}["job-data"]
        assert data == {"name": "job-data", "persistentVolumeClaim": {"claimName": "sg-executor-pvc"}}
        for c in containers(p):
            if c["name"] == "setup-workspace":  # only this job's part of the claim
                assert mounts(c)[podside.SETUP_ROOT]["subPath"] == base
            else:
                assert mounts(c)["/data"]["subPath"] == f"{base}/workspace"
        assert objects.jobs[i]["metadata"]["labels"][manifests.LABEL_STEP] == str(i)
    assert [k for k, _ in objects.first] == ["secrets"]
    order = ["setup-workspace", "step-docker-0", "step-docker-fmt", "step-src-2", "main"]
    assert [n for n, _ in objects.containers] == order


def test_multi_pod_mode_with_a_per_job_claim_and_no_steps() -> None:
    objects = build({"KUBERNETES_SINGLE_JOB_POD": "false", "KUBERNETES_JOB_VOLUME_TYPE": "pvc",
                     "EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME": "shared-pvc"}, plan=plan(steps=()))
    assert len(objects.jobs) == 1
    p = pod(objects)
    assert [c["name"] for c in p["initContainers"]] == ["setup-workspace"]
    assert [c["name"] for c in p["containers"]] == ["main"]
    data = {v["name"]: v for v in p["volumes"]}["job-data"]
    assert data["persistentVolumeClaim"] == {"claimName": objects.names.pvc}
    assert mounts(p["containers"][0])["/data"]["subPath"] == "workspace"


# -- names and labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("owner", "queue", "job_id", "attempt"),
    [
        ("executor", "batches", 1, 1),
        ("executor", "q" * 64, 10**15, 99),
        ("a" * 32, "under_score_queue", 7, 3),
        ("exec-", "-dash-", 5, 0),
        ("executor", "codeintel", 2**62, 12345),
    ],
)
def test_names_are_dns_labels_that_leave_room_for_step_jobs(
    owner: str, queue: str, job_id: int, attempt: int
) -> None:
    names = job_names(owner, queue, job_id, attempt)
    assert len(names.job) <= manifests.BASE_NAME_MAX and DNS_LABEL.fullmatch(names.job)
    assert len(names.step_job(9999)) <= 63 and DNS_LABEL.fullmatch(names.step_job(9999))
    assert names.secret == f"{names.job}-secrets" and names.pvc == f"{names.job}-pvc"
    assert job_names(owner, queue, job_id, attempt) == names  # stable across restarts (reattach)


def test_distinct_jobs_never_share_a_name() -> None:
    seen = {
        job_names(owner, queue, job_id, attempt).job
        for owner in ("executor", "exec-b")
        for queue in ("a_b", "a-b", "q" * 60, "q" * 61, "q" * 64)
        for job_id in (1, 12, 123456789012345)
        for attempt in (1, 2)
    }
    assert len(seen) == 2 * 5 * 3 * 2


def test_companions_name_the_secret_and_pvc_of_any_of_the_attempts_jobs() -> None:
    names = job_names("executor", "batches", 42, 2)
    registry = ("secrets", f"{names.job}-registry")  # the job's own pull credentials, when it has some
    expected = [("secrets", names.secret), registry, ("persistentvolumeclaims", names.pvc)]
    assert companions(names.job) == expected == companions(names.step_job(3))
    long = job_names("executor", "q" * 64, 42, 2)
    long_registry = ("secrets", f"{long.job}-registry")
    expected = [("secrets", long.secret), long_registry, ("persistentvolumeclaims", long.pvc)]
    assert companions(long.step_job(12)) == expected


def test_labels_name_the_executor_queue_job_and_attempt() -> None:
    objects = build(space=space(executor_name="host.example-0b9c6f1e-4a5d-4f7e-9a3b-2c1d0e9f8a7b-extra-long"))
    labels = objects.jobs[0]["metadata"]["labels"]
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_JOB] == "batches-42"
    assert labels[LABEL_OWNER] == "executor"
    assert labels[manifests.LABEL_ATTEMPT] == "2"
    assert len(labels[manifests.LABEL_EXECUTOR]) <= 63
    assert labels[manifests.LABEL_EXECUTOR].startswith("host.example-0b9c6f1e")
    assert objects.jobs[0]["spec"]["template"]["metadata"]["labels"] == labels
    for _, body in objects.first:
        assert body["metadata"]["labels"][LABEL_JOB] == "batches-42"
    assert all(LABEL_VALUE.fullmatch(v) and len(v) <= 63 for v in labels.values())


@pytest.mark.parametrize("value", ["batches-1", "q" * 64 + "-1", "-dash-1", "exec_", "a b/c", "x" * 200, "é"])
def test_label_values_are_always_valid(value: str) -> None:
    out = label_value(value)
    assert len(out) <= 63 and LABEL_VALUE.fullmatch(out) and out
    assert label_value(value) == out
    if len(value) <= 63 and LABEL_VALUE.fullmatch(value):
        assert out == value


def test_container_names_are_unique_dns_labels() -> None:
    weird = (
        Step("step.docker.My Step!", "docker", 0, "img", ("/bin/sh",)),
        Step("step.docker." + "k" * 80, "docker", 1, "img", ("/bin/sh",)),
        Step("step.docker.a", "docker", 2, "img", ("/bin/sh",)),
        Step("step.docker.A", "docker", 3, "img", ("/bin/sh",)),
    )
    objects = build(plan=plan(steps=weird), staged=Staged(scripts={}))
    names = [n for n, _ in objects.containers]
    assert names == ["setup-workspace", "step-0", "step-1", "step-docker-a", "step-3", "main"]
    assert all(DNS_LABEL.fullmatch(n) and len(n) <= 63 for n in names)
    volumes = {v["name"]: v for v in pod(objects)["volumes"]}
    assert "emptyDir" in volumes["job-scripts"]  # no scripts: the mount still has its volume


@pytest.mark.parametrize("queue", ["batches", "q" * 64, "_under_", "-dash"])
def test_the_janitor_finds_a_running_jobs_label_among_the_live_labels(queue: str) -> None:
    s = space(queue=queue, job_id=123456789)
    label = job_labels(s)[LABEL_JOB]
    assert label in live_labels({f"{queue}-123456789", "other-1"})
    assert label not in live_labels({f"{queue}-12345678"})


@pytest.mark.parametrize("owner", ["executor", "exec-", "a_b_", "x" * 32])
def test_the_owner_selector_matches_the_owner_label(owner: str) -> None:
    labels = job_labels(space(owner=owner))
    selector = dict(part.split("=") for part in owner_selector(owner).split(","))
    assert selector == {LABEL_MANAGED: "true", LABEL_OWNER: labels[LABEL_OWNER]}
    assert LABEL_VALUE.fullmatch(labels[LABEL_OWNER])
