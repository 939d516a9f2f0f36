"""Executor settings from Sourcegraph's EXECUTOR_* environment variables (plus corral's own).

`ExecutorSettings.from_env(environ)` reads any mapping, so tests pass plain dicts; `ExecutorSettings(
frontend_url=..., ...)` builds one from field names. A missing or malformed value is a ConfigError
that names the variable, every bad variable at once, one per line.

Each field's alias is its variable (the first alias wins over older names). Runtime-specific
settings live in their runtime's package and are composed here: `.docker` (DockerSettings,
EXECUTOR_DOCKER_*), `.shell` (ShellSettings) and `.kubernetes` (KubernetesSettings,
EXECUTOR_KUBERNETES_* and KUBERNETES_*). Durations and sizes are read by `corral.units`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, PrivateAttr, field_validator

from corral.errors import ConfigError
from corral.executor.network.policy import Allow, NetworkMode
from corral.executor.runtimes.docker.settings import DockerSettings
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings
from corral.executor.runtimes.shell.settings import ShellSettings
from corral.executor.settingsbase import (
    Bool,
    Count,
    EnvSettings,
    from_env,
    padded_booleans,
    parse_bool,
    present,
)
from corral.executor.variables import env_warnings
from corral.sharedsecret import check_secret
from corral.units import Duration, Size, format_duration, parse_duration, parse_size

__all__ = [
    "RUNTIMES",
    "ExecutorSettings",
    "format_duration",
    "frontend_url",
    "in_cluster",
    "known_runtimes",
    "parse_duration",
    "parse_size",
]

SRC_CLI = "src"  # Sourcegraph's src-cli, as Sourcegraph's executor finds it on PATH
# Runtimes EXECUTOR_RUNTIME may name besides the registry's (corral.executor.runtimes.registry):
# Sourcegraph's, not built yet (make_runtime then says so by name).
RUNTIMES = ("shell", "docker", "firecracker", "kubernetes")


def known_runtimes() -> list[str]:
    """Every name EXECUTOR_RUNTIME accepts: the registry's runtimes, then Sourcegraph's others."""
    from corral.executor.runtimes.registry import RUNTIMES as REGISTERED  # the registry imports us

    return list(dict.fromkeys([*REGISTERED, *RUNTIMES]))


def _default_cli() -> str:
    found = shutil.which("corral")
    return found or str(Path(sys.executable).with_name("corral"))


def _default_src_cli() -> str | None:
    return shutil.which(SRC_CLI)


def _env(name: str, *old: str) -> Any:
    return Field(validation_alias=AliasChoices(name, *old) if old else name)


class ExecutorSettings(EnvSettings):
    # required, and checked together in from_env (see _composite)
    frontend_url: str = Field(validation_alias="EXECUTOR_FRONTEND_URL")
    frontend_password: str = Field(validation_alias="EXECUTOR_FRONTEND_PASSWORD")
    queues: list[str]
    runtime: str = "docker"
    queue_poll_interval: Duration = Field(
        1.0, gt=0, validation_alias="EXECUTOR_QUEUE_POLL_INTERVAL"
    )  # seconds
    # seconds a dequeue may wait on a server that offers long-poll; 0 = off
    long_poll: Duration = Field(20.0, validation_alias="EXECUTOR_LONG_POLL")
    maximum_num_jobs: Count = Field(1, validation_alias="EXECUTOR_MAXIMUM_NUM_JOBS")
    job_num_cpus: float = Field(  # 0 = unbounded
        4.0,
        ge=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("EXECUTOR_JOB_NUM_CPUS", "EXECUTOR_FIRECRACKER_NUM_CPUS"),
    )
    job_memory: Size = Field(  # bytes
        12 * 1024**3, validation_alias=AliasChoices("EXECUTOR_JOB_MEMORY", "EXECUTOR_FIRECRACKER_MEMORY")
    )
    job_pids: Count = Field(1024, validation_alias="EXECUTOR_JOB_PIDS")
    # bytes: workspace + container writable layer; 0 = unbounded
    job_disk_space: Size = Field(
        20 * 1024**3,
        validation_alias=AliasChoices("EXECUTOR_JOB_DISK_SPACE", "EXECUTOR_FIRECRACKER_DISK_SPACE"),
    )
    # firecracker: microVMs booted ahead of their jobs (within EXECUTOR_MAXIMUM_NUM_JOBS VMs); 0 = off
    firecracker_warm_pool: Count = Field(1, validation_alias="EXECUTOR_FIRECRACKER_WARM_POOL")
    maximum_runtime_per_job: Duration = Field(
        30 * 60.0, gt=0, validation_alias="EXECUTOR_MAXIMUM_RUNTIME_PER_JOB"
    )
    heartbeat_interval: Duration = Field(5.0, gt=0, validation_alias="EXECUTOR_HEARTBEAT_INTERVAL")  # seconds
    num_total_jobs: Count = Field(0, validation_alias="EXECUTOR_NUM_TOTAL_JOBS")  # 0 = no limit
    max_active_time: Duration = Field(0.0, validation_alias="EXECUTOR_MAX_ACTIVE_TIME")  # 0 = no limit
    keep_workspaces: Bool = Field(False, validation_alias="EXECUTOR_KEEP_WORKSPACES")
    workspace_root: Path = Field(
        Path("/var/lib/corral/workspaces"), validation_alias="EXECUTOR_WORKSPACE_ROOT"
    )
    cleanup_task_interval: Duration = Field(60.0, gt=0, validation_alias="EXECUTOR_CLEANUP_TASK_INTERVAL")
    # EXECUTOR_JOB_USER=UID[:GID]: every job runs as this fixed uid. Unset (None): each running job
    # gets its own uid (gid = uid) from job_uid_range, see corral.executor.identity.
    job_uid: int | None = None
    job_gid: int | None = None
    job_uid_range: tuple[int, int] = (200_000, 265_535)  # EXECUTOR_JOB_UID_RANGE=FIRST-LAST, inclusive
    # EXECUTOR_JOB_UID_LOCK_DIR: shared per host
    job_uid_lock_dir: Path = Field(Path("/run/corral/job-uids"), validation_alias="EXECUTOR_JOB_UID_LOCK_DIR")
    kill_grace: Duration = Field(10.0, validation_alias="EXECUTOR_KILL_GRACE")  # seconds: SIGTERM -> SIGKILL
    # seconds running jobs may take to finish after the first SIGTERM
    shutdown_grace: Duration = Field(600.0, validation_alias="EXECUTOR_SHUTDOWN_GRACE")
    # per log entry; past it the head and the tail are kept
    log_max_bytes: Size = Field(8 * 1024 * 1024, validation_alias="EXECUTOR_LOG_MAX_BYTES")
    # The CLI that runs CLI steps follows the server: corral's (cli_path) for a corral server's jobs,
    # Sourcegraph's src-cli (src_cli_path; None: not installed, such steps fail) for a Sourcegraph's.
    cli_path: str = Field(default_factory=_default_cli, validation_alias="EXECUTOR_CLI_PATH")
    src_cli_path: str | None = Field(
        default_factory=_default_src_cli, validation_alias="EXECUTOR_SRC_CLI_PATH"
    )
    name: str = Field("", validation_alias="EXECUTOR_NAME")
    # EXECUTOR_VM_PREFIX: owner label of everything this executor creates
    vm_prefix: str = Field("executor", validation_alias="EXECUTOR_VM_PREFIX")
    # use corral's protocol extensions when the server offers them
    extensions: Bool = Field(True, validation_alias="EXECUTOR_USE_EXTENSIONS")
    # The network of a job that asks for it (corral.executor.network; README "Network"): none (such a
    # job fails), deny-private (the egress firewall) or open (the runtime's ordinary network: unsafe)
    network: NetworkMode = Field(NetworkMode.NONE, validation_alias="EXECUTOR_NETWORK")
    # CIDR[:port] entries, comma-separated: reachable under deny-private although private
    network_allow: list[str] = Field(default_factory=list, validation_alias="EXECUTOR_NETWORK_ALLOW")
    # every job gets the network (Sourcegraph's jobs have no field to ask for it)
    network_all_jobs: Bool = Field(False, validation_alias="EXECUTOR_NETWORK_ALL_JOBS")
    # a namespace under /run/netns whose network the jobs' user-mode stack uses; "" = the executor's
    network_uplink_netns: str = Field("", validation_alias="EXECUTOR_NETWORK_UPLINK_NETNS")
    docker: DockerSettings = Field(default_factory=DockerSettings)
    shell: ShellSettings = Field(default_factory=ShellSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    # what from_env found worth saying but not fatal (variables without effect, a weak secret)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("vm_prefix")
    @classmethod
    def _vm_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", v):
            raise ValueError("use up to 32 characters of [a-z0-9_-]")
        return v

    @field_validator("network_allow", mode="before")
    @classmethod
    def _allow(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list):
            for entry in v:
                Allow.parse(str(entry))  # ValueError names the entry
        return v

    @field_validator("network_uplink_netns")
    @classmethod
    def _uplink(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(f"{v[:80]!r} is not a namespace name (as `ip netns add` makes under /run/netns)")
        return v

    @field_validator("src_cli_path")
    @classmethod
    def _src_cli(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not os.path.isabs(v):
            if "/" in v:
                raise ValueError(f"{v!r} must be an absolute path or a command name on PATH")
            found = shutil.which(v)
            if found is None:
                raise ValueError(f"{v!r} is not on PATH")
            v = found
        # only this file is bound into the CLI sandbox (runtimes.registry.cli_binds)
        if not os.path.isfile(v) or not os.access(v, os.X_OK):
            raise ValueError(f"{v!r} is not an executable file (src-cli's binary)")
        return v

    @field_validator("maximum_num_jobs")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be at least 1")
        return v

    @property
    def warnings(self) -> list[str]:
        """from_env's warnings, one line each: variables that have no effect here (unknown names,
        variables no runtime or another runtime honours; see corral.executor.variables), a secret
        that looks like a placeholder. The executor logs them at start-up; validate prints them."""
        return list(self._warnings)

    @property
    def multi_queue(self) -> bool:
        return len(self.queues) > 1

    # The docker settings by their former flat names (read-only).
    @property
    def docker_auth_config(self) -> dict[str, Any] | None:
        auth: dict[str, Any] | None = self.docker.auth_config
        return auth

    @property
    def docker_add_host_gateway(self) -> bool:
        return self.docker.add_host_gateway

    @property
    def docker_additional_mounts(self) -> list[str]:
        return self.docker.additional_mounts

    @property
    def docker_runtime(self) -> str:
        return self.docker.runtime

    @property
    def docker_allowed_registries(self) -> list[str]:
        return self.docker.allowed_registries

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorSettings:
        raw = os.environ if env is None else env
        env = present(raw)
        values, problems, warnings = _composite(env)
        docker, docker_problems = from_env(DockerSettings, env)
        shell, shell_problems = from_env(ShellSettings, env)
        # checked only for the kubernetes runtime (for any other its variables warn and are ignored)
        kubernetes: KubernetesSettings | None = KubernetesSettings()
        kubernetes_problems: list[str] = []
        if values["runtime"] == "kubernetes":
            kubernetes, kubernetes_problems = from_env(KubernetesSettings, env, in_cluster=in_cluster(env))
        # fields checked in _composite are passed as values; the rest come from env by their aliases
        rest = {k: v for k, v in env.items() if k not in _COMPOSITE}
        settings, own = from_env(
            cls,
            rest,
            **values,
            docker=docker or DockerSettings(),
            shell=shell,
            # refused KubernetesSettings: its problems name the variables; None would add pydantic's
            # "kubernetes: Input should be a valid dictionary", which names none
            kubernetes=kubernetes or KubernetesSettings(),
        )
        problems += own + docker_problems + shell_problems + kubernetes_problems
        models: list[type[EnvSettings]] = [cls, DockerSettings, ShellSettings]
        if values["runtime"] == "kubernetes":
            models.append(KubernetesSettings)
        problems += padded_booleans(raw, models, ["EXECUTOR_USE_FIRECRACKER"])
        if settings is not None and settings.runtime == "kubernetes" and not kubernetes_problems:
            problems += settings.kubernetes.problems(settings.job_num_cpus, settings.job_memory)
        if settings is not None and "job_uid_range" in values:
            first, last = settings.job_uid_range
            if last - first + 1 < settings.maximum_num_jobs:
                problems.append("EXECUTOR_JOB_UID_RANGE: holds fewer uids than EXECUTOR_MAXIMUM_NUM_JOBS")
        if problems or settings is None:
            raise ConfigError("invalid executor configuration:\n  " + "\n  ".join(_ordered(problems)))
        if not settings.name:
            settings.name = f"{socket.gethostname()}-{uuid.uuid4()}"
        if settings.network_all_jobs and settings.network is NetworkMode.NONE:
            warnings.append("EXECUTOR_NETWORK_ALL_JOBS=true has no effect with EXECUTOR_NETWORK=none")
        settings._warnings = env_warnings(raw, settings.runtime) + warnings
        return settings


# Variables that are more than one field's value: parsed by _composite, not by a field's alias.
_COMPOSITE = (
    "EXECUTOR_FRONTEND_URL",
    "EXECUTOR_FRONTEND_PASSWORD",
    "EXECUTOR_QUEUE_NAME",
    "EXECUTOR_QUEUE_NAMES",
    "EXECUTOR_USE_FIRECRACKER",
    "EXECUTOR_RUNTIME",
    "EXECUTOR_JOB_USER",
    "EXECUTOR_JOB_UID_RANGE",
)


def in_cluster(env: Mapping[str, str]) -> bool:
    """Whether the executor runs in a Kubernetes pod: KUBERNETES_SERVICE_HOST and
    KUBERNETES_SERVICE_PORT are both set (Sourcegraph's rule for its kubernetes mode; the same
    variables let the kubernetes runtime use the pod's service account)."""
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and bool(env.get("KUBERNETES_SERVICE_PORT"))


def frontend_url(url: str) -> str:
    """EXECUTOR_FRONTEND_URL checked and normalised: http(s), a host, an optional port and path
    prefix (kept: a server behind a reverse proxy at /sg gets /sg/.executors/...; Sourcegraph's
    client joins its paths to the URL the same way), no trailing slash, lowercase scheme and host.
    ValueError says what is wrong; it repeats the URL only when the URL can hold no secret."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must not contain blanks or control characters")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # never echoed: the part before "@" may be a password
        raise ValueError(
            "must not carry credentials (user:password@); the secret is EXECUTOR_FRONTEND_PASSWORD"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("must not have a query (?...) or fragment (#...): scheme://host[:port][/path]")
    shown = repr(_without_userinfo(url))
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{shown} must start with http:// or https:// (scheme://host[:port][/path])")
    if not parts.hostname:
        raise ValueError(f"{shown} has no host (scheme://host[:port][/path])")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{shown} has an invalid port")
    segments = [p for p in parts.path.split("/") if p]
    if any(p in (".", "..") for p in segments):
        raise ValueError(f"{shown}: its path must not contain . or .. segments")
    path = "".join(f"/{p}" for p in segments)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def _without_userinfo(url: str) -> str:
    """The URL as an error may repeat it: whatever precedes an "@" (after "scheme://") is masked,
    since urlsplit finds no userinfo in e.g. "u:password@host" (no scheme) yet it is one."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _ordered(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))


def _composite(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The settings whose variables are checked together: URL and password (required), the queue
    name(s), the runtime, the job user and uid range. Returns field values, problems, warnings."""
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}
    url, password = env.get("EXECUTOR_FRONTEND_URL"), env.get("EXECUTOR_FRONTEND_PASSWORD")
    if not url:
        problems.append("EXECUTOR_FRONTEND_URL: required (the server's URL, e.g. http://127.0.0.1:3080)")
    else:
        try:
            url = frontend_url(url)
        except ValueError as exc:
            problems.append(f"EXECUTOR_FRONTEND_URL: {exc}")
    if not password:
        problems.append("EXECUTOR_FRONTEND_PASSWORD: required (the server's EXECUTORS_ACCESS_TOKEN)")
    elif (secret := check_secret(password)).problem:
        problems.append(f"EXECUTOR_FRONTEND_PASSWORD: {secret.problem}")
    else:
        warnings += [f"EXECUTOR_FRONTEND_PASSWORD {w}" for w in secret.warnings]
    values["frontend_url"] = url or ""
    values["frontend_password"] = password or ""

    one, many = env.get("EXECUTOR_QUEUE_NAME"), env.get("EXECUTOR_QUEUE_NAMES")
    queues: list[str] = []
    if bool(one) == bool(many):
        problems.append("EXECUTOR_QUEUE_NAME / EXECUTOR_QUEUE_NAMES: set exactly one of them")
    else:
        queues = [one] if one else [q.strip() for q in (many or "").split(",") if q.strip()]
        for q in queues:
            if not re.fullmatch(r"[a-z0-9_-]{1,64}", q):
                problems.append(f"EXECUTOR_QUEUE_NAME(S): invalid queue name {q!r}")
    values["queues"] = queues

    use_fc: bool | None = None
    raw_fc = env.get("EXECUTOR_USE_FIRECRACKER")
    if raw_fc is not None:
        try:
            use_fc = parse_bool(raw_fc)
        except ValueError as exc:
            problems.append(f"EXECUTOR_USE_FIRECRACKER: {exc}")
    runtime = env.get("EXECUTOR_RUNTIME")
    if runtime is None:
        # Sourcegraph's rule: inside a cluster (KUBERNETES_SERVICE_HOST and _PORT set), kubernetes
        runtime = "firecracker" if use_fc else "kubernetes" if in_cluster(env) else "docker"
    elif runtime not in (known := known_runtimes()):
        problems.append(f"EXECUTOR_RUNTIME: {runtime!r} is not one of {', '.join(known)}")
    elif use_fc and runtime != "firecracker":
        problems.append(f"EXECUTOR_USE_FIRECRACKER=true contradicts EXECUTOR_RUNTIME={runtime}")
    values["runtime"] = runtime

    user = env.get("EXECUTOR_JOB_USER")
    if user is not None:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
        if not m or int(m[1]) == 0:
            problems.append(f"EXECUTOR_JOB_USER: {user!r} must be UID[:GID] of a non-root user")
        else:
            values["job_uid"], values["job_gid"] = int(m[1]), int(m[2] or m[1])
    uid_range = env.get("EXECUTOR_JOB_UID_RANGE")
    if uid_range is not None:
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", uid_range)
        if not m or not 0 < int(m[1]) <= int(m[2]):
            problems.append(f"EXECUTOR_JOB_UID_RANGE: {uid_range!r} must be FIRST-LAST, 0 < FIRST ≤ LAST")
        else:
            values["job_uid_range"] = (int(m[1]), int(m[2]))
    return values, problems, warnings
