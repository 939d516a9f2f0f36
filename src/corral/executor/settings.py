"""Executor settings from Sourcegraph's EXECUTOR_* environment variables (plus corral's own).

`ExecutorSettings.from_env(environ)` reads any mapping, so tests pass plain dicts. A missing or
malformed value is a ConfigError that names the variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ConfigError

MIN_SECRET_LEN = 20  # characters
RUNTIMES = ("shell", "docker", "firecracker", "kubernetes")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?$", re.IGNORECASE)


def parse_duration(value: str) -> float:
    """Go-style durations ("500ms", "1m30s", "2h") or plain seconds; returns seconds."""
    v = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(v):
        if m.start() != pos:
            break
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos != len(v) or not v:
        raise ValueError(f"{value!r} is not a duration (e.g. 500ms, 30s, 1m30s, 2h)")
    return total


def parse_size(value: str) -> int:
    """Sizes like "12G", "512M", "12Gi" or plain bytes; returns bytes. K/M/G/T are powers of 1024."""
    m = _SIZE_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 512M, 12G, 1Gi)")
    return int(float(m[1]) * 1024 ** "_kmgt".index(m[2].lower() or "_"))


def format_duration(seconds: float) -> str:
    """Like Go's time.Duration.String for whole seconds: 30m0s, 1h0m0s, 5s."""
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{seconds:g}s"


def _default_cli() -> str:
    found = shutil.which("corral")
    return found or str(Path(sys.executable).with_name("corral"))


@dataclass
class ExecutorSettings:
    frontend_url: str
    frontend_password: str
    queues: list[str]
    runtime: str = "docker"
    queue_poll_interval: float = 1.0  # seconds between empty dequeues (short-poll servers)
    long_poll: float = 20.0  # seconds a dequeue may wait on a server that offers long-poll; 0 = off
    maximum_num_jobs: int = 1
    job_num_cpus: float = 4.0
    job_memory: int = 12 * 1024**3  # bytes
    job_pids: int = 1024
    job_disk_space: int = 20 * 1024**3  # bytes: workspace + container writable layer; 0 = unbounded
    maximum_runtime_per_job: float = 30 * 60.0  # seconds
    heartbeat_interval: float = 5.0  # seconds
    num_total_jobs: int = 0  # 0 = no limit
    max_active_time: float = 0.0  # seconds; 0 = no limit
    keep_workspaces: bool = False
    workspace_root: Path = Path("/var/lib/corral/workspaces")
    cleanup_task_interval: float = 60.0  # seconds
    docker_auth_config: dict[str, Any] | None = None
    docker_add_host_gateway: bool = False
    docker_additional_mounts: list[str] = field(default_factory=list)
    docker_runtime: str = ""  # "" = the daemon's default (runc); "runsc" = gVisor
    # registries (exact host[:port]) that may be on loopback/private addresses; see runtimes/docker.py
    docker_allowed_registries: list[str] = field(default_factory=list)
    # EXECUTOR_JOB_USER=UID[:GID]: every job runs as this fixed uid. Unset (None): each running job
    # gets its own uid (gid = uid) from job_uid_range, see corral.executor.identity.
    job_uid: int | None = None
    job_gid: int | None = None
    job_uid_range: tuple[int, int] = (200_000, 265_535)  # EXECUTOR_JOB_UID_RANGE=FIRST-LAST, inclusive
    job_uid_lock_dir: Path = Path("/run/corral/job-uids")  # EXECUTOR_JOB_UID_LOCK_DIR: shared per host
    kill_grace: float = 10.0  # seconds between SIGTERM and SIGKILL on cancel
    shutdown_grace: float = 600.0  # seconds running jobs may take to finish after the first SIGTERM
    log_max_bytes: int = 8 * 1024 * 1024  # per log entry; past it the head and the tail are kept
    cli_path: str = field(default_factory=_default_cli)
    name: str = ""
    vm_prefix: str = "executor"  # EXECUTOR_VM_PREFIX: owner label of everything this executor creates
    extensions: bool = True  # use corral's protocol extensions when the server offers them

    @property
    def multi_queue(self) -> bool:
        return len(self.queues) > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorSettings:
        env = os.environ if env is None else env
        problems: list[str] = []

        def get(name: str, *old: str) -> str | None:
            for n in (name, *old):
                if env.get(n, "").strip():
                    return env[n].strip()
            return None

        def conv(name: str, fn: Any, *old: str) -> Any:
            raw = get(name, *old)
            if raw is None:
                return None
            try:
                return fn(raw)
            except (ValueError, TypeError) as exc:
                problems.append(f"{name}: {exc}")
                return None

        def boolean(v: str) -> bool:
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{v!r} is not a boolean (true/false)")

        def positive_int(v: str) -> int:
            n = int(v)
            if n < 0:
                raise ValueError(f"{v!r} must not be negative")
            return n

        def json_obj(v: str) -> Any:
            try:
                return json.loads(v)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None

        url = get("EXECUTOR_FRONTEND_URL")
        password = get("EXECUTOR_FRONTEND_PASSWORD")
        if not url:
            problems.append("EXECUTOR_FRONTEND_URL: required (the server's URL, e.g. http://127.0.0.1:3080)")
        elif not re.match(r"^https?://[^/\s]+/?$", url):
            problems.append(f"EXECUTOR_FRONTEND_URL: {url!r} must be scheme://host[:port]")
        if not password:
            problems.append("EXECUTOR_FRONTEND_PASSWORD: required (the server's EXECUTORS_ACCESS_TOKEN)")
        elif len(password) < MIN_SECRET_LEN:
            problems.append(f"EXECUTOR_FRONTEND_PASSWORD: must be at least {MIN_SECRET_LEN} characters")
        one, many = get("EXECUTOR_QUEUE_NAME"), get("EXECUTOR_QUEUE_NAMES")
        queues: list[str] = []
        if bool(one) == bool(many):
            problems.append("EXECUTOR_QUEUE_NAME / EXECUTOR_QUEUE_NAMES: set exactly one of them")
        else:
            queues = [one] if one else [q.strip() for q in (many or "").split(",") if q.strip()]
            for q in queues:
                if not re.fullmatch(r"[a-z0-9_-]{1,64}", q):
                    problems.append(f"EXECUTOR_QUEUE_NAME(S): invalid queue name {q!r}")

        use_fc = conv("EXECUTOR_USE_FIRECRACKER", boolean)
        runtime = get("EXECUTOR_RUNTIME")
        if runtime is None:
            runtime = "firecracker" if use_fc else "docker"
        elif runtime not in RUNTIMES:
            problems.append(f"EXECUTOR_RUNTIME: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        elif use_fc and runtime != "firecracker":
            problems.append(f"EXECUTOR_USE_FIRECRACKER=true contradicts EXECUTOR_RUNTIME={runtime}")

        values: dict[str, Any] = {
            "queue_poll_interval": conv("EXECUTOR_QUEUE_POLL_INTERVAL", parse_duration),
            "long_poll": conv("EXECUTOR_LONG_POLL", parse_duration),
            "maximum_num_jobs": conv("EXECUTOR_MAXIMUM_NUM_JOBS", positive_int),
            "job_num_cpus": conv("EXECUTOR_JOB_NUM_CPUS", float, "EXECUTOR_FIRECRACKER_NUM_CPUS"),
            "job_memory": conv("EXECUTOR_JOB_MEMORY", parse_size, "EXECUTOR_FIRECRACKER_MEMORY"),
            "job_pids": conv("EXECUTOR_JOB_PIDS", positive_int),
            "job_disk_space": conv("EXECUTOR_JOB_DISK_SPACE", parse_size, "EXECUTOR_FIRECRACKER_DISK_SPACE"),
            "maximum_runtime_per_job": conv("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", parse_duration),
            "heartbeat_interval": conv("EXECUTOR_HEARTBEAT_INTERVAL", parse_duration),
            "num_total_jobs": conv("EXECUTOR_NUM_TOTAL_JOBS", positive_int),
            "max_active_time": conv("EXECUTOR_MAX_ACTIVE_TIME", parse_duration),
            "keep_workspaces": conv("EXECUTOR_KEEP_WORKSPACES", boolean),
            "workspace_root": conv("EXECUTOR_WORKSPACE_ROOT", Path),
            "cleanup_task_interval": conv("EXECUTOR_CLEANUP_TASK_INTERVAL", parse_duration),
            "docker_auth_config": conv("EXECUTOR_DOCKER_AUTH_CONFIG", json_obj),
            "docker_add_host_gateway": conv("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", boolean),
            "docker_additional_mounts": conv(
                "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS", lambda v: [m for m in v.split(";") if m]
            ),
            "docker_runtime": get("EXECUTOR_DOCKER_RUNTIME"),
            "docker_allowed_registries": conv(
                "EXECUTOR_DOCKER_ALLOWED_REGISTRIES", lambda v: [r.strip() for r in v.split(",") if r.strip()]
            ),
            "kill_grace": conv("EXECUTOR_KILL_GRACE", parse_duration),
            "shutdown_grace": conv("EXECUTOR_SHUTDOWN_GRACE", parse_duration),
            "log_max_bytes": conv("EXECUTOR_LOG_MAX_BYTES", parse_size),
            "cli_path": get("EXECUTOR_CLI_PATH"),
            "name": get("EXECUTOR_NAME"),
            "vm_prefix": get("EXECUTOR_VM_PREFIX"),
            "extensions": conv("EXECUTOR_USE_EXTENSIONS", boolean),
        }
        user = get("EXECUTOR_JOB_USER")
        if user is not None:
            m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
            if not m or int(m[1]) == 0:
                problems.append(f"EXECUTOR_JOB_USER: {user!r} must be UID[:GID] of a non-root user")
            else:
                values["job_uid"], values["job_gid"] = int(m[1]), int(m[2] or m[1])
        uid_range = get("EXECUTOR_JOB_UID_RANGE")
        if uid_range is not None:
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", uid_range)
            if not m or not 0 < int(m[1]) <= int(m[2]):
                problems.append(f"EXECUTOR_JOB_UID_RANGE: {uid_range!r} must be FIRST-LAST, 0 < FIRST ≤ LAST")
            elif int(m[2]) - int(m[1]) + 1 < (values["maximum_num_jobs"] or 1):
                problems.append("EXECUTOR_JOB_UID_RANGE: holds fewer uids than EXECUTOR_MAXIMUM_NUM_JOBS")
            else:
                values["job_uid_range"] = (int(m[1]), int(m[2]))
        values["job_uid_lock_dir"] = conv("EXECUTOR_JOB_UID_LOCK_DIR", Path)
        if values["vm_prefix"] is not None and not re.fullmatch(
            r"[a-z0-9][a-z0-9_-]{0,31}", values["vm_prefix"]
        ):
            problems.append("EXECUTOR_VM_PREFIX: use up to 32 characters of [a-z0-9_-]")
        if values["maximum_num_jobs"] == 0:
            problems.append("EXECUTOR_MAXIMUM_NUM_JOBS: must be at least 1")
        auth = values["docker_auth_config"]
        if auth is not None and not (isinstance(auth, dict) and isinstance(auth.get("auths", {}), dict)):
            problems.append('EXECUTOR_DOCKER_AUTH_CONFIG: must be {"auths": {"<registry>": {"auth": "..."}}}')
        if problems:
            raise ConfigError("invalid executor configuration:\n  " + "\n  ".join(problems))
        settings = cls(
            frontend_url=(url or "").rstrip("/"),
            frontend_password=password or "",
            queues=queues,
            runtime=runtime,
            **{k: v for k, v in values.items() if v is not None},
        )
        if not settings.name:
            settings.name = f"{socket.gethostname()}-{uuid.uuid4()}"
        return settings
