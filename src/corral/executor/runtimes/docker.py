"""The `docker` runtime: each step runs in its own container on a Docker Engine, like Sourcegraph's executor.

corral talks to the Engine's HTTP API over its unix socket (see `dockerapi`), not through the docker
CLI: a step costs the same API calls `docker run` makes, without a CLI process per step.

What a step's container gets (Sourcegraph's `docker run` flags, see shared/protocol.md §4, hardened):

- the job's workspace bind-mounted at /data, working dir /data/<step.dir>;
- argv as given: Entrypoint = argv[0], Cmd = argv[1:] (like `--entrypoint /bin/sh IMAGE script`);
- user uid:gid of the job (prepare() chowns the workspace to it), all capabilities dropped,
  no-new-privileges, a private IPC namespace;
- network "none" unless the job may use the network (then the default "bridge");
- CPU (NanoCpus), memory (Memory = MemorySwap, so no swap on top) and pids limits; 0 = unbounded;
  a CPU limit above the host's CPU count (which the Engine refuses) is lowered to that count;
- the root filesystem stays writable (ReadonlyRootfs false): images may legitimately write outside
  /data (apt-get install, caches in $HOME). It is the container's own overlay layer, gone with it;
- no init process: argv[0] is PID 1. A shell as PID 1 ignores SIGTERM, so a cancelled step is killed
  after the job's kill grace;
- logging driver "none": output is taken from an attach made before start (the raw stream, live, also
  for partial lines), so nothing is written to the daemon's disk. (Following a json-file log instead
  was measured to lose a last line without a newline, and delays partial lines until their newline.)
- labels: the job's labels plus the step key, so cleanup() and janitor() can find it.

Registry credentials (space.docker_config/config.json) are only sent to the daemon in the pull request's
X-Registry-Auth header; nothing of them is mounted into or passed to a container.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import posixpath
import stat
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from corral.errors import ConfigError, RuntimeFailure
from corral.executor.runtimes.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_OWNER,
    WORKSPACE_MOUNT,
    JobSpace,
    OutputSink,
    Step,
    StepResult,
)
from corral.executor.runtimes.dockerapi import DockerAPI, DockerAPIError, socket_from_env

__all__ = ["LABEL_STEP", "DockerRuntime", "parse_image_ref", "parse_mount_spec", "registry_auth_header"]

log = logging.getLogger(__name__)

LABEL_STEP = "dev.corral.step"  # the step's log key, on every step container
DEFAULT_PULL_TIMEOUT_S = 600.0  # seconds a pull may take before the step fails with reason "image"
NANO_CPUS_PER_CPU = 1_000_000_000  # Engine API unit for NanoCpus
HOST_GATEWAY = "host.docker.internal:host-gateway"  # --add-host entry, as Sourcegraph adds it
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DOCKER_HUB_AUTH_ADDRESS = "https://index.docker.io/v1/"


# --- pure helpers ---------------------------------------------------------------------------------


def parse_image_ref(image: str) -> tuple[str, str, str]:
    """Split an image reference into (registry, repository, tag-or-digest) for a pull.

    "busybox" -> ("docker.io", "busybox", "latest"); "127.0.0.1:5000/a/b:1" -> ("127.0.0.1:5000",
    "127.0.0.1:5000/a/b", "1"); "x@sha256:..." -> ("docker.io", "x", "sha256:..."). A missing tag is
    "latest" (an empty tag would make the engine pull every tag of the repository).
    """
    if "@" in image:
        repo, ref = image.split("@", 1)
    else:
        slash = image.rfind("/")
        colon = image.rfind(":")
        if colon > slash:
            repo, ref = image[:colon], image[colon + 1 :]
        else:
            repo, ref = image, "latest"
    first, _, rest = repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry = first
    else:
        registry = DOCKER_HUB
    return registry, repo, ref


def _normalize_registry(key: str) -> str:
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def registry_auth_header(docker_config: Path | None, registry: str) -> str | None:
    """The X-Registry-Auth value for `registry` from a docker config dir (config.json "auths"), or None.

    Raises RuntimeFailure(reason="image") when the config exists but cannot be read or decoded.
    """
    if docker_config is None:
        return None
    path = docker_config / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(
            f"the job's docker config {path} is not readable JSON: {exc}", reason="image"
        ) from exc
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _normalize_registry(key) != registry or not isinstance(entry, dict):
            continue
        address = _DOCKER_HUB_AUTH_ADDRESS if registry == DOCKER_HUB else registry
        payload: dict[str, str]
        if entry.get("identitytoken"):
            payload = {"identitytoken": str(entry["identitytoken"]), "serveraddress": address}
        elif entry.get("auth"):
            try:
                user, _, password = (
                    base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise RuntimeFailure(
                    f"the job's docker config has a malformed auth entry for {key}", reason="image"
                ) from exc
            payload = {"username": user, "password": password, "serveraddress": address}
        elif entry.get("username"):
            payload = {
                "username": str(entry["username"]),
                "password": str(entry.get("password", "")),
                "serveraddress": address,
            }
        else:
            continue
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return None


def parse_mount_spec(spec: str) -> dict[str, Any]:
    """A `docker run --mount` spec ("type=bind,source=/a,target=/b,readonly") as an Engine API Mount.

    Supported keys: type (bind | volume | tmpfs), source/src, target/destination/dst, readonly/ro.
    Raises ConfigError for anything else.
    """
    mount: dict[str, Any] = {"Type": "volume"}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if eq and value.lower() not in ("1", "true", "0", "false"):
                raise ConfigError(f"docker mount {spec!r}: readonly must be true or false, not {value!r}")
            mount["ReadOnly"] = not eq or value.lower() in ("1", "true")
        elif key == "type":
            if value not in ("bind", "volume", "tmpfs"):
                raise ConfigError(f"docker mount {spec!r}: type must be bind, volume or tmpfs, not {value!r}")
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "destination", "dst"):
            mount["Target"] = value
        else:
            raise ConfigError(f"docker mount {spec!r}: unsupported option {key!r}")
    if not mount.get("Target", "").startswith("/"):
        raise ConfigError(f"docker mount {spec!r}: needs an absolute target=")
    if mount["Type"] == "bind" and not mount.get("Source", "").startswith("/"):
        raise ConfigError(f"docker mount {spec!r}: a bind mount needs an absolute source=")
    return mount


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -R without following symlinks (a link is chowned itself, never its target)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


async def _run_to_end(aw: Awaitable[Any], what: str) -> None:
    """Run `aw` to its end even if the calling task is cancelled meanwhile; then re-raise that cancel.

    Errors of `aw` are logged, not raised: this is for stop/remove after a step, where the step's own
    outcome (or cancellation) is what the caller must see.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if not task.cancelled() and task.exception() is not None:
        log.warning("docker: %s failed: %s", what, task.exception())
    if cancelled:
        raise asyncio.CancelledError


def _failure(exc: DockerAPIError, doing: str) -> RuntimeFailure:
    return RuntimeFailure(f"{doing}: {exc.message}", reason="docker")


# --- the runtime ----------------------------------------------------------------------------------


class DockerRuntime:
    """Runs each step in a fresh container; see the module docstring for the container's settings."""

    name: ClassVar[str] = "docker"

    def __init__(
        self,
        *,
        socket: str | None = None,
        runtime: str | None = None,
        network_runtime: str | None = None,
        add_host_gateway: bool = False,
        additional_mounts: Sequence[str] = (),
        pull: bool = True,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT_S,
        owner: str | None = None,
    ) -> None:
        """
        socket: the Engine's unix socket; default from DOCKER_HOST=unix://..., else /var/run/docker.sock.
        runtime: OCI runtime for step containers (HostConfig.Runtime), e.g. "runsc" for gVisor; None =
            the daemon's default (runc).
        network_runtime: runtime for steps of jobs allowed the network; None = `runtime`. (Old runsc
            needs a separate "--network=host" runtime entry for that, see machine notes §3.)
        add_host_gateway: add host.docker.internal:host-gateway (only useful with network).
        additional_mounts: `--mount`-style specs added to every step container (operator-configured).
        pull: pull images that are missing locally; False = local images only.
        pull_timeout: seconds a pull may take.
        owner: the janitor removes only containers labelled with this owner (EXECUTOR_VM_PREFIX);
            None = every corral container on the daemon.
        """
        self._socket_problem: str | None = None
        if socket is None:
            try:
                socket = socket_from_env()
            except ValueError as exc:
                self._socket_problem = str(exc)
                socket = ""
        self.socket = socket
        self.owner = owner
        self.runtime = runtime
        self.network_runtime = network_runtime
        self.add_host_gateway = add_host_gateway
        self.mounts = [parse_mount_spec(s) for s in additional_mounts]
        self.pull = pull
        self.pull_timeout = pull_timeout
        self.api = DockerAPI(socket)
        self._host_cpus: int | None = None  # the daemon's NCPU, fetched once

    async def aclose(self) -> None:
        """Close the connections to the daemon (the runtime stays usable; they reopen on demand)."""
        await self.api.aclose()

    # --- checks -----------------------------------------------------------------------------------

    async def check(self) -> list[str]:
        if self._socket_problem:
            return [self._socket_problem]
        sock = self.socket
        if not os.path.exists(sock):
            return [
                f"the Docker socket {sock} does not exist: is dockerd running? (scripts/start-dockerd.sh)"
            ]
        if not stat.S_ISSOCK(os.stat(sock).st_mode):
            return [f"{sock} is not a unix socket, so it cannot be the Docker Engine's"]
        try:
            await self.api.ping()
        except DockerAPIError as exc:
            return [f"the Docker Engine does not answer on {sock}: {exc.message}"]
        try:
            info = await self.api.info()  # negotiates the API version first
        except DockerAPIError as exc:
            if "too old" in exc.message:
                return [exc.message]
            return [f"the Docker Engine on {sock} did not answer /info: {exc.message}"]
        problems: list[str] = []
        registered = set((info.get("Runtimes") or {}).keys())
        for wanted in dict.fromkeys(r for r in (self.runtime, self.network_runtime) if r):
            if wanted not in registered:
                problems.append(
                    f"the container runtime {wanted!r} is not registered with the Docker Engine "
                    f"(it knows {', '.join(sorted(registered)) or 'none'}); "
                    'add it to "runtimes" in /etc/docker/daemon.json and reload dockerd (kill -HUP)'
                )
        for key, what in (("MemoryLimit", "memory"), ("CpuCfsQuota", "CPU quota"), ("PidsLimit", "pids")):
            if info.get(key) is False:
                problems.append(
                    f"the Docker Engine cannot enforce {what} limits on this kernel ({key} is false)"
                )
        return problems

    # --- lifecycle --------------------------------------------------------------------------------

    async def prepare(self, space: JobSpace) -> None:
        """Give the workspace to the job's uid:gid so steps (which run as that user) can write to it.

        Runs before any job code has touched the workspace, so it contains only what the executor put
        there; symlinks are never followed.
        """
        try:
            await asyncio.to_thread(space.workspace.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(_chown_tree, space.workspace, space.uid, space.gid)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot prepare the workspace {space.workspace}: {exc}", reason="docker"
            ) from exc

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        if self._socket_problem:
            raise RuntimeFailure(self._socket_problem, reason="docker")
        if not step.image:
            raise RuntimeFailure(f"step {step.key} has no image", reason="image")
        if not step.argv:
            raise RuntimeFailure(f"step {step.key} has no command", reason="docker")
        cpus = await self._cpus(space.limits.cpus)
        config = self._container_config(space, step, cpus)
        await self._ensure_image(space, step.image)
        name = f"{space.name}-{step.index}"
        try:
            cid = await self._create(name, config)
        except asyncio.CancelledError:
            # the daemon may have created it before the cancel reached us
            await _run_to_end(self.api.container_remove(name), f"removing {name}")
            raise
        try:
            return await self._start_and_stream(cid, name, step, output)
        except asyncio.CancelledError:
            grace = max(0, math.floor(space.kill_grace))
            await _run_to_end(self.api.container_stop(cid, grace), f"stopping {name}")
            raise
        finally:
            await _run_to_end(self.api.container_remove(cid), f"removing {name}")

    async def cleanup(self, space: JobSpace) -> None:
        if self._socket_problem:
            return
        job = space.labels[LABEL_JOB]
        try:
            containers = await self.api.containers_list([f"{LABEL_JOB}={job}"])
            await asyncio.gather(*(self.api.container_remove(c["Id"]) for c in containers))
        except DockerAPIError as exc:
            raise _failure(exc, f"cleaning up the containers of job {job}") from exc

    async def janitor(self, live: set[str]) -> list[str]:
        if self._socket_problem:
            return []
        try:
            owned = [f"{LABEL_OWNER}={self.owner}"] if self.owner else []
            containers = await self.api.containers_list([f"{LABEL_MANAGED}=true", *owned])
        except DockerAPIError as exc:
            raise _failure(exc, "listing corral's containers") from exc
        stale = [c for c in containers if (c.get("Labels") or {}).get(LABEL_JOB) not in live]
        removed: list[str] = []
        results = await asyncio.gather(
            *(self.api.container_remove(c["Id"]) for c in stale), return_exceptions=True
        )
        for c, res in zip(stale, results, strict=True):
            name = ((c.get("Names") or ["/" + c["Id"][:12]])[0]).lstrip("/")
            if isinstance(res, BaseException):
                log.warning("docker janitor: cannot remove %s: %s", name, res)
            else:
                removed.append(name)
        return removed

    # --- pieces of run_step -----------------------------------------------------------------------

    async def _cpus(self, wanted: float) -> float:
        """The CPU limit to set: `wanted`, at most the host's CPU count; 0 = unbounded."""
        if wanted <= 0:
            return 0.0
        if self._host_cpus is None:
            try:
                self._host_cpus = int((await self.api.info()).get("NCPU") or 0)
            except DockerAPIError as exc:
                raise _failure(exc, "cannot ask the Docker Engine for its CPU count") from exc
        return min(wanted, self._host_cpus) if self._host_cpus > 0 else wanted

    def _container_config(self, space: JobSpace, step: Step, cpus: float) -> dict[str, Any]:
        workdir = posixpath.normpath(posixpath.join(WORKSPACE_MOUNT, step.dir))
        if workdir != WORKSPACE_MOUNT and not workdir.startswith(WORKSPACE_MOUNT + "/"):
            raise RuntimeFailure(
                f"step {step.key}: dir {step.dir!r} is outside the workspace", reason="docker"
            )
        env: list[str] = []
        for key, value in step.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise RuntimeFailure(
                    f"step {step.key}: invalid environment variable {key!r} (empty, '=' or NUL)",
                    reason="docker",
                )
            env.append(f"{key}={value}")
        limits = space.limits
        host: dict[str, Any] = {
            "Binds": [f"{space.workspace}:{WORKSPACE_MOUNT}"],
            "NetworkMode": "bridge" if space.network else "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "IpcMode": "private",
            "Privileged": False,
            "ReadonlyRootfs": False,  # see the module docstring
            "Init": False,
            "LogConfig": {"Type": "none", "Config": {}},
        }
        if cpus > 0:
            host["NanoCpus"] = round(cpus * NANO_CPUS_PER_CPU)
        if limits.memory_bytes > 0:
            host["Memory"] = limits.memory_bytes
            host["MemorySwap"] = limits.memory_bytes  # equal: no swap on top of the memory limit
        if limits.pids > 0:
            host["PidsLimit"] = limits.pids
        runtime = (self.network_runtime or self.runtime) if space.network else self.runtime
        if runtime:
            host["Runtime"] = runtime
        if self.add_host_gateway:
            host["ExtraHosts"] = [HOST_GATEWAY]
        if self.mounts:
            host["Mounts"] = [dict(m) for m in self.mounts]
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
            "NetworkDisabled": not space.network,
            "HostConfig": host,
        }

    async def _ensure_image(self, space: JobSpace, image: str) -> None:
        try:
            if await self.api.image_inspect(image) is not None:
                return
        except DockerAPIError as exc:
            raise _failure(exc, f"cannot inspect image {image!r}") from exc
        if not self.pull:
            raise RuntimeFailure(
                f"image {image!r} not found: it is not present locally and pulling is disabled",
                reason="image",
            )
        registry, repo, ref = parse_image_ref(image)
        auth = registry_auth_header(space.docker_config, registry)
        try:
            async with asyncio.timeout(self.pull_timeout):
                await self.api.image_pull(repo, ref, registry_auth=auth)
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"image {image!r} not found: pulling it took longer than {self.pull_timeout:g} s",
                reason="image",
            ) from exc
        except DockerAPIError as exc:
            reason = "docker" if exc.status == 0 else "image"
            raise RuntimeFailure(f"image {image!r} not found: {exc.message}", reason=reason) from exc
        try:
            found = await self.api.image_inspect(image)
        except DockerAPIError as exc:
            raise _failure(exc, f"cannot inspect image {image!r}") from exc
        if found is None:
            raise RuntimeFailure(
                f"image {image!r} not found: the pull finished but the image is absent", reason="image"
            )

    async def _create(self, name: str, config: dict[str, Any]) -> str:
        try:
            return await self.api.container_create(name, config)
        except DockerAPIError as exc:
            if exc.status != 409:
                raise _failure(exc, f"cannot create container {name}") from exc
        # A container of that name is left from an earlier attempt of this job: replace it.
        try:
            await self.api.container_remove(name)
            return await self.api.container_create(name, config)
        except DockerAPIError as exc:
            raise _failure(exc, f"cannot create container {name}") from exc

    async def _start_and_stream(self, cid: str, name: str, step: Step, output: OutputSink) -> StepResult:
        try:
            async with self.api.attach(cid) as payloads:
                try:
                    await self.api.container_start(cid)
                except DockerAPIError as exc:
                    raise _failure(exc, f"cannot start the container of step {step.key}") from exc
                async for data in payloads:
                    output(data)
            exit_code = await self.api.container_wait(cid)
            state = await self.api.container_inspect(cid)
        except DockerAPIError as exc:
            raise _failure(exc, f"step {step.key} ({name})") from exc
        oom = bool(state and state.get("State", {}).get("OOMKilled"))
        return StepResult(exit_code=exit_code, oom_killed=oom)
