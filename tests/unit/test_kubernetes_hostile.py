"""Hostile review of the kubernetes runtime (issue 14), the parts that need no cluster: what a careless
operator's settings do to every pod, what a new user reads when a setting is wrong, what a forged
results stream can add to a job's results, and what the shipped Role grants."""

from __future__ import annotations

import json

import pytest

from corral.errors import ConfigError
from corral.executor.runtimes.kubernetes import rbac
from corral.executor.runtimes.kubernetes.podside import MalformedResults, decode_results, encode_results
from corral.executor.runtimes.kubernetes.settings import RESERVED_MOUNTS, RESERVED_VOLUMES
from corral.executor.settings import ExecutorSettings
from corral.executor.workspace.base import Results
from tests.unit.test_kubernetes_manifests import GOOD, STEPS, Staged, build, containers, plan, pod


def _problem(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        ExecutorSettings.from_env({**GOOD, **env})
    return info.value.message


@pytest.mark.parametrize("single", ["true", "false"])
@pytest.mark.parametrize("volume_type", ["emptyDir", "pvc"])
def test_every_volume_and_step_mount_corral_makes_is_reserved(single: str, volume_type: str) -> None:
    """An additional volume named like one of corral's own makes every pod a duplicate the API refuses
    (422 at each job); an additional mount on one of corral's paths hides it in the steps. Both are
    refused at start only for names and paths the settings know are corral's."""
    env = {"KUBERNETES_SINGLE_JOB_POD": single, "KUBERNETES_JOB_VOLUME_TYPE": volume_type}
    objects = build(env, plan=plan(STEPS))
    for i in range(len(objects.jobs)):
        spec = pod(objects, i)
        assert {v["name"] for v in spec["volumes"]} <= set(RESERVED_VOLUMES)
        for c in containers(spec):
            if c["name"].startswith("step-"):
                assert {m["mountPath"] for m in c["volumeMounts"]} <= set(RESERVED_MOUNTS), c["name"]


@pytest.mark.parametrize("name", sorted({"job-data", "job-secrets", "job-config", "job-tmp", "job-scripts"}))
def test_an_additional_volume_named_like_corrals_own_is_refused_at_start(name: str) -> None:
    volumes = json.dumps([{"name": name, "emptyDir": {}}])
    message = _problem(KUBERNETES_ADDITIONAL_JOB_VOLUMES=volumes)
    assert f"KUBERNETES_ADDITIONAL_JOB_VOLUMES: [0].name {name!r} is taken" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KUBERNETES_JOB_DEADLINE", "soon"),
        ("EXECUTOR_KUBERNETES_NODE_TOLERATIONS", "[{"),
        ("KUBERNETES_JOB_VOLUME_TYPE", "hostPath"),
        ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "lots"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(variable: str, value: str) -> None:
    """Not followed by pydantic's "kubernetes: Input should be a valid dictionary or instance of
    KubernetesSettings", which names no variable a user can set."""
    lines = _problem(**{variable: value}).splitlines()
    assert lines[0] == "invalid executor configuration:"
    assert len(lines) == 2 and lines[1].startswith(f"  {variable}: "), lines


def test_the_decoder_refuses_an_output_the_job_did_not_declare() -> None:
    """A forged stream (main's stdout is the only channel the executor reads back) may not add files
    to the job's results beyond its declared outputs (read_outputs keys them as declared)."""
    out = bytearray()
    encode_results(out.extend, b"", Results(files={"out.txt": "eA==", "planted.bin": "eA=="}))
    with pytest.raises(MalformedResults, match=r"'planted\.bin' is not a declared output"):
        decode_results(bytes(out), outputs=("out.txt",))
    both = decode_results(bytes(out), outputs=("out.txt", "planted.bin", "missing"))
    assert both.files == {"out.txt": "eA==", "planted.bin": "eA=="}


def test_the_role_grants_only_what_the_runtime_calls() -> None:
    """No verb nothing calls: the runtime follows pods with a watch and reads one Job's status and the
    events with a list (fieldSelector), so it never watches Jobs or events. `get pods` is the seeds'."""
    allowed = {
        (verb, rule.api_groups[0], resource)
        for rule in rbac.load_role()
        for resource in rule.resources
        for verb in rule.verbs
    }
    assert ("watch", "batch", "jobs") not in allowed
    assert ("watch", "", "events") not in allowed
    assert {("list", "batch", "jobs"), ("list", "", "events"), ("watch", "", "pods")} <= allowed


def test_no_secret_reaches_a_step_container_through_a_mount() -> None:
    """Steps mount the workspace, the scripts (only the scripts' keys of the Secret) and, for CLI
    steps, /tmp: never the token, job.json, the files or another step's environment."""
    objects = build(staged=Staged())
    spec = pod(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in containers(spec):
        if not c["name"].startswith("step-"):
            continue
        for m in c["volumeMounts"]:
            secret = volumes[m["name"]].get("secret")
            if secret is not None:
                assert all(item["key"].startswith("step-") for item in secret["items"]), c["name"]


def test_corrals_default_image_is_never_pulled_from_a_public_registry() -> None:
    """corral/corral:1 is on no registry: pulled, the short name is docker.io's, and whoever owns it
    there would run setup-workspace with the job token. A configured image is pulled as usual."""
    spec = pod(build())
    ours = {c["name"]: c.get("imagePullPolicy") for c in containers(spec) if c["image"] == "corral/corral:1"}
    assert ours == {"setup-workspace": "Never", "step-src-2": "Never", "main": "Never"}
    own = "registry.example.com/corral/corral:1"
    spec = pod(build({"KUBERNETES_SINGLE_JOB_STEP_IMAGE": own}))
    names = [c["name"] for c in containers(spec) if c["image"] == own]
    assert names == ["setup-workspace", "step-src-2", "main"]
    assert not [c for c in containers(spec) if "imagePullPolicy" in c]


def test_fs_group_changes_only_a_volume_root_that_is_not_its_group() -> None:
    """fsGroup's default policy (Always) makes the kubelet chgrp every file of the volume at each pod:
    on the shared PVC of multi-pod mode, every job's directory, again for each step of each job."""
    spec = pod(build({"KUBERNETES_SINGLE_JOB_POD": "false"}))
    assert spec["securityContext"]["fsGroup"] == 1000
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert "fsGroupChangePolicy" not in pod(build({"KUBERNETES_FS_GROUP": "-1"}))["securityContext"]
