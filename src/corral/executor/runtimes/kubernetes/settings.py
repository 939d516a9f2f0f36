"""The kubernetes runtime's settings: Sourcegraph's EXECUTOR_KUBERNETES_* and KUBERNETES_* variables,
with Sourcegraph's names and defaults (protocol.md §5), plus corral's own:

- EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT (5m): a pod not scheduled by then fails the job with the
  scheduler's reason; EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT (5m): the same for an image that cannot
  be pulled (each budget counts on its own, neither is part of the other);
- EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME: the pods' runtimeClassName (e.g. gvisor);
- EXECUTOR_KUBERNETES_FRONTEND_URL: the corral server as pods reach it (default
  EXECUTOR_FRONTEND_URL);
- KUBERNETES_SINGLE_JOB_STEP_IMAGE defaults to corral's own image, corral/corral:1 (the setup and
  main containers run corral's podside program; Sourcegraph's batcheshelper cannot).

Resources (decided): each of EXECUTOR_KUBERNETES_RESOURCE_{LIMIT,REQUEST}_{CPU,MEMORY} that is set
wins for its own slot; an unset limit comes from EXECUTOR_JOB_NUM_CPUS / EXECUTOR_JOB_MEMORY (0 =
no limit), an unset request equals the effective limit (as the API server defaults it). With the
defaults the pod asks for and is limited to 4 CPUs and 12Gi (EXECUTOR_JOB_MEMORY's 12G = Sourcegraph's
12Gi). A request above its limit is refused at start, naming both variables.

Where the API's config comes from: the pod's service account when KUBERNETES_SERVICE_HOST and
KUBERNETES_SERVICE_PORT are set (`in_cluster`), else the kubeconfig at EXECUTOR_KUBERNETES_CONFIG_PATH.

Every problem is a line naming the variable (ExecutorSettings.from_env collects them); JSON and
label-like settings are checked as the API server would check them (corral.executor.runtimes.
kubernetes.shapes), and messages quote names and keys, never values (annotations and volumes may
hold credentials).
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from corral.executor.runtimes.kubernetes.shapes import (
    MAX_ANNOTATIONS,
    check_dns_label,
    check_dns_subdomain,
    check_label_value,
    check_qualified_name,
    check_shape,
    parse_quantity,
)
from corral.executor.settingsbase import Bool, EnvSettings, JsonObject
from corral.units import Duration

__all__ = [
    "DEFAULT_GID",
    "DEFAULT_STEP_IMAGE",
    "DEFAULT_UID",
    "MAX_CA_CERT",
    "CACert",
    "KubernetesSettings",
    "cpu_quantity",
    "memory_quantity",
]

DEFAULT_STEP_IMAGE = "corral/corral:1"  # KUBERNETES_SINGLE_JOB_STEP_IMAGE: runs podside (setup, main)
DEFAULT_UID = 1000  # pods' runAsUser when KUBERNETES_RUN_AS_USER is unset (-1): runAsNonRoot must hold
DEFAULT_GID = 1000  # pods' runAsGroup when KUBERNETES_RUN_AS_GROUP is unset (-1)
MAX_CA_CERT = 256 * 1024  # bytes of KUBERNETES_GIT_CA_CERT's file (a PEM bundle)
_UNSET = -1  # Sourcegraph's "unset" for the run-as ids and fsGroup
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_NODE_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
_FIELD_OPERATORS = ("In", "NotIn")  # matchFields: the API allows only these
_LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_PROPAGATIONS = ("None", "HostToContainer", "Bidirectional")
# Volumes and mounts the executor makes itself (manifests.py): an additional one may not take their
# names (the API refuses a pod with two volumes of one name) or paths.
RESERVED_VOLUMES = ("job-data", "job-secrets", "job-config", "job-scripts", "job-tmp")
RESERVED_MOUNTS = ("/data", "/.corral-steps", "/.corral-meta.git", "/.corral-secrets", "/tmp")


class CACert(BaseModel):
    """KUBERNETES_GIT_CA_CERT: the PEM file's path and its content, read and checked at start."""

    model_config = ConfigDict(frozen=True)
    path: str
    pem: bytes


class KubernetesSettings(EnvSettings):
    config_path: str = Field("~/.kube/config", validation_alias="EXECUTOR_KUBERNETES_CONFIG_PATH")
    namespace: str = Field("default", validation_alias="EXECUTOR_KUBERNETES_NAMESPACE")
    node_name: str = Field("", validation_alias="EXECUTOR_KUBERNETES_NODE_NAME")
    node_selector: dict[str, str] = Field(
        default_factory=dict, validation_alias="EXECUTOR_KUBERNETES_NODE_SELECTOR"
    )
    node_match_expressions: JsonObject = Field(
        default_factory=list, validation_alias="EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS"
    )
    node_match_fields: JsonObject = Field(
        default_factory=list, validation_alias="EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS"
    )
    pod_affinity: JsonObject = Field(
        default_factory=list, validation_alias="EXECUTOR_KUBERNETES_POD_AFFINITY"
    )
    pod_anti_affinity: JsonObject = Field(
        default_factory=list, validation_alias="EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY"
    )
    tolerations: JsonObject = Field(
        default_factory=list, validation_alias="EXECUTOR_KUBERNETES_NODE_TOLERATIONS"
    )
    persistence_volume_name: str = Field(
        "sg-executor-pvc", validation_alias="EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME"
    )
    # None: from EXECUTOR_JOB_NUM_CPUS / EXECUTOR_JOB_MEMORY (see the module docstring)
    limit_cpu: str | None = Field(None, validation_alias="EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU")
    limit_memory: str | None = Field(None, validation_alias="EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY")
    request_cpu: str | None = Field(None, validation_alias="EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU")
    request_memory: str | None = Field(None, validation_alias="EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY")
    job_deadline: int = Field(1200, gt=0, validation_alias="KUBERNETES_JOB_DEADLINE")  # seconds
    keep_jobs: Bool = Field(False, validation_alias="KUBERNETES_KEEP_JOBS")
    run_as_user: int = Field(_UNSET, validation_alias="KUBERNETES_RUN_AS_USER")  # -1: DEFAULT_UID
    run_as_group: int = Field(_UNSET, validation_alias="KUBERNETES_RUN_AS_GROUP")  # -1: DEFAULT_GID
    fs_group: int = Field(1000, validation_alias="KUBERNETES_FS_GROUP")  # -1: none
    single_job_pod: Bool = Field(True, validation_alias="KUBERNETES_SINGLE_JOB_POD")
    job_volume_type: Literal["emptyDir", "pvc"] = Field(
        "emptyDir", validation_alias="KUBERNETES_JOB_VOLUME_TYPE"
    )
    job_volume_size: str = Field("5Gi", validation_alias="KUBERNETES_JOB_VOLUME_SIZE")
    additional_volumes: JsonObject = Field(
        default_factory=list, validation_alias="KUBERNETES_ADDITIONAL_JOB_VOLUMES"
    )
    additional_volume_mounts: JsonObject = Field(
        default_factory=list, validation_alias="KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS"
    )
    step_image: str = Field(DEFAULT_STEP_IMAGE, validation_alias="KUBERNETES_SINGLE_JOB_STEP_IMAGE")
    git_ca_cert: CACert | None = Field(None, validation_alias="KUBERNETES_GIT_CA_CERT")  # a PEM file's path
    job_annotations: JsonObject = Field(default_factory=dict, validation_alias="KUBERNETES_JOB_ANNOTATIONS")
    pod_annotations: JsonObject = Field(
        default_factory=dict, validation_alias="KUBERNETES_JOB_POD_ANNOTATIONS"
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, validation_alias="KUBERNETES_IMAGE_PULL_SECRETS"
    )
    # corral's own
    scheduling_timeout: Duration = Field(
        300.0, gt=0, validation_alias="EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT"
    )
    image_pull_timeout: Duration = Field(
        300.0, gt=0, validation_alias="EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT"
    )
    runtime_class_name: str = Field("", validation_alias="EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME")
    # "": EXECUTOR_FRONTEND_URL
    frontend_url: str = Field(
        "", validation_alias="EXECUTOR_KUBERNETES_FRONTEND_URL"
    )
    # KUBERNETES_SERVICE_HOST and _PORT are set (by Kubernetes, in every pod): use the service account.
    # Set by ExecutorSettings.from_env, not read from a variable of its own.
    in_cluster: bool = False

    # -- names --------------------------------------------------------------------------------------
    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_dns_label(v, "namespace")

    @field_validator("node_name", "runtime_class_name")
    @classmethod
    def _subdomain(cls, v: str) -> str:
        return check_dns_subdomain(v) if v else v

    @field_validator("persistence_volume_name")
    @classmethod
    def _pvc_name(cls, v: str) -> str:
        return check_dns_subdomain(v, "PersistentVolumeClaim name")

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _pull_secrets(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list):
            for name in v:
                check_dns_subdomain(str(name), "secret name")
        return v

    @field_validator("step_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must be an image reference without blanks (e.g. corral/corral:1)")
        return v

    @field_validator("frontend_url")
    @classmethod
    def _frontend(cls, v: str) -> str:
        if not v:
            return v
        from corral.executor.settings import frontend_url  # that module imports this one

        return frontend_url(v)

    # -- scheduling ---------------------------------------------------------------------------------
    @field_validator("node_selector", mode="before")
    @classmethod
    def _selector(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        out: dict[str, str] = {}
        for part in (p.strip() for p in v.split(",")):
            key, eq, value = part.partition("=")
            if not part or not eq or "=" in value:
                raise ValueError("must be a comma-separated list of key=value pairs (e.g. disk=ssd,zone=a)")
            check_qualified_name(key.strip(), "label key")
            check_label_value(value.strip())
            out[key.strip()] = value.strip()
        return out

    @field_validator("node_match_expressions", "node_match_fields")
    @classmethod
    def _node_requirements(cls, v: Any, info: ValidationInfo) -> Any:
        fields = info.field_name == "node_match_fields"
        check_shape(v, "list[V1NodeSelectorRequirement]", "")
        for i, req in enumerate(v):
            _requirement(req, f"[{i}]", _FIELD_OPERATORS if fields else _NODE_OPERATORS, node=True)
        return v

    @field_validator("pod_affinity", "pod_anti_affinity")
    @classmethod
    def _pod_affinity(cls, v: Any) -> Any:
        check_shape(v, "list[V1PodAffinityTerm]", "")
        for i, term in enumerate(v):
            if not term.get("topologyKey"):
                raise ValueError(f"[{i}] has no topologyKey (every PodAffinityTerm needs one)")
            check_qualified_name(term["topologyKey"], f"[{i}].topologyKey")
            for sel in ("labelSelector", "namespaceSelector"):
                for j, req in enumerate((term.get(sel) or {}).get("matchExpressions") or []):
                    _requirement(req, f"[{i}].{sel}.matchExpressions[{j}]", _LABEL_OPERATORS, node=False)
                for key, value in ((term.get(sel) or {}).get("matchLabels") or {}).items():
                    check_qualified_name(key, f"[{i}].{sel}.matchLabels key")
                    check_label_value(value, f"[{i}].{sel}.matchLabels value")
            for ns in term.get("namespaces") or []:
                check_dns_label(ns, f"[{i}].namespaces entry")
        return v

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: Any) -> Any:
        check_shape(v, "list[V1Toleration]", "")
        for i, t in enumerate(v):
            op, effect, key = t.get("operator") or "Equal", t.get("effect") or "", t.get("key") or ""
            if op not in _TOLERATION_OPERATORS:
                raise ValueError(f"[{i}].operator must be Exists or Equal, not {op[:40]!r}")
            if effect and effect not in _TOLERATION_EFFECTS:
                raise ValueError(
                    f"[{i}].effect must be NoSchedule, PreferNoSchedule or NoExecute, not {effect[:40]!r}"
                )
            if key:
                check_qualified_name(key, f"[{i}].key")
            elif op != "Exists":
                raise ValueError(f"[{i}]: a toleration without a key must have operator Exists")
            if op == "Exists" and t.get("value"):
                raise ValueError(f"[{i}]: a toleration with operator Exists takes no value")
            if t.get("value"):
                check_label_value(t["value"], f"[{i}].value")
            if t.get("tolerationSeconds") is not None and effect != "NoExecute":
                raise ValueError(f"[{i}]: tolerationSeconds applies to effect NoExecute only")
        return v

    # -- resources ----------------------------------------------------------------------------------
    @field_validator("limit_cpu", "request_cpu", "limit_memory", "request_memory", "job_volume_size")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if parse_quantity(v) <= 0:
            raise ValueError(f"{v!r} must be a positive quantity")
        return v.strip()

    @field_validator("run_as_user", "run_as_group", "fs_group")
    @classmethod
    def _id(cls, v: int, info: ValidationInfo) -> int:
        if v < _UNSET:
            raise ValueError(f"{v} is not an id (-1 means unset)")
        if v == 0 and info.field_name != "fs_group":
            raise ValueError("0 is root: job pods run as non-root (runAsNonRoot); -1 means corral's 1000")
        return v

    # -- volumes, annotations, CA -------------------------------------------------------------------
    @field_validator("additional_volumes")
    @classmethod
    def _volumes(cls, v: Any) -> Any:
        check_shape(v, "list[V1Volume]", "")
        seen: set[str] = set()
        for i, vol in enumerate(v):
            name = vol.get("name")
            if not name:
                raise ValueError(f"[{i}] has no name")
            check_dns_label(name, f"[{i}].name")
            if name in RESERVED_VOLUMES or name in seen:
                raise ValueError(f"[{i}].name {name!r} is taken (by corral's own volumes or another entry)")
            seen.add(name)
            sources = [k for k, s in vol.items() if k != "name" and s is not None]
            if len(sources) != 1:
                raise ValueError(
                    f"[{i}] ({name}) must have exactly one volume type (configMap, secret, "
                    f"persistentVolumeClaim, ...), has {len(sources)}"
                )
        return v

    @field_validator("additional_volume_mounts")
    @classmethod
    def _mounts(cls, v: Any) -> Any:
        check_shape(v, "list[V1VolumeMount]", "")
        for i, m in enumerate(v):
            if not m.get("name"):
                raise ValueError(f"[{i}] has no name (the volume it mounts)")
            path = m.get("mountPath") or ""
            if not path.startswith("/"):
                raise ValueError(f"[{i}].mountPath must be an absolute path")
            normal = os.path.normpath(path)
            if normal == "/" or any(normal == r or normal.startswith(f"{r}/") for r in RESERVED_MOUNTS):
                raise ValueError(f"[{i}].mountPath {path[:80]!r} is or lies in a path corral mounts itself")
            prop = m.get("mountPropagation")
            if prop and prop not in _PROPAGATIONS:
                raise ValueError(f"[{i}].mountPropagation must be None, HostToContainer or Bidirectional")
            if prop == "Bidirectional":
                raise ValueError(f"[{i}].mountPropagation Bidirectional needs a privileged container")
        return v

    @field_validator("job_annotations", "pod_annotations")
    @classmethod
    def _annotations(cls, v: Any) -> Any:
        check_shape(v, "dict(str, str)", "")
        size = 0
        for key, value in v.items():
            check_qualified_name(key, "annotation key")
            size += len(key.encode()) + len(value.encode())
        if size > MAX_ANNOTATIONS:
            raise ValueError(f"holds {size} bytes; the API allows {MAX_ANNOTATIONS}")
        return v

    @field_validator("git_ca_cert", mode="before")
    @classmethod
    def _ca(cls, v: Any) -> Any:
        return CACert(path=v, pem=_read_ca(v)) if isinstance(v, str) else v

    # -- derived ------------------------------------------------------------------------------------
    @property
    def uid(self) -> int:
        return DEFAULT_UID if self.run_as_user == _UNSET else self.run_as_user

    @property
    def gid(self) -> int:
        return DEFAULT_GID if self.run_as_group == _UNSET else self.run_as_group

    @property
    def fs_group_id(self) -> int | None:
        return None if self.fs_group == _UNSET else self.fs_group

    @property
    def git_ca_pem(self) -> bytes | None:
        """KUBERNETES_GIT_CA_CERT's content (read and checked at start), for the job Secret."""
        return self.git_ca_cert.pem if self.git_ca_cert else None

    @property
    def kubeconfig(self) -> Path:
        return Path(os.path.expanduser(self.config_path))

    def resources(self, job_cpus: float, job_memory: int) -> dict[str, dict[str, str]]:
        """The containers' `resources`: {"limits": {...}, "requests": {...}} (see the module docstring)."""
        limits: dict[str, str] = {}
        requests: dict[str, str] = {}
        cpu = self.limit_cpu or (cpu_quantity(job_cpus) if job_cpus > 0 else None)
        memory = self.limit_memory or (memory_quantity(job_memory) if job_memory > 0 else None)
        for name, limit, request in (("cpu", cpu, self.request_cpu), ("memory", memory, self.request_memory)):
            if limit is not None:
                limits[name] = limit
            if request or limit:
                requests[name] = request or limit or ""
        return {"limits": limits, "requests": requests}

    def problems(self, job_cpus: float, job_memory: int) -> list[str]:
        """What only the settings together show, one line each naming the variables: a request above
        its limit (the API would refuse every pod), a mount of a volume no setting defines."""
        problems = []
        mounted = {m["name"] for m in self.additional_volume_mounts}
        missing = sorted(mounted - {v["name"] for v in self.additional_volumes})
        if missing:
            problems.append(
                f"KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS: mounts volume(s) {', '.join(missing)} that "
                "KUBERNETES_ADDITIONAL_JOB_VOLUMES does not define"
            )
        r = self.resources(job_cpus, job_memory)
        for name, job_var in (("cpu", "EXECUTOR_JOB_NUM_CPUS"), ("memory", "EXECUTOR_JOB_MEMORY")):
            limit, request = r["limits"].get(name), r["requests"].get(name)
            if limit and request and parse_quantity(request) > parse_quantity(limit):
                unit = name.upper()
                own = getattr(self, f"limit_{name}") is not None
                source = f"EXECUTOR_KUBERNETES_RESOURCE_LIMIT_{unit}" if own else job_var
                problems.append(
                    f"EXECUTOR_KUBERNETES_RESOURCE_REQUEST_{unit}: {request} is above the limit {limit} "
                    f"({source})"
                )
        return problems


def _requirement(req: dict[str, Any], where: str, operators: tuple[str, ...], *, node: bool) -> None:
    key, op, values = req.get("key") or "", req.get("operator") or "", req.get("values") or []
    if not key:
        raise ValueError(f"{where} has no key")
    if node and operators is _FIELD_OPERATORS:
        if key not in ("metadata.name",):
            raise ValueError(f"{where}.key: matchFields supports only metadata.name, not {key[:80]!r}")
    else:
        check_qualified_name(key, f"{where}.key")
    if op not in operators:
        raise ValueError(f"{where}.operator must be one of {', '.join(operators)}, not {op[:40]!r}")
    if op in ("In", "NotIn") and not values:
        raise ValueError(f"{where}: operator {op} needs values")
    if op in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"{where}: operator {op} takes no values")
    if op in ("Gt", "Lt"):
        if len(values) != 1 or not str(values[0]).lstrip("-").isdigit():
            raise ValueError(f"{where}: operator {op} needs exactly one whole-number value")
    elif node and operators is _FIELD_OPERATORS and len(values) != 1:
        raise ValueError(f"{where}: a matchFields requirement takes exactly one value")
    else:
        for value in values:
            check_label_value(value, f"{where}.values entry")


def _read_ca(path: str) -> bytes:
    """The PEM bundle at `path` (bounded), checked to hold at least one certificate."""
    real = Path(os.path.expanduser(path))
    try:
        with real.open("rb") as f:
            data = f.read(MAX_CA_CERT + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if len(data) > MAX_CA_CERT:
        raise ValueError(f"{path!r} is larger than {MAX_CA_CERT} bytes")
    if _PEM_BEGIN not in data:
        raise ValueError(f"{path!r} holds no PEM certificate ({_PEM_BEGIN.decode()})")
    return data


def cpu_quantity(cpus: float) -> str:
    """EXECUTOR_JOB_NUM_CPUS as a quantity: "4", "1.5" -> "1500m"."""
    milli = round(Decimal(str(cpus)) * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(size: int) -> str:
    """Bytes as the largest binary unit that states them exactly: 12G (12 * 1024**3) -> "12Gi"."""
    for unit, power in (("Ti", 4), ("Gi", 3), ("Mi", 2), ("Ki", 1)):
        if size % (1024**power) == 0:
            return f"{size // 1024**power}{unit}"
    return str(size)
