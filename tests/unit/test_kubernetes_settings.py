"""KubernetesSettings from the environment: Sourcegraph's names and defaults, corral's additions, the
runtime selection rule, the resources' precedence, and every malformed setting refused at start with
a message naming its variable (and never repeating a value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.executor.runtimes.kubernetes import rbac
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings, cpu_quantity, memory_quantity
from corral.executor.runtimes.kubernetes.shapes import parse_quantity
from corral.executor.settings import ExecutorSettings
from corral.executor.variables import VARIABLES

GOOD = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "Vx3kq9Lw2RzT7mN4pB8dYc1F",
    "EXECUTOR_QUEUE_NAME": "batches",
    "EXECUTOR_RUNTIME": "kubernetes",
}
SECRETISH = "s3cr3t-Hunter2-value"  # put into values that are refused: must never be echoed


def settings(**env: str) -> ExecutorSettings:
    return ExecutorSettings.from_env({**GOOD, **env})


def k8s(**env: str) -> KubernetesSettings:
    return settings(**env).kubernetes


def problem(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings(**env)
    return info.value.message


# -- defaults and names -------------------------------------------------------------------------------
def test_defaults_are_sourcegraphs() -> None:
    k = k8s()
    assert k.config_path == "~/.kube/config" and k.kubeconfig == Path.home() / ".kube" / "config"
    assert k.namespace == "default"
    assert k.persistence_volume_name == "sg-executor-pvc"
    assert k.job_deadline == 1200
    assert k.keep_jobs is False
    assert (k.run_as_user, k.run_as_group, k.fs_group) == (-1, -1, 1000)
    assert (k.uid, k.gid, k.fs_group_id) == (1000, 1000, 1000)  # non-root even when unset
    assert k.single_job_pod is True
    assert (k.job_volume_type, k.job_volume_size) == ("emptyDir", "5Gi")
    assert k.step_image == "corral/corral:1"
    assert (k.scheduling_timeout, k.image_pull_timeout) == (300.0, 300.0)
    assert k.runtime_class_name == "" and k.frontend_url == "" and k.git_ca_pem is None
    assert k.node_selector == {} and k.tolerations == [] and k.image_pull_secrets == []
    assert k.in_cluster is False


def test_the_tables_defaults_are_the_kubernetes_settings_defaults() -> None:
    base = k8s().model_dump()
    names = [n for n, v in VARIABLES.items() if "kubernetes" in v.runtimes and v.default]
    assert len(names) >= 14
    for name in names:
        assert k8s(**{name: VARIABLES[name].default}).model_dump() == base, name


def test_every_kubernetes_variable_is_read_and_honoured_by_the_kubernetes_runtime() -> None:
    from corral.executor.settingsbase import env_names

    read = env_names(KubernetesSettings)
    table = {n for n, v in VARIABLES.items() if n.startswith(("EXECUTOR_KUBERNETES_", "KUBERNETES_"))}
    assert read == table
    assert all(VARIABLES[n].runtimes == {"kubernetes"} for n in table)


def test_corrals_additions_are_read() -> None:
    k = k8s(
        EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT="90s",
        EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT="2m",
        EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME="gvisor",
        EXECUTOR_KUBERNETES_FRONTEND_URL="HTTP://Corral.Svc:3080/",
        KUBERNETES_SINGLE_JOB_STEP_IMAGE="127.0.0.1:5000/corral:2",
    )
    assert (k.scheduling_timeout, k.image_pull_timeout) == (90.0, 120.0)
    assert k.runtime_class_name == "gvisor"
    assert k.frontend_url == "http://corral.svc:3080"
    assert k.step_image == "127.0.0.1:5000/corral:2"


# -- runtime selection ------------------------------------------------------------------------------
def _no_runtime(**env: str) -> ExecutorSettings:
    base = {k: v for k, v in GOOD.items() if k != "EXECUTOR_RUNTIME"}
    return ExecutorSettings.from_env({**base, **env})


def test_inside_a_cluster_the_runtime_is_kubernetes_by_sourcegraphs_rule() -> None:
    s = _no_runtime(KUBERNETES_SERVICE_HOST="10.0.0.1", KUBERNETES_SERVICE_PORT="443")
    assert s.runtime == "kubernetes" and s.kubernetes.in_cluster is True
    assert s.warnings == []


def test_one_service_variable_alone_is_not_a_cluster() -> None:
    assert _no_runtime(KUBERNETES_SERVICE_HOST="10.0.0.1").runtime == "docker"
    assert _no_runtime(KUBERNETES_SERVICE_PORT="443").runtime == "docker"


def test_an_explicit_runtime_wins_over_the_cluster_rule() -> None:
    cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    s = _no_runtime(EXECUTOR_RUNTIME="docker", **cluster)
    assert s.runtime == "docker"
    s = _no_runtime(EXECUTOR_USE_FIRECRACKER="true", KUBERNETES_SERVICE_HOST="h", KUBERNETES_SERVICE_PORT="1")
    assert s.runtime == "firecracker"


def test_outside_a_cluster_the_kubeconfig_path_is_used() -> None:
    k = k8s(EXECUTOR_KUBERNETES_CONFIG_PATH="/etc/corral/kubeconfig")
    assert k.in_cluster is False and k.kubeconfig == Path("/etc/corral/kubeconfig")


def test_kubernetes_variables_with_another_runtime_warn_and_are_not_checked() -> None:
    s = settings(EXECUTOR_RUNTIME="docker", EXECUTOR_KUBERNETES_NODE_TOLERATIONS="{not json")
    assert s.warnings == [
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS applies to the kubernetes runtime only, not to docker "
        "(EXECUTOR_RUNTIME): ignored"
    ]
    assert s.kubernetes == KubernetesSettings()


def test_a_good_kubernetes_configuration_has_no_warnings() -> None:
    assert settings(KUBERNETES_KEEP_JOBS="true", EXECUTOR_KUBERNETES_NAMESPACE="jobs").warnings == []


# -- scheduling settings ---------------------------------------------------------------------------------
def test_node_selector_affinity_and_tolerations_are_parsed() -> None:
    expressions = [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]
    fields = [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]
    affinity = [
        {
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
            "topologyKey": "kubernetes.io/hostname",
        }
    ]
    tolerations = [
        {"key": "dedicated", "operator": "Equal", "value": "corral", "effect": "NoSchedule"},
        {"operator": "Exists"},
        {"key": "gone", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ]
    k = k8s(
        EXECUTOR_KUBERNETES_NODE_SELECTOR="disk=ssd, example.com/pool=jobs,empty=",
        EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS=json.dumps(expressions),
        EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS=json.dumps(fields),
        EXECUTOR_KUBERNETES_POD_AFFINITY=json.dumps(affinity),
        EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY=json.dumps(affinity),
        EXECUTOR_KUBERNETES_NODE_TOLERATIONS=json.dumps(tolerations),
        KUBERNETES_IMAGE_PULL_SECRETS="regcred, other.cred",
        EXECUTOR_KUBERNETES_NODE_NAME="node-1.example",
    )
    assert k.node_selector == {"disk": "ssd", "example.com/pool": "jobs", "empty": ""}
    assert k.node_match_expressions == expressions and k.node_match_fields == fields
    assert k.pod_affinity == affinity == k.pod_anti_affinity
    assert k.tolerations == tolerations
    assert k.image_pull_secrets == ["regcred", "other.cred"]
    assert k.node_name == "node-1.example"


INVALID = [
    # (variable, value, what the message says)
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "disk", "comma-separated list of key=value"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "a=b=c", "comma-separated list of key=value"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "a=b,,c=d", "comma-separated list of key=value"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "bad key=v", "not a qualified name"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "k=" + "v" * 64, "not a label value"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "k=-v", "not a label value"),
    ("EXECUTOR_KUBERNETES_NODE_SELECTOR", "UPPER.Domain/k=v", "not a DNS-1123 subdomain"),
    ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS", "[{", "not valid JSON"),
    ("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS", '{"key": "a"}', "must be a JSON list"),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        '[{"key": "a", "operator": "Has"}]',
        "[0].operator must be one of",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        '[{"key": "a", "operator": "In"}]',
        "needs values",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        '[{"key": "a", "operator": "Gt", "values": ["x"]}]',
        "one whole-number value",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        '[{"kee": "a", "operator": "Exists"}]',
        "unknown field 'kee'",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        '[{"key": 5, "operator": "Exists"}]',
        "[0].key must be a string",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
        '[{"key": "spec.nodeName", "operator": "In", "values": ["n"]}]',
        "only metadata.name",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS",
        '[{"key": "metadata.name", "operator": "Exists"}]',
        "must be one of In, NotIn",
    ),
    ("EXECUTOR_KUBERNETES_POD_AFFINITY", '[{"labelSelector": {}}]', "[0] has no topologyKey"),
    ("EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY", '[{"topologyKey": ""}]', "[0] has no topologyKey"),
    ("EXECUTOR_KUBERNETES_POD_AFFINITY", '[{"topologykey": "zone"}]', "unknown field 'topologykey'"),
    (
        "EXECUTOR_KUBERNETES_POD_AFFINITY",
        json.dumps(
            [{"topologyKey": "z", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}}]
        ),
        "must be one of In, NotIn, Exists, DoesNotExist",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        '[{"key": "a", "operator": "Eq"}]',
        "[0].operator must be Exists or Equal",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        '[{"key": "a", "effect": "NoRun"}]',
        "[0].effect must be NoSchedule, PreferNoSchedule or NoExecute",
    ),
    ("EXECUTOR_KUBERNETES_NODE_TOLERATIONS", '[{"value": "v"}]', "without a key must have operator Exists"),
    (
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        '[{"key": "a", "operator": "Exists", "value": "v"}]',
        "takes no value",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        '[{"key": "a", "tolerationSeconds": "5"}]',
        "tolerationSeconds must be a whole number",
    ),
    (
        "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
        '[{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]',
        "applies to effect NoExecute only",
    ),
    ("EXECUTOR_KUBERNETES_NAMESPACE", "Jobs_Ns", "not a DNS-1123 label"),
    ("EXECUTOR_KUBERNETES_NODE_NAME", "node 1", "not a DNS-1123 subdomain"),
    ("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "PVC!", "not a DNS-1123 subdomain"),
    ("EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME", "g visor", "not a DNS-1123 subdomain"),
    ("KUBERNETES_IMAGE_PULL_SECRETS", "ok,Not_OK", "not a DNS-1123 subdomain"),
    # resources and sizes
    ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "12Gx", "not a Kubernetes quantity"),
    ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "lots", "not a Kubernetes quantity"),
    ("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "-1", "must be a positive quantity"),
    ("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "0", "must be a positive quantity"),
    ("KUBERNETES_JOB_VOLUME_SIZE", "5 GB", "not a Kubernetes quantity"),
    ("KUBERNETES_JOB_DEADLINE", "-5", "greater than 0"),
    ("KUBERNETES_JOB_DEADLINE", "0", "greater than 0"),
    ("KUBERNETES_JOB_DEADLINE", "20m", "valid integer"),
    ("KUBERNETES_RUN_AS_USER", "0", "0 is root"),
    ("KUBERNETES_RUN_AS_GROUP", "-2", "is not an id"),
    ("KUBERNETES_FS_GROUP", "-7", "is not an id"),
    ("KUBERNETES_KEEP_JOBS", "yes", "is not a boolean"),
    ("KUBERNETES_SINGLE_JOB_POD", "nope", "is not a boolean"),
    ("KUBERNETES_JOB_VOLUME_TYPE", "hostPath", "'emptyDir' or 'pvc'"),
    ("EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT", "soon", "not a duration"),
    ("EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT", "0", "greater than 0"),
    ("EXECUTOR_KUBERNETES_FRONTEND_URL", "ftp://corral", "must start with http:// or https://"),
    ("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "corral corral", "without blanks"),
    # volumes, mounts, annotations
    ("KUBERNETES_ADDITIONAL_JOB_VOLUMES", '[{"name": "v", "nfsv4": {}}]', "unknown field 'nfsv4' of Volume"),
    ("KUBERNETES_ADDITIONAL_JOB_VOLUMES", '[{"name": "v"}]', "exactly one volume type"),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
        '[{"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}]',
        "exactly one volume type",
    ),
    ("KUBERNETES_ADDITIONAL_JOB_VOLUMES", '[{"emptyDir": {}}]', "[0] has no name"),
    ("KUBERNETES_ADDITIONAL_JOB_VOLUMES", '[{"name": "job-data", "emptyDir": {}}]', "is taken"),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
        '[{"name": "v", "configMap": {"nmae": "c"}}]',
        "[0].configMap: unknown field 'nmae'",
    ),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
        '[{"name": "v", "emptyDir": []}]',
        "[0].emptyDir must be a JSON object",
    ),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        '[{"name": "v", "mountPath": "rel"}]',
        "must be an absolute path",
    ),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        '[{"name": "v", "mountPath": "/data/x"}]',
        "a path corral mounts itself",
    ),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        '[{"name": "v", "mountPath": "/"}]',
        "a path corral mounts itself",
    ),
    ("KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS", '[{"mountPath": "/x"}]', "[0] has no name"),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        '[{"name": "v", "mountPath": "/x", "readOnly": "yes"}]',
        "readOnly must be true or false",
    ),
    (
        "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS",
        '[{"name": "v", "mountPath": "/x", "mountPropagation": "Bidirectional"}]',
        "privileged",
    ),
    ("KUBERNETES_JOB_ANNOTATIONS", '{"a": 1}', "must be a string"),
    ("KUBERNETES_JOB_ANNOTATIONS", '["a"]', "must be a JSON object"),
    ("KUBERNETES_JOB_POD_ANNOTATIONS", '{"bad key": "v"}', "not a qualified name"),
    ("KUBERNETES_JOB_POD_ANNOTATIONS", "{", "not valid JSON"),
    ("KUBERNETES_JOB_ANNOTATIONS", json.dumps({"k": "v" * (257 * 1024)}), "the API allows 262144"),
]


@pytest.mark.parametrize(("name", "value", "message"), INVALID)
def test_an_invalid_setting_is_refused_naming_the_variable(name: str, value: str, message: str) -> None:
    msg = problem(**{name: value})
    line = next((x for x in msg.splitlines() if x.strip().startswith(f"{name}:")), None)
    assert line is not None, msg
    assert message in line, line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KUBERNETES_JOB_ANNOTATIONS", json.dumps({"bad key": SECRETISH})),
        ("KUBERNETES_JOB_POD_ANNOTATIONS", '{"token": "' + SECRETISH + '"'),
        (
            "KUBERNETES_ADDITIONAL_JOB_VOLUMES",
            json.dumps([{"name": "v", "csi": {"driver": "d", "nodePublishSecretRef": SECRETISH}}]),
        ),
        ("KUBERNETES_ADDITIONAL_JOB_VOLUMES", json.dumps([{"name": "v", "emptyDir": {}, "x": SECRETISH}])),
        (
            "EXECUTOR_KUBERNETES_NODE_TOLERATIONS",
            json.dumps([{"key": "k", "operator": "Exists", "value": SECRETISH}]),
        ),
        ("EXECUTOR_KUBERNETES_FRONTEND_URL", f"http://user:{SECRETISH}@corral:3080"),
    ],
)
def test_a_refused_value_is_never_repeated(name: str, value: str) -> None:
    msg = problem(**{name: value})
    assert name in msg and SECRETISH not in msg, msg


def test_every_bad_variable_is_named_at_once() -> None:
    msg = problem(
        EXECUTOR_KUBERNETES_NODE_SELECTOR="x",
        EXECUTOR_KUBERNETES_NODE_TOLERATIONS="[",
        KUBERNETES_JOB_DEADLINE="-1",
    )
    names = "EXECUTOR_KUBERNETES_NODE_SELECTOR EXECUTOR_KUBERNETES_NODE_TOLERATIONS KUBERNETES_JOB_DEADLINE"
    assert all(f"{name}:" in msg for name in names.split()), msg


def test_deeply_nested_json_is_refused() -> None:
    deep = '[{"name": "v", "emptyDir": {}, "csi": ' + "{" * 40 + "}" * 40 + "}]"
    assert "KUBERNETES_ADDITIONAL_JOB_VOLUMES:" in problem(KUBERNETES_ADDITIONAL_JOB_VOLUMES=deep)


def test_a_mount_of_an_undefined_volume_is_refused() -> None:
    msg = problem(KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS='[{"name": "cache", "mountPath": "/cache"}]')
    assert "KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS: mounts volume(s) cache that" in msg


def test_additional_volumes_and_mounts_are_kept() -> None:
    volumes = [{"name": "cache", "persistentVolumeClaim": {"claimName": "build-cache"}}]
    mounts = [{"name": "cache", "mountPath": "/cache", "readOnly": True}]
    k = k8s(
        KUBERNETES_ADDITIONAL_JOB_VOLUMES=json.dumps(volumes),
        KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS=json.dumps(mounts),
    )
    assert k.additional_volumes == volumes and k.additional_volume_mounts == mounts


# -- resources ------------------------------------------------------------------------------------------
def test_resources_come_from_the_job_limits_by_default() -> None:
    s = settings()
    r = s.kubernetes.resources(s.job_num_cpus, s.job_memory)
    assert r == {"limits": {"cpu": "4", "memory": "12Gi"}, "requests": {"cpu": "4", "memory": "12Gi"}}
    s = settings(EXECUTOR_JOB_NUM_CPUS="1.5", EXECUTOR_JOB_MEMORY="3G")
    r = s.kubernetes.resources(s.job_num_cpus, s.job_memory)
    assert r == {"limits": {"cpu": "1500m", "memory": "3Gi"}, "requests": {"cpu": "1500m", "memory": "3Gi"}}


def test_unbounded_job_limits_give_no_limits() -> None:
    s = settings(EXECUTOR_JOB_NUM_CPUS="0", EXECUTOR_JOB_MEMORY="0")
    assert s.kubernetes.resources(s.job_num_cpus, s.job_memory) == {"limits": {}, "requests": {}}


def test_the_kubernetes_resource_variables_win_each_for_its_own_slot() -> None:
    s = settings(
        EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU="2",
        EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU="500m",
        EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY="1Gi",
    )
    r = s.kubernetes.resources(s.job_num_cpus, s.job_memory)
    assert r == {"limits": {"cpu": "2", "memory": "12Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}
    s = settings(EXECUTOR_JOB_MEMORY="0", EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY="2Gi")
    r = s.kubernetes.resources(s.job_num_cpus, s.job_memory)
    assert r["requests"]["memory"] == "2Gi" and "memory" not in r["limits"]


def test_a_request_above_its_limit_is_refused_naming_both() -> None:
    msg = problem(EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY="16Gi")
    assert (
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY: 16Gi is above the limit 12Gi "
        "(EXECUTOR_JOB_MEMORY)" in msg
    )
    msg = problem(
        EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU="1", EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU="1500m"
    )
    assert (
        "EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU: 1500m is above the limit 1 "
        "(EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU)" in msg
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("12Gi", str(12 * 1024**3)), ("1G", "1000000000"),
     ("5e3", "5000"), ("1k", "1000"), ("100Ki", "102400"), (".5", "0.5"), ("+1", "1")],
)
def test_quantities_parse_as_the_api_reads_them(text: str, value: str) -> None:
    from decimal import Decimal

    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["12Gx", "1.2.3", "", "Gi", "1 Gi", "0x10", "1KiB", "1e"])
def test_malformed_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_job_limits_as_quantities() -> None:
    assert [cpu_quantity(c) for c in (4, 0.25, 1.5, 16)] == ["4", "250m", "1500m", "16"]
    assert [memory_quantity(m) for m in (12 * 1024**3, 512 * 1024**2, 1536 * 1024, 1000)] == [
        "12Gi",
        "512Mi",
        "1536Ki",
        "1000",
    ]


# -- git CA ---------------------------------------------------------------------------------------------
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_git_ca_cert_is_read_at_start(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(PEM)
    assert k8s(KUBERNETES_GIT_CA_CERT=str(ca)).git_ca_pem == PEM


def test_a_bad_git_ca_cert_is_refused(tmp_path: Path) -> None:
    assert "KUBERNETES_GIT_CA_CERT: cannot read" in problem(KUBERNETES_GIT_CA_CERT=str(tmp_path / "none.crt"))
    (tmp_path / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + SECRETISH.encode() + b"\n")
    msg = problem(KUBERNETES_GIT_CA_CERT=str(tmp_path / "key.pem"))
    assert "KUBERNETES_GIT_CA_CERT:" in msg and "holds no PEM certificate" in msg and SECRETISH not in msg
    (tmp_path / "big.pem").write_bytes(PEM + b"x" * (300 * 1024))
    assert "is larger than" in problem(KUBERNETES_GIT_CA_CERT=str(tmp_path / "big.pem"))


# -- the Role -----------------------------------------------------------------------------------------------
def test_the_role_allows_exactly_what_the_runtime_needs() -> None:
    allowed = {
        (verb, rule.api_groups[0], resource)
        for rule in rbac.load_role()
        for resource in rule.resources
        for verb in rule.verbs
    }
    assert allowed == {
        ("create", "batch", "jobs"),
        ("delete", "batch", "jobs"),
        ("list", "batch", "jobs"),
        ("get", "", "pods"),
        ("list", "", "pods"),
        ("watch", "", "pods"),
        ("get", "", "pods/log"),
        ("create", "", "secrets"),
        ("delete", "", "secrets"),
        ("create", "", "persistentvolumeclaims"),
        ("delete", "", "persistentvolumeclaims"),
        ("list", "", "events"),
    }
    assert all(len(r.api_groups) == 1 and not r.resource_names for r in rbac.load_role())


@pytest.mark.parametrize(
    ("call", "ok"),
    [
        (("get", "", "pods", "log"), True),
        (("get", "", "pods", ""), True),
        (("create", "", "pods", ""), False),  # the Job controller makes pods, never the executor
        (("delete", "", "pods", ""), False),
        (("create", "", "pods", "exec"), False),
        (("get", "", "pods", "exec"), False),
        (("get", "", "secrets", ""), False),  # the executor never reads a Secret back
        (("list", "", "secrets", ""), False),
        (("create", "", "secrets", ""), True),
        (("create", "batch", "jobs", ""), True),
        (("get", "batch", "jobs", ""), False),
        (("patch", "batch", "jobs", ""), False),
        (("create", "", "jobs", ""), False),  # wrong group
        (("create", "batch", "cronjobs", ""), False),
        (("list", "", "events", ""), True),
        (("create", "", "events", ""), False),
        (("get", "", "nodes", ""), False),
        (("create", "", "namespaces", ""), False),
    ],
)
def test_allows_answers_as_the_rbac_authorizer(call: tuple[str, str, str, str], ok: bool) -> None:
    assert rbac.allows(*call) is ok


def test_the_role_manifest_is_a_role_for_kubectl() -> None:
    role = rbac.role_manifest()
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1" and role["kind"] == "Role"
    assert role["metadata"]["name"] == "corral-executor"
    text = (Path(rbac.__file__).parent / rbac.ROLE_FILE).read_text()
    # every rule carries a comment saying why
    blocks = text.split("  - apiGroups:")[1:]
    before = text.split("  - apiGroups:")
    assert len(blocks) == len(role["rules"]) == 6
    assert all(part.rstrip().splitlines()[-1].strip().startswith("#") for part in before[:-1])


def test_wildcards_and_subresources_follow_kubernetes_rules() -> None:
    rule = rbac.Rule(api_groups=("*",), resources=("*/log",), verbs=("get",))
    assert rule.allows("get", "", "pods", "log") and not rule.allows("get", "", "pods")
    rule = rbac.Rule(api_groups=("",), resources=("pods",), verbs=("*",), resource_names=("a",))
    assert rule.allows("delete", "", "pods", name="a") and not rule.allows("delete", "", "pods", name="b")


# -- start-up checks of the executor's host ------------------------------------------------------------
async def test_the_host_checks_do_not_hold_pod_jobs_to_this_hosts_limits(tmp_path: Path) -> None:
    from corral.executor.hostcheck import HostFacts, check_host

    small = HostFacts(cpus=1, memory=1024**3)
    env = {
        "EXECUTOR_JOB_MEMORY": "64G",  # far above this host's 1G: the pods' nodes hold it
        "EXECUTOR_WORKSPACE_ROOT": str(tmp_path / "nowhere" / "file" / "x"),
        "EXECUTOR_JOB_UID_LOCK_DIR": str(tmp_path / "locks"),
    }
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "file").write_text("not a directory")
    found = await check_host(settings(**env), small)
    assert found.problems == [] and not any("EXECUTOR_JOB" in w for w in found.warnings)
    docker = await check_host(settings(EXECUTOR_RUNTIME="docker", **env), small)
    assert any("EXECUTOR_JOB_MEMORY=64G is more than this host's memory" in p for p in docker.problems)
    assert any("EXECUTOR_WORKSPACE_ROOT" in p for p in docker.problems)


@pytest.mark.parametrize("name", ["KUBERNETES_KEEP_JOBS", "KUBERNETES_SINGLE_JOB_POD"])
def test_kubernetes_booleans_take_gos_forms_only(name: str) -> None:
    field = {"KUBERNETES_KEEP_JOBS": "keep_jobs", "KUBERNETES_SINGLE_JOB_POD": "single_job_pod"}[name]
    for value in ("1", "T", "True", "0", "f", "FALSE"):
        assert getattr(k8s(**{name: value}), field) is (value in ("1", "T", "True"))
    for value in ("yes", "on", "tRuE", " true", "false\t"):
        assert f"{name}: {value!r} is not a boolean" in problem(**{name: value})
