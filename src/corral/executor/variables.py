"""The one table of the environment variables an executor knows, and the runtimes that honour each.

It holds every variable of Sourcegraph's executor (`Config.Load` in
cmd/executor/internal/config/config.go of sourcegraph/sourcegraph-public-snapshot) and corral's own.
The settings models (ExecutorSettings, each runtime's settings) read the variables; this table says
which runtime honours which, so that start-up can warn instead of ignoring a variable silently:

- a variable no runtime honours yet (Sourcegraph's firecracker and kubernetes ones, node exporters):
  "EXECUTOR_X is recognised but not supported by the docker runtime yet: ignored";
- a variable of another runtime (EXECUTOR_DOCKER_* with EXECUTOR_RUNTIME=shell): "... applies to the
  docker runtime only ...";
- an EXECUTOR_* name that is not in the table (a typo): "... did you mean EXECUTOR_MAXIMUM_NUM_JOBS?".

A runtime marks a variable supported by adding its registry name to the entry's `runtimes` (EVERY:
all runtimes). tests/unit/test_executor_settings.py keeps the table honest: every variable a
settings model reads is in it and honoured by some runtime, every honoured variable is read by
a settings model, and every default here is the settings' default.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EVERY", "VARIABLES", "Variable", "env_warnings", "honoured", "unknown_variable"]

EVERY = "*"  # in Variable.runtimes: honoured by every runtime
K8S = "kubernetes"
# Variables Kubernetes injects into every pod for a Service named "executor" (service links), and
# Docker's legacy links: never an operator's setting, never warned about.
_SERVICE_LINK = re.compile(r"EXECUTOR_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)")
_SUGGEST_CUTOFF = 0.8  # difflib ratio from which a known name is offered as "did you mean"


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as the README shows it; "" = unset, required, computed or an older name's
    meaning: str
    runtimes: frozenset[str]  # registry names of the runtimes that honour it; {EVERY}; empty: none yet
    sourcegraph: bool = True  # one of Sourcegraph's (config.go); False: corral's own


def _v(name: str, default: str, meaning: str, *runtimes: str, sourcegraph: bool = True) -> Variable:
    return Variable(name, default, meaning, frozenset(runtimes), sourcegraph)


def _corral(name: str, default: str, meaning: str, *runtimes: str) -> Variable:
    return _v(name, default, meaning, *runtimes, sourcegraph=False)


_TABLE = (
    # -- Sourcegraph's, honoured by every runtime --------------------------------------------------
    _v("EXECUTOR_FRONTEND_URL", "", "the server's URL, scheme://host[:port][/path prefix]", EVERY),
    _v("EXECUTOR_FRONTEND_PASSWORD", "", "the shared secret (the server's EXECUTORS_ACCESS_TOKEN)", EVERY),
    _v("EXECUTOR_QUEUE_NAME", "", "the queue to take jobs from", EVERY),
    _v("EXECUTOR_QUEUE_NAMES", "", "several queues, comma-separated", EVERY),
    _v("EXECUTOR_QUEUE_POLL_INTERVAL", "1s", "wait between empty dequeues", EVERY),
    _v("EXECUTOR_MAXIMUM_NUM_JOBS", "1", "jobs at once", EVERY),
    # Sourcegraph: true on Linux outside Kubernetes; corral: false (docker stays the default runtime)
    _v("EXECUTOR_USE_FIRECRACKER", "false", "true means EXECUTOR_RUNTIME=firecracker", EVERY),
    _v("EXECUTOR_VM_PREFIX", "executor", "owner label of everything this executor creates", EVERY),
    _v("EXECUTOR_KEEP_WORKSPACES", "false", "keep workspaces after jobs", EVERY),
    _v("EXECUTOR_JOB_NUM_CPUS", "4", "CPUs per job; 0 = unbounded", EVERY),
    _v("EXECUTOR_FIRECRACKER_NUM_CPUS", "", "older name of EXECUTOR_JOB_NUM_CPUS", EVERY),
    _v("EXECUTOR_JOB_MEMORY", "12G", "memory per job; 0 = unbounded", EVERY),
    _v("EXECUTOR_FIRECRACKER_MEMORY", "", "older name of EXECUTOR_JOB_MEMORY", EVERY),
    # Sourcegraph's VM disk (20G); corral reads it as the job's disk when EXECUTOR_JOB_DISK_SPACE is unset
    _v("EXECUTOR_FIRECRACKER_DISK_SPACE", "", "fallback name of EXECUTOR_JOB_DISK_SPACE", EVERY),
    _v("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30m", "job deadline", EVERY),
    _v("EXECUTOR_CLEANUP_TASK_INTERVAL", "1m", "janitor interval", EVERY),
    _v("EXECUTOR_NUM_TOTAL_JOBS", "0", "stop after this many jobs (0 = never)", EVERY),
    _v("EXECUTOR_MAX_ACTIVE_TIME", "0", "stop after this long (0 = never)", EVERY),
    # -- Sourcegraph's, docker runtime ----------------------------------------------------------------
    _v("EXECUTOR_DOCKER_ADDITIONAL_MOUNTS", "", "';'-separated `docker run --mount` specs", "docker"),
    _v("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "false", "add host.docker.internal:host-gateway", "docker"),
    _v("EXECUTOR_DOCKER_AUTH_CONFIG", "", 'registry credentials, {"auths": {...}}', "docker"),
    _v("EXECUTOR_DOCKER_HOST_MOUNT_PATH", "", "the workspace as the Docker host sees it (docker-in-docker)"),
    # -- Sourcegraph's, not honoured by any corral runtime yet -----------------------------------------
    _v("EXECUTOR_FIRECRACKER_IMAGE", "sourcegraph/executor-vm:<version>", "VM base image"),
    _v("EXECUTOR_FIRECRACKER_KERNEL_IMAGE", "sourcegraph/ignite-kernel:5.10.135-amd64", "VM kernel image"),
    _v("EXECUTOR_FIRECRACKER_SANDBOX_IMAGE", "sourcegraph/ignite:v0.10.5", "ignite sandbox image"),
    _v("EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS", "524288000", "VM ingress, bytes/s"),
    _v("EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS", "524288000", "VM egress, bytes/s"),
    _v("EXECUTOR_VM_STARTUP_SCRIPT_PATH", "", "a host script run in each fresh VM"),
    _v("EXECUTOR_DOCKER_REGISTRY_MIRROR_URL", "", "registry mirrors of the VMs' dockerd, comma-separated"),
    _v("NODE_EXPORTER_URL", "", "node_exporter whose metrics ride in heartbeats"),
    _v("DOCKER_REGISTRY_NODE_EXPORTER_URL", "", "the registry's node_exporter, for heartbeats"),
    # -- Sourcegraph's, kubernetes runtime ------------------------------------------------------------
    _v("EXECUTOR_KUBERNETES_CONFIG_PATH", "~/.kube/config", "kubeconfig outside a cluster", K8S),
    _v("EXECUTOR_KUBERNETES_NAMESPACE", "default", "namespace of the job pods", K8S),
    _v("EXECUTOR_KUBERNETES_NODE_NAME", "", "pod.spec.nodeName", K8S),
    _v("EXECUTOR_KUBERNETES_NODE_SELECTOR", "", "node selector, k=v,k2=v2", K8S),
    _v(
        "EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS",
        "",
        "JSON NodeSelectorRequirements",
        K8S,
    ),
    _v("EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS", "", "JSON NodeSelectorRequirements", K8S),
    _v("EXECUTOR_KUBERNETES_POD_AFFINITY", "", "JSON PodAffinityTerms", K8S),
    _v("EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY", "", "JSON PodAffinityTerms", K8S),
    _v("EXECUTOR_KUBERNETES_NODE_TOLERATIONS", "", "JSON Tolerations", K8S),
    _v("EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME", "sg-executor-pvc", "shared PVC, multi-pod mode", K8S),
    # Sourcegraph's memory defaults are 12Gi; corral's come from EXECUTOR_JOB_NUM_CPUS / _MEMORY (12G = 12Gi)
    _v("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU", "", "job pod CPU limit (EXECUTOR_JOB_NUM_CPUS)", K8S),
    _v("EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY", "", "job pod memory limit (EXECUTOR_JOB_MEMORY)", K8S),
    _v("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU", "", "job pod CPU request (the CPU limit)", K8S),
    _v("EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY", "", "job pod memory request (the memory limit)", K8S),
    _v("KUBERNETES_JOB_DEADLINE", "1200", "seconds, the Job's activeDeadlineSeconds", K8S),
    _v("KUBERNETES_KEEP_JOBS", "false", "keep Jobs after they end", K8S),
    _v("KUBERNETES_RUN_AS_USER", "-1", "securityContext.runAsUser (-1: 1000)", K8S),
    _v("KUBERNETES_RUN_AS_GROUP", "-1", "securityContext.runAsGroup (-1: 1000)", K8S),
    _v("KUBERNETES_FS_GROUP", "1000", "securityContext.fsGroup (-1: none)", K8S),
    # Sourcegraph's config.go defaults this to "false" (and marks it "TODO remove in 5.2"), but the
    # seeds (the project's brief) say the newest Sourcegraph runs a job in a single pod by default, and
    # corral follows the seeds: true. false = one pod per step sharing a PVC. See the README.
    _v("KUBERNETES_SINGLE_JOB_POD", "true", "one pod per job (false: one pod per step)", K8S),
    _v("KUBERNETES_JOB_VOLUME_TYPE", "emptyDir", "emptyDir or pvc", K8S),
    _v("KUBERNETES_JOB_VOLUME_SIZE", "5Gi", "size of the job volume", K8S),
    _v("KUBERNETES_ADDITIONAL_JOB_VOLUMES", "", "JSON Volumes", K8S),
    _v("KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS", "", "JSON VolumeMounts", K8S),
    # Sourcegraph: sourcegraph/batcheshelper:insiders; corral's setup and main containers run corral
    _v("KUBERNETES_SINGLE_JOB_STEP_IMAGE", "corral/corral:1", "setup and main image", K8S),
    _v("KUBERNETES_GIT_CA_CERT", "", "a PEM file: git's http.sslCAInfo in the pod", K8S),
    _v("KUBERNETES_JOB_ANNOTATIONS", "", "JSON map, Job annotations", K8S),
    _v("KUBERNETES_JOB_POD_ANNOTATIONS", "", "JSON map, pod annotations", K8S),
    _v("KUBERNETES_IMAGE_PULL_SECRETS", "", "image pull secrets, comma-separated", K8S),
    # -- corral's own ------------------------------------------------------------------------------
    _corral(
        "EXECUTOR_RUNTIME",
        "docker",
        "shell, docker, firecracker, kubernetes (default in a pod: kubernetes)",
        EVERY,
    ),
    _corral(
        "EXECUTOR_LONG_POLL", "20s", "how long a corral server may hold a dequeue; 0 = short poll", EVERY
    ),
    _corral("EXECUTOR_JOB_PIDS", "1024", "processes per job", EVERY),
    _corral("EXECUTOR_JOB_DISK_SPACE", "20G", "disk per job; 0 = unbounded", EVERY),
    _corral("EXECUTOR_HEARTBEAT_INTERVAL", "5s", "heartbeat interval", EVERY),
    _corral("EXECUTOR_WORKSPACE_ROOT", "/var/lib/corral/workspaces", "where job directories are made", EVERY),
    _corral("EXECUTOR_JOB_USER", "", "a fixed UID[:GID] for every job (unset: a uid per job)", EVERY),
    _corral("EXECUTOR_JOB_UID_RANGE", "200000-265535", "uids handed to running jobs", EVERY),
    _corral("EXECUTOR_JOB_UID_LOCK_DIR", "/run/corral/job-uids", "per-uid lock files of this host", EVERY),
    _corral("EXECUTOR_KILL_GRACE", "10s", "SIGTERM -> SIGKILL of a canceled step", EVERY),
    _corral("EXECUTOR_SHUTDOWN_GRACE", "10m", "how long running jobs may take after SIGTERM", EVERY),
    _corral("EXECUTOR_LOG_MAX_BYTES", "8M", "per log entry; past it head and tail are kept", EVERY),
    _corral(
        "EXECUTOR_CLI_PATH",
        "",
        "corral's CLI for CLI steps of a corral server's jobs (corral on PATH)",
        EVERY,
    ),
    _corral(
        "EXECUTOR_SRC_CLI_PATH",
        "",
        "src-cli for CLI steps of a Sourcegraph server's jobs (src on PATH)",
        EVERY,
    ),
    _corral("EXECUTOR_NAME", "", "executor name (default <hostname>-<uuid>)", EVERY),
    _corral("EXECUTOR_USE_EXTENSIONS", "true", "use corral's extensions when the server offers them", EVERY),
    _corral(
        "EXECUTOR_NETWORK",
        "none",
        "network of jobs that ask: none, deny-private, open",
        "shell",
        "docker",
        "firecracker",
    ),
    _corral(
        "EXECUTOR_NETWORK_ALLOW",
        "",
        "CIDR[:port] reachable under deny-private, comma-separated",
        "shell",
        "docker",
        "firecracker",
    ),
    _corral(
        "EXECUTOR_NETWORK_ALL_JOBS", "false", "every job gets the network", "shell", "docker", "firecracker"
    ),
    _corral(
        "EXECUTOR_NETWORK_UPLINK_NETNS",
        "",
        "namespace the jobs' egress leaves from",
        "shell",
        "docker",
        "firecracker",
    ),
    _corral("EXECUTOR_DOCKER_RUNTIME", "", "OCI runtime of step containers, e.g. runsc", "docker"),
    _corral(
        "EXECUTOR_DOCKER_NETWORK_RUNTIME",
        "",
        "OCI runtime of steps with network (runsc: runsc-hostnet)",
        "docker",
    ),
    _corral("EXECUTOR_KUBERNETES_SCHEDULING_TIMEOUT", "5m", "a pod unscheduled this long fails", K8S),
    _corral("EXECUTOR_KUBERNETES_IMAGE_PULL_TIMEOUT", "5m", "an image unpulled this long fails", K8S),
    _corral("EXECUTOR_KUBERNETES_RUNTIME_CLASS_NAME", "", "the job pods' runtimeClassName", K8S),
    _corral("EXECUTOR_KUBERNETES_FRONTEND_URL", "", "the server as pods reach it", K8S),
    _corral(
        "EXECUTOR_FIRECRACKER_WARM_POOL",
        "1",
        "microVMs booted ahead of jobs (within EXECUTOR_MAXIMUM_NUM_JOBS VMs); 0 = off",
        "firecracker",
    ),
    _corral(
        "EXECUTOR_DOCKER_ALLOWED_REGISTRIES",
        "",
        "registries allowed on non-public addresses",
        "docker",
        "firecracker",
    ),
)

VARIABLES: dict[str, Variable] = {v.name: v for v in _TABLE}
assert len(VARIABLES) == len(_TABLE), "a variable is listed twice"


def honoured(variable: Variable, runtime: str) -> bool:
    return EVERY in variable.runtimes or runtime in variable.runtimes


def unknown_variable(name: str) -> str:
    """The warning for an EXECUTOR_* name that is not in the table, with the closest known name."""
    close = difflib.get_close_matches(name, list(VARIABLES), n=1, cutoff=_SUGGEST_CUTOFF)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name} is not a variable corral knows: ignored{hint}"


def env_warnings(env: Mapping[str, str], runtime: str) -> list[str]:
    """One warning per variable set in `env` (blank values count as unset) that has no effect with
    `runtime`: unknown EXECUTOR_* names, and known ones no runtime or another runtime honours."""
    warnings: list[str] = []
    for name in sorted(k for k, v in env.items() if isinstance(v, str) and v.strip()):
        variable = VARIABLES.get(name)
        if variable is None:
            if name.startswith("EXECUTOR_") and not _SERVICE_LINK.fullmatch(name):
                warnings.append(unknown_variable(name))
        elif not honoured(variable, runtime):
            if variable.runtimes:
                others = ", ".join(sorted(variable.runtimes))
                warnings.append(
                    f"{name} applies to the {others} runtime only, "
                    f"not to {runtime} (EXECUTOR_RUNTIME): ignored"
                )
            else:
                warnings.append(
                    f"{name} is recognised but not supported by the {runtime} runtime yet: ignored"
                )
    return warnings
