"""The Kubernetes objects of one job attempt, as plain JSON-ready dicts. Pure: no I/O, no API calls.

`job_objects(settings, executor, space, plan, staged)` is what the runtime creates, in order:
`first` (the Secret, then the per-job PVC in pvc mode) and `jobs` (one batch/v1 Job; in multi-pod
mode, KUBERNETES_SINGLE_JOB_POD=false, one per step, run one after the other).

Names (`job_names`): `corral-<owner>-<queue>-<id>-<attempt>`, lowercased, `_` -> `-`; when that is
not already a DNS-1123 label of at most BASE_NAME_MAX characters it is cut and a hash of the exact
parts is appended (also when the queue has a dash: the exact name would be ambiguous), so distinct
jobs never share a name, whatever their owner. The Secret is `<job>-secrets`, the PVC
`<job>-pvc`, the step Jobs of multi-pod mode `<job>-s<index>`. Labels (`job_labels`):
dev.corral.managed=true, dev.corral.job=<queue>-<id>, dev.corral.owner=<EXECUTOR_VM_PREFIX>,
dev.corral.executor=<executor name>, dev.corral.attempt=<n>, dev.corral.job-id=<id>, each through
`label_value` (a value that is not a valid label value is cut and hashed the same way; the janitor
must compare `label_value(x)`, not x).

The pod (single-pod mode):
- volumes: `job-data` (emptyDir with sizeLimit KUBERNETES_JOB_VOLUME_SIZE, or the per-job PVC):
  setup mounts its root at podside.SETUP_ROOT and makes `workspace` and `meta.git` in it (so both
  belong to the pod's user: git's ownership check needs no safe.directory); later containers mount
  the subPaths `workspace` (at /data, every container) and `meta.git` (the diff's git dir, at
  META_MOUNT in main only, never in a step); `job-secrets` (the Secret's token, job.json, files and
  CA, in the setup container only); `job-config` (job.json alone, for main);
  `job-scripts` (the step scripts alone, read-only at SCRIPTS_MOUNT in the steps); `job-tmp` (an
  emptyDir at /tmp of setup, main and CLI steps, whose root filesystems are read-only); then
  KUBERNETES_ADDITIONAL_JOB_VOLUMES (their mounts go into every step container);
- init containers: `setup-workspace` (KUBERNETES_SINGLE_JOB_STEP_IMAGE, `podside clone`), then one
  per step in order (docker steps in their image, CLI steps in the step image running `corral`);
- the container `main` (the step image, `podside collect`: the Results on its stdout).
setup and main run podside with workingDir "/" and `python3 -P -s` (podside.CLONE_COMMAND): nothing
is imported from the workspace (the image's WORKDIR) or from HOME=/tmp, which CLI steps share.
Every step's environment value is a secretKeyRef into the Secret: no value of a step's env, the
token or a file is ever in the Job. Pod security: non-root (KUBERNETES_RUN_AS_USER/GROUP, else
1000), fsGroup, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault,
read-only root for setup, main and CLI steps, no service account token, no service links,
runtimeClassName when set.

Multi-pod mode: the workspace is a PVC shared by the step Jobs (the per-job PVC in pvc mode, else
EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME, of which each job sees only `<job>/`); Job 0 runs
setup as an init container, every Job runs its step, and the last one runs its step as an init container
followed by `main`.

The Secret (keys `token`, `job.json`, `file-<n>`: podside.pod_secret's layout; `git-ca.crt`, the
script names, `env-<step>-<n>`) is bounded at MAX_SECRET bytes (keys + values, as the API counts
them): a larger job is a ManifestError before anything is created.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from corral.errors import CorralError
from corral.executor.runtimes.base import (
    LABEL_MANAGED,
    LABEL_OWNER,
    META_MOUNT,
    SCRIPTS_MOUNT,
    WORKSPACE_MOUNT,
    JobSpace,
    Step,
)
from corral.executor.runtimes.kubernetes.settings import DEFAULT_STEP_IMAGE, KubernetesSettings
from corral.protocol import check_workspace_dir

if TYPE_CHECKING:
    from corral.executor.plan import CloneSpec, JobPlan
    from corral.executor.settings import ExecutorSettings

__all__ = [
    "BASE_NAME_MAX",
    "CONFIG_MOUNT",
    "LABEL_ATTEMPT",
    "LABEL_EXECUTOR",
    "LABEL_JOB_ID",
    "LABEL_STEP",
    "MAIN_CONTAINER",
    "MAX_SECRET",
    "PODSIDE",
    "SECRETS_MOUNT",
    "SETUP_CONTAINER",
    "JobNames",
    "JobObjects",
    "ManifestError",
    "companions",
    "container_name",
    "job_labels",
    "job_names",
    "job_objects",
    "label_value",
    "live_labels",
    "owner_selector",
    "pvc_manifest",
    "registry_secret_manifest",
    "secret_manifest",
]

LABEL_EXECUTOR = "dev.corral.executor"
LABEL_ATTEMPT = "dev.corral.attempt"
LABEL_JOB_ID = "dev.corral.job-id"  # the job's id alone: LABEL_JOB of a long queue name is hashed (reattach)
LABEL_STEP = "dev.corral.step"  # multi-pod mode: the step Job's index
BASE_NAME_MAX = 52  # characters of a job's name: room for "-s<index>" within a label's 63
MAX_SECRET = 900 * 1024  # bytes of the job's Secret (keys + values); the API refuses more than 1 MiB
HASH_CHARS = 8  # hex digits of the hash that keeps a shortened name unique
SETUP_CONTAINER = "setup-workspace"
MAIN_CONTAINER = "main"
SECRETS_MOUNT = "/.corral-secrets"  # setup: token, job.json, files, CA
CONFIG_MOUNT = "/.corral-job"  # main: job.json
TMP_SIZE = "256Mi"  # the /tmp emptyDir of containers with a read-only root
PODSIDE = "corral.executor.runtimes.kubernetes.podside"
POD_CLI = "corral"  # corral's CLI in the step image: what CLI steps run
SECRET_FILE_MODE = 0o440  # owner root, group fsGroup
OPEN_FILE_MODE = 0o444  # scripts; the Secret's files when there is no fsGroup
# keys of the Secret
KEY_TOKEN = "token"
REGISTRY_SUFFIX = "-registry"  # the job's registry credentials Secret: <job>-registry
KEY_CONFIG = "job.json"
KEY_CA = "git-ca.crt"
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")  # what every API version takes (C_IDENTIFIER+)
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


class ManifestError(CorralError):
    """The job cannot be expressed as Kubernetes objects (too large a Secret, a bad env name)."""


class StagedLike(Protocol):
    """What the pod workspace staged for the job (corral.executor.runtimes.kubernetes.workspace)."""

    token: str
    clone: CloneSpec | None
    repository_directory: str
    files: dict[str, bytes]
    scripts: dict[str, str]


@dataclass(frozen=True)
class JobNames:
    job: str  # the (first) Job, and the base of every other name
    secret: str
    pvc: str

    def step_job(self, index: int) -> str:
        """The Job of step `index` in multi-pod mode."""
        return f"{self.job}-s{index}"


@dataclass
class JobObjects:
    names: JobNames
    # (kind, body) of the Secret and PVC: made right after the first Job, owned by it
    first: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # in order
    # container name -> the step it runs (setup and main: None), in the order they run
    containers: list[tuple[str, Step | None]] = field(default_factory=list)
    log_nonce: str = ""  # podside's clone log marks each git command's section with it (CloneLog)


# -- names and labels -------------------------------------------------------------------------------
def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:HASH_CHARS]


def job_names(owner: str, queue: str, job_id: int, attempt: int) -> JobNames:
    """The names of one job attempt's objects (see the module docstring)."""
    exact = f"corral-{owner}-{queue}-{job_id}-{attempt}"
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", exact.lower())).strip("-")
    # a queue with a dash makes the exact name ambiguous: owner "a-b" queue "c" and owner "a" queue
    # "b-c" are both corral-a-b-c-<id>-<attempt> (two executors of one namespace took each other's Job)
    if name != exact or len(name) > BASE_NAME_MAX or "-" in queue:
        tail = f"-{_digest(owner, queue, job_id, attempt)}"
        name = name[: BASE_NAME_MAX - len(tail)].rstrip("-") + tail
    return JobNames(job=name, secret=f"{name}-secrets", pvc=f"{name}-pvc")


def companions(job: str) -> list[tuple[str, str]]:
    """The objects that go with Job `job` (any of one attempt's Jobs): (kind, name), for the janitor."""
    base = re.sub(r"-s\d+$", "", job)
    return [
        ("secrets", f"{base}-secrets"),
        ("secrets", f"{base}{REGISTRY_SUFFIX}"),
        ("persistentvolumeclaims", f"{base}-pvc"),
    ]


def label_value(value: str) -> str:
    """`value` when it is a valid label value, else its valid part cut short and a hash of it."""
    if len(value) <= 63 and _LABEL_VALUE.fullmatch(value):
        return value
    tail = _digest(value)
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[: 63 - HASH_CHARS - 1]
    clean = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", clean)
    return f"{clean}-{tail}" if clean else tail


def owner_selector(owner: str) -> str:
    """The label selector of everything executors with EXECUTOR_VM_PREFIX `owner` created."""
    return f"{LABEL_MANAGED}=true,{LABEL_OWNER}={label_value(owner)}"


def live_labels(live: Iterable[str]) -> set[str]:
    """The LABEL_JOB values of the running jobs `live` (JobSpace.labels' "<queue>-<id>") as they
    appear on the objects: what the janitor compares the objects' labels with."""
    return {label_value(v) for v in live}


def job_labels(space: JobSpace) -> dict[str, str]:
    """The labels of everything one job attempt creates (JobSpace.labels, plus executor and attempt)."""
    labels = {k: label_value(v) for k, v in space.labels.items()}
    labels[LABEL_EXECUTOR] = label_value(space.executor_name) if space.executor_name else ""
    labels[LABEL_ATTEMPT] = str(space.attempt)
    labels[LABEL_JOB_ID] = str(space.job_id)
    return {k: v for k, v in labels.items() if v}


def container_name(step: Step, taken: set[str]) -> str:
    """The step's container: its key with '.' -> '-' ("step.docker.0" -> "step-docker-0") when that
    is a DNS-1123 label not yet taken, else step-<index>."""
    name = step.key.replace(".", "-").lower()
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name) or name in taken:
        name = f"step-{step.index}"
    taken.add(name)
    return name


def step_containers(plan: JobPlan) -> list[tuple[str, Step]]:
    """(container name, step) of the plan's steps, in order: the same names for the same plan."""
    taken = {SETUP_CONTAINER, MAIN_CONTAINER}
    return [(container_name(s, taken), s) for s in plan.steps]


# -- the Secret and the PVC -------------------------------------------------------------------------
def secret_manifest(
    names: JobNames, namespace: str, labels: Mapping[str, str], data: Mapping[str, bytes]
) -> dict[str, Any]:
    """The job's Opaque Secret; ManifestError past MAX_SECRET or for a key the API refuses."""
    size = 0
    for key, value in data.items():
        if not _SECRET_KEY.fullmatch(key):
            raise ManifestError(f"{key[:80]!r} cannot be a key of a Secret")
        size += len(key) + len(value)
    if size > MAX_SECRET:
        raise ManifestError(
            f"the job's Secret would hold {size} bytes (its token, step scripts, step environment "
            f"values and files); the kubernetes runtime allows at most {MAX_SECRET} (the API refuses "
            "objects over 1 MiB): move large inputs into the repository or an image"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.secret, "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
        "immutable": True,
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
    }


def pvc_manifest(names: JobNames, namespace: str, labels: Mapping[str, str], size: str) -> dict[str, Any]:
    """The per-job PVC of KUBERNETES_JOB_VOLUME_TYPE=pvc (the cluster's default storage class)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": names.pvc, "namespace": namespace, "labels": dict(labels)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def registry_secret_manifest(
    names: JobNames, namespace: str, labels: Mapping[str, str], auths: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The job's own registry credentials (its dockerAuthConfig, one docker config "auths" entry per
    registry) as a kubernetes.io/dockerconfigjson Secret `<job>-registry`, for the pods'
    imagePullSecrets: the kubelet pulls the job's images with them; no container ever sees them."""
    config = json.dumps({"auths": {r: dict(e) for r, e in auths.items()}}, sort_keys=True).encode()
    if len(config) > MAX_SECRET:
        raise ManifestError(f"the job's registry credentials are larger than {MAX_SECRET} bytes")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{names.job}{REGISTRY_SUFFIX}", "namespace": namespace, "labels": dict(labels)},
        "type": "kubernetes.io/dockerconfigjson",
        "immutable": True,
        "data": {".dockerconfigjson": base64.b64encode(config).decode("ascii")},
    }


# -- the whole job ----------------------------------------------------------------------------------
def job_objects(
    settings: KubernetesSettings,
    executor: ExecutorSettings,
    space: JobSpace,
    plan: JobPlan,
    staged: StagedLike,
) -> JobObjects:
    """Everything the runtime creates for one job attempt (see the module docstring)."""
    if not staged.token and staged.clone is not None:  # only the clone needs it
        raise ManifestError(
            "the server issued no job token for this job: the kubernetes runtime never gives the "
            "executor's own secret to a pod (use a server that issues job tokens)"
        )
    names = job_names(space.owner, space.queue, space.job_id, space.attempt)
    labels = job_labels(space)
    ns = settings.namespace
    data, env_keys, nonce = _secret_data(settings, executor, space, plan, staged)
    objects = JobObjects(names=names, log_nonce=nonce)
    objects.first.append(("secrets", secret_manifest(names, ns, labels, data)))
    if settings.job_volume_type == "pvc":
        pvc = pvc_manifest(names, ns, labels, settings.job_volume_size)
        objects.first.append(("persistentvolumeclaims", pvc))
    pod = _PodParts(settings, executor, space, plan, staged, names, env_keys, data)
    steps = [(s, c) for c, s in step_containers(plan)]
    if settings.single_job_pod:
        init = [pod.setup(), *(pod.step(s, c) for s, c in steps)]
        objects.jobs.append(pod.job(names.job, labels, init, [pod.main()]))
        objects.containers = [(SETUP_CONTAINER, None), *((c, s) for s, c in steps), (MAIN_CONTAINER, None)]
        return objects
    objects.containers.append((SETUP_CONTAINER, None))
    if not steps:
        objects.jobs.append(pod.job(names.step_job(0), labels, [pod.setup()], [pod.main()], step=0))
    for i, (s, c) in enumerate(steps):
        init = [pod.setup()] if i == 0 else []
        last = i == len(steps) - 1
        if last:
            job = pod.job(names.step_job(i), labels, [*init, pod.step(s, c)], [pod.main()], step=i)
        else:
            job = pod.job(names.step_job(i), labels, init, [pod.step(s, c)], step=i)
        objects.jobs.append(job)
        objects.containers.append((c, s))
    objects.containers.append((MAIN_CONTAINER, None))
    return objects


def _secret_data(
    settings: KubernetesSettings,
    executor: ExecutorSettings,
    space: JobSpace,
    plan: JobPlan,
    staged: StagedLike,
) -> tuple[dict[str, bytes], dict[tuple[int, str], str], str]:
    """The Secret's data, which key holds each (step index, env name)'s value, and the clone log's
    nonce. The token, job.json and the files are podside's (`podside.pod_secret`)."""
    from corral.executor.runtimes.kubernetes import podside  # token, job.json and files: podside's layout

    ca_path = f"{SECRETS_MOUNT}/{KEY_CA}" if settings.git_ca_pem else None
    spec, items = podside.pod_secret(
        plan,
        token=staged.token,
        executor_name=space.executor_name,
        frontend_url=settings.frontend_url or executor.frontend_url,
        files=dict(sorted(staged.files.items())),
        git_ca_cert=ca_path,
    )
    data: dict[str, bytes] = dict(items)
    if settings.git_ca_pem:
        data[KEY_CA] = settings.git_ca_pem
    for script, text in staged.scripts.items():
        if script in data or not _SECRET_KEY.fullmatch(script) or script.startswith(("env-", "file-")):
            raise ManifestError(f"step script name {script[:80]!r} cannot be a key of the job's Secret")
        data[script] = text.encode()
    env_keys: dict[tuple[int, str], str] = {}
    for step in plan.steps:
        for n, (name, value) in enumerate(step.env.items()):
            if not _ENV_NAME.fullmatch(name):
                raise ManifestError(
                    f"{step.key}: environment variable name {name[:80]!r} is not one Kubernetes takes "
                    "(letters, digits, '_', '-', '.', not starting with a digit)"
                )
            key = f"env-{step.index}-{n}"
            data[key] = value.encode()
            env_keys[(step.index, name)] = key
    return data, env_keys, spec.log_nonce


@dataclass
class _PodParts:
    """The parts of one job's pods (containers, volumes, the pod spec), built from its settings."""

    settings: KubernetesSettings
    executor: ExecutorSettings
    space: JobSpace
    plan: JobPlan
    staged: StagedLike
    names: JobNames
    env_keys: dict[tuple[int, str], str]
    data: dict[str, bytes]

    # -- mounts ------------------------------------------------------------------------------------
    def _sub(self, path: str) -> str:
        shared = not self.settings.single_job_pod and self.settings.job_volume_type != "pvc"
        return f"{self.names.job}/{path}" if shared else path

    def _root(self) -> dict[str, Any]:
        """The job volume's root (setup only: podside makes `workspace` and `meta.git` in it)."""
        from corral.executor.runtimes.kubernetes.podside import SETUP_ROOT

        shared = not self.settings.single_job_pod and self.settings.job_volume_type != "pvc"
        mount = {"name": "job-data", "mountPath": SETUP_ROOT}
        return {**mount, "subPath": self.names.job} if shared else mount

    def _workspace(self) -> dict[str, Any]:
        return {"name": "job-data", "mountPath": WORKSPACE_MOUNT, "subPath": self._sub("workspace")}

    def _meta(self) -> dict[str, Any]:
        return {"name": "job-data", "mountPath": META_MOUNT, "subPath": self._sub("meta.git")}

    def _tmp(self) -> dict[str, Any]:
        return {"name": "job-tmp", "mountPath": "/tmp"}

    def _workdir(self, step: Step) -> str:
        """/data/<step.dir>, as the docker runtime's (the dir is relative to the workspace)."""
        if not step.dir:
            return WORKSPACE_MOUNT
        try:
            norm = check_workspace_dir(step.dir)
        except ValueError as exc:
            raise ManifestError(f"{step.key}: dir: {exc}") from None
        return WORKSPACE_MOUNT if norm == "." else posixpath.join(WORKSPACE_MOUNT, norm)

    # -- containers --------------------------------------------------------------------------------
    def _security(self, *, read_only_root: bool) -> dict[str, Any]:
        return {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": read_only_root,
            "runAsNonRoot": True,
        }

    def _resources(self) -> dict[str, Any]:
        r = self.settings.resources(self.executor.job_num_cpus, self.executor.job_memory)
        return {k: v for k, v in r.items() if v}

    def _podside(self, command: str, *args: str) -> list[str]:
        """podside's command line (podside.CLONE_COMMAND / COLLECT_COMMAND: an interpreter that
        imports nothing from the current directory or HOME, which steps write)."""
        from corral.executor.runtimes.kubernetes import podside

        base = podside.CLONE_COMMAND if command == "clone" else podside.COLLECT_COMMAND
        return [*base, *args]

    def _image(self, image: str) -> dict[str, str]:
        """`image`, with imagePullPolicy Never for corral's default step image: corral/corral:1 is
        published on no registry (README: build images/corral.Dockerfile, push it, set
        KUBERNETES_SINGLE_JOB_STEP_IMAGE), so no kubelet may pull that short name from the registry
        it resolves to (docker.io), whose owner would get the setup container and its job token."""
        if image == DEFAULT_STEP_IMAGE:
            return {"image": image, "imagePullPolicy": "Never"}
        return {"image": image}

    def _podside_dir(self) -> str:
        """Not the image's WORKDIR (/data, the workspace a step may have filled)."""
        from corral.executor.runtimes.kubernetes.podside import WORKDIR

        return WORKDIR

    def setup(self) -> dict[str, Any]:
        return {
            "name": SETUP_CONTAINER,
            **self._image(self.settings.step_image),
            # podside makes workspace/ and meta.git/ in the volume's root itself (at SETUP_ROOT), so
            # both belong to the pod's user: git's ownership check then needs no safe.directory
            "command": self._podside(
                "clone", "--config", f"{SECRETS_MOUNT}/{KEY_CONFIG}", "--secrets", SECRETS_MOUNT
            ),
            "workingDir": self._podside_dir(),
            "env": [{"name": "HOME", "value": "/tmp"}],
            "resources": self._resources(),
            "securityContext": self._security(read_only_root=True),
            "volumeMounts": [
                self._root(),
                {"name": "job-secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
                self._tmp(),
            ],
        }

    def main(self) -> dict[str, Any]:
        return {
            "name": MAIN_CONTAINER,
            **self._image(self.settings.step_image),
            "command": self._podside(
                "collect",
                "--config", f"{CONFIG_MOUNT}/{KEY_CONFIG}",
                "--workspace", WORKSPACE_MOUNT,
                "--git-dir", META_MOUNT,
            ),
            "workingDir": self._podside_dir(),
            "env": [{"name": "HOME", "value": "/tmp"}],
            "resources": self._resources(),
            "securityContext": self._security(read_only_root=True),
            "volumeMounts": [
                self._workspace(),
                self._meta(),
                {"name": "job-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
                self._tmp(),
            ],
        }

    def step(self, step: Step, name: str) -> dict[str, Any]:
        env = [
            {
                "name": var,
                "valueFrom": {
                    "secretKeyRef": {"name": self.names.secret, "key": self.env_keys[(step.index, var)]}
                },
            }
            for var in step.env
        ]
        mounts = [
            self._workspace(),
            {"name": "job-scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True},
            *self.settings.additional_volume_mounts,
        ]
        if step.kind == "cli":
            image, command = self.settings.step_image, [POD_CLI, *step.argv[1:]]
            mounts.append(self._tmp())
            if "HOME" not in step.env:
                env.append({"name": "HOME", "value": "/tmp"})
        else:
            if not step.image:
                raise ManifestError(f"{step.key} has no image")
            image, command = step.image, list(step.argv)
        return {
            "name": name,
            **self._image(image),
            "command": command,
            "workingDir": self._workdir(step),
            "env": env,
            "resources": self._resources(),
            # docker steps' images may need to write to their root (as they can on every runtime)
            "securityContext": self._security(read_only_root=step.kind == "cli"),
            "volumeMounts": mounts,
        }

    # -- volumes and the pod -----------------------------------------------------------------------
    def _volumes(self) -> list[dict[str, Any]]:
        s = self.settings
        if s.job_volume_type == "pvc":
            data: dict[str, Any] = {"persistentVolumeClaim": {"claimName": self.names.pvc}}
        elif not s.single_job_pod:
            data = {"persistentVolumeClaim": {"claimName": s.persistence_volume_name}}
        else:
            data = {"emptyDir": {"sizeLimit": s.job_volume_size}}
        mode = SECRET_FILE_MODE if s.fs_group_id is not None else OPEN_FILE_MODE
        setup_keys = [k for k in self.data if k in (KEY_TOKEN, KEY_CONFIG, KEY_CA) or k.startswith("file-")]
        scripts = list(self.staged.scripts)
        volumes: list[dict[str, Any]] = [
            {"name": "job-data", **data},
            {"name": "job-secrets", "secret": self._secret_items(setup_keys, mode)},
            {"name": "job-config", "secret": self._secret_items([KEY_CONFIG], mode)},
            {"name": "job-tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        ]
        if scripts:
            volumes.append({"name": "job-scripts", "secret": self._secret_items(scripts, OPEN_FILE_MODE)})
        else:  # a mount needs its volume: an empty directory where the scripts would be
            volumes.append({"name": "job-scripts", "emptyDir": {"sizeLimit": "1Mi"}})
        return [*volumes, *s.additional_volumes]

    def _secret_items(self, keys: list[str], mode: int) -> dict[str, Any]:
        return {
            "secretName": self.names.secret,
            "defaultMode": mode,
            "items": [{"key": k, "path": k} for k in keys],
        }

    def _affinity(self) -> dict[str, Any]:
        s = self.settings
        affinity: dict[str, Any] = {}
        if s.node_match_expressions or s.node_match_fields:
            term: dict[str, Any] = {}
            if s.node_match_expressions:
                term["matchExpressions"] = s.node_match_expressions
            if s.node_match_fields:
                term["matchFields"] = s.node_match_fields
            affinity["nodeAffinity"] = {_REQUIRED: {"nodeSelectorTerms": [term]}}
        if s.pod_affinity:
            affinity["podAffinity"] = {_REQUIRED: s.pod_affinity}
        if s.pod_anti_affinity:
            affinity["podAntiAffinity"] = {_REQUIRED: s.pod_anti_affinity}
        return affinity

    def pod_spec(self, init: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.settings
        security: dict[str, Any] = {
            "runAsNonRoot": True,
            "runAsUser": s.uid,
            "runAsGroup": s.gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        if s.fs_group_id is not None:
            security["fsGroup"] = s.fs_group_id
            # the kubelet changes the volume's group only when its root's is not fsGroup already:
            # else every pod of a multi-pod job walks the whole shared PVC (every job's directory)
            security["fsGroupChangePolicy"] = "OnRootMismatch"
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": max(int(self.space.kill_grace), 0),
            "securityContext": security,
            "initContainers": init,
            "containers": containers,
            "volumes": self._volumes(),
        }
        if s.node_name:
            spec["nodeName"] = s.node_name
        if s.node_selector:
            spec["nodeSelector"] = dict(s.node_selector)
        if affinity := self._affinity():
            spec["affinity"] = affinity
        if s.tolerations:
            spec["tolerations"] = list(s.tolerations)
        if s.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
        if s.runtime_class_name:
            spec["runtimeClassName"] = s.runtime_class_name
        return spec

    def job(
        self,
        name: str,
        labels: Mapping[str, str],
        init: list[dict[str, Any]],
        containers: list[dict[str, Any]],
        *,
        step: int | None = None,
    ) -> dict[str, Any]:
        s = self.settings
        own = dict(labels)
        if step is not None:
            own[LABEL_STEP] = str(step)
        metadata: dict[str, Any] = {"name": name, "namespace": s.namespace, "labels": own}
        if s.job_annotations:
            metadata["annotations"] = dict(s.job_annotations)
        template_meta: dict[str, Any] = {"labels": own}
        if s.pod_annotations:
            template_meta["annotations"] = dict(s.pod_annotations)
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": {
                "backoffLimit": 0,
                "completions": 1,
                "parallelism": 1,
                "activeDeadlineSeconds": s.job_deadline,
                "template": {"metadata": template_meta, "spec": self.pod_spec(init, containers)},
            },
        }

