"""The container a step runs in: the Engine API create body, built from the job's space and the step.

Pure: no call to the daemon. See the runtime's module docstring for what the container gets and why.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.errors import Reason, RuntimeFailure
from corral.executor.network import egress
from corral.executor.runtimes.base import SCRIPTS_MOUNT, WORKSPACE_MOUNT, JobSpace, Step
from corral.executor.runtimes.docker.pause import pause_name

__all__ = [
    "HOST_GATEWAY",
    "LABEL_STEP",
    "ContainerOptions",
    "add_scratch_mounts",
    "container_config",
    "container_name",
]

LABEL_STEP = "dev.corral.step"  # the step's log key, on every step container
NANO_CPUS_PER_CPU = 1_000_000_000  # Engine API unit for NanoCpus
HOST_GATEWAY = "host.docker.internal:host-gateway"  # --add-host entry, as Sourcegraph adds it


@dataclass(frozen=True)
class ContainerOptions:
    """What the operator configured for every step container."""

    runtime: str | None = None  # HostConfig.Runtime; None = the daemon's default
    network_runtime: str | None = None  # for jobs whose network policy gives an interface
    add_host_gateway: bool = False
    mounts: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


GVISOR_PIDS_HEADROOM = 128


def _is_gvisor(runtime: str | None) -> bool:
    return bool(runtime) and (runtime or "").split("/")[-1].startswith("runsc")


def container_name(space: JobSpace, step: Step) -> str:
    """The step's container: `<owner>-corral-<queue>-<id>-<step index>`, unique per executor."""
    return f"{space.owner}-{space.name}-{step.index}"


def container_config(space: JobSpace, step: Step, cpus: float, options: ContainerOptions) -> dict[str, Any]:
    """The Engine API create body of one step's container (see the runtime's module docstring)."""
    workdir = posixpath.normpath(posixpath.join(WORKSPACE_MOUNT, step.dir))
    if workdir != WORKSPACE_MOUNT and not workdir.startswith(WORKSPACE_MOUNT + "/"):
        raise RuntimeFailure(
            f"step {step.key}: dir {step.dir!r} is outside the workspace", reason=Reason.DOCKER
        )
    env: list[str] = []
    for key, value in step.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise RuntimeFailure(
                f"step {step.key}: invalid environment variable {key!r} (empty, '=' or NUL)",
                reason=Reason.DOCKER,
            )
        env.append(f"{key}={value}")
    limits = space.limits
    filtered = space.network.filtered  # deny-private: the job's pause container's namespace (`pause`)
    networked = space.network.has_interface or filtered
    binds = [f"{space.workspace}:{WORKSPACE_MOUNT}", f"{space.scripts}:{SCRIPTS_MOUNT}:ro"]
    if filtered:
        binds.append(f"{egress.resolv_conf(space.root)}:/etc/resolv.conf:ro")
    mode = f"container:{pause_name(space)}" if filtered else "bridge" if networked else "none"
    host: dict[str, Any] = {
        "Binds": binds,
        "NetworkMode": mode,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "IpcMode": "private",
        "Privileged": False,
        "ReadonlyRootfs": False,  # see the module docstring
        # docker-init (tini) as PID 1, as `docker run --init`: it forwards the stop's SIGTERM to the
        # step (a shell as PID 1 ignores it, so every cancel waited the whole kill grace) and reaps.
        "Init": True,
        "LogConfig": {"Type": "none", "Config": {}},
    }
    if cpus > 0:
        host["NanoCpus"] = round(cpus * NANO_CPUS_PER_CPU)
    if limits.memory_bytes > 0:
        host["Memory"] = limits.memory_bytes
        host["MemorySwap"] = limits.memory_bytes  # equal: no swap on top of the memory limit
    # A network runtime (gVisor's runsc with host networking) also for deny-private jobs: gVisor's own
    # netstack would send raw frames past the namespace's nftables output hook.
    runtime = (options.network_runtime or options.runtime) if networked else options.runtime
    if limits.pids > 0:
        # gVisor's own host threads (about 60 at rest) count in the container's pids cgroup: without
        # headroom a job under runsc would reach the limit, and end its whole sandbox, sooner than runc.
        host["PidsLimit"] = limits.pids + (GVISOR_PIDS_HEADROOM if _is_gvisor(runtime) else 0)
    if runtime:
        host["Runtime"] = runtime
    if options.add_host_gateway and not filtered:  # docker refuses extra hosts with container:<id>
        host["ExtraHosts"] = [HOST_GATEWAY]
    if options.mounts:
        host["Mounts"] = [dict(m) for m in options.mounts]
    return {
        "Image": step.image,
        "Entrypoint": [step.argv[0]],
        "Cmd": list(step.argv[1:]),
        "User": f"{space.uid}:{space.gid}",
        "WorkingDir": workdir,
        "Env": env,
        "Labels": {**space.labels, LABEL_STEP: step.key},
        "Tty": False,
        "OpenStdin": False,
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "NetworkDisabled": not networked,
        "HostConfig": host,
    }


def add_scratch_mounts(config: dict[str, Any], space: JobSpace, image: Mapping[str, Any]) -> None:
    """/tmp and the image's VOLUMEs as tmpfs bounded by the memory (or disk) limit, see the module doc."""
    limits = space.limits
    sizes = [b for b in (limits.memory_bytes, limits.disk_bytes) if b > 0]
    options = "rw,exec,nosuid,nodev,mode=1777" + (f",size={min(sizes)}" if sizes else "")
    host = config["HostConfig"]
    taken = [t.rsplit(":", 2)[1] if t.count(":") >= 1 else t for t in host.get("Binds", [])]
    taken += [m.get("Target", "") for m in host.get("Mounts", [])]
    volumes = (image.get("Config") or {}).get("Volumes") or {}
    tmpfs: dict[str, str] = {}
    for target in ["/tmp", *sorted(v for v in volumes if isinstance(v, str))]:
        target = posixpath.normpath(target)
        if not target.startswith("/") or target == "/":
            continue
        if target in taken:
            continue  # the workspace or an operator mount itself: docker makes no volume there
        # Anything else, also a VOLUME *under* /data: without a tmpfs docker makes an anonymous
        # volume on the host's disk, outside the workspace quota and the layer watchdog.
        tmpfs[target] = options
    host["Tmpfs"] = tmpfs
