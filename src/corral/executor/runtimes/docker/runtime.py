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
  /data (apt-get install, caches in $HOME). It is the container's own overlay layer, gone with it, and
  bounded by the job's disk limit (space.limits.disk_bytes, EXECUTOR_JOB_DISK_SPACE): with StorageOpt
  size where the daemon supports it (overlay2 on xfs with pquota), else by a watchdog that polls the
  layer's size (GET /containers/{id}/json?size=1) while the step runs and kills the container past
  the limit (see `_disk_watchdog` for the interval and what a fast writer gets past it);
- /tmp, and every VOLUME the image declares, is a tmpfs bounded by the memory limit (tmpfs pages
  count against the container's memory cgroup), so the common scratch writes never reach the host
  disk and an image cannot get an unbounded anonymous volume under /var/lib/docker/volumes;
- docker-init (tini, HostConfig.Init as `docker run --init`) as PID 1, argv its child: a cancel or a
  timeout (`docker stop`) reaches the step as SIGTERM at once (a shell as PID 1 ignores SIGTERM, and
  every stop then waited the whole kill grace), SIGKILL follows after the job's kill grace; the log
  says so first (`corral.executor.stopping`), and output written during the grace is kept;
- logging driver "none": output is taken from an attach made before start (the raw stream, live, also
  for partial lines), so nothing is written to the daemon's disk. (Following a json-file log instead
  was measured to lose a last line without a newline, and delays partial lines until their newline.)
- labels: the job's labels plus the step key, so cleanup() and janitor() can find it; its name
  starts with the owner (EXECUTOR_VM_PREFIX): job ids are only unique per server, and two
  executors on one daemon must never collide on a name (a name conflict replaces the old container).

Under gVisor (EXECUTOR_DOCKER_RUNTIME=runsc) steps run with the runtime `runsc`, steps of jobs with
a network interface with `runsc-hostnet` (`DockerSettings.step_runtimes`); what a failed runsc start
leaves running is ended by cleanup() and janitor() (see `gvisor`).

Registry credentials: see `credentials`; registry addresses: see `registries`; images pulled with a
job's own credentials: see `images`; the disk watchdog: see `watchdog`; settings: see `settings`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from corral.errors import ConfigError, DockerAPIError, Reason, RuntimeFailure
from corral.executor import safefs, stopping
from corral.executor.network import egress, netns
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_OWNER,
    WORKSPACE_MOUNT,
    CredentialStager,
    JobSpace,
    OutputSink,
    Runtime,
    Step,
    StepResult,
)
from corral.executor.runtimes.docker import credentials, gvisor
from corral.executor.runtimes.docker.api import DockerAPI, docker_failure, socket_from_env
from corral.executor.runtimes.docker.containers import (
    ContainerOptions,
    add_scratch_mounts,
    container_config,
    container_name,
)
from corral.executor.runtimes.docker.images import DEFAULT_PULL_TIMEOUT_S, Images, PulledImages
from corral.executor.runtimes.docker.pause import start_pause
from corral.executor.runtimes.docker.registries import ALLOWED_REGISTRIES_SETTING, canonical_registry
from corral.executor.runtimes.docker.settings import (
    GVISOR_RUNTIME,
    HOSTNET_SUFFIX,
    DockerSettings,
    parse_mount_spec,
)
from corral.executor.runtimes.docker.watchdog import (
    WATCHDOG_KILL_EXIT,
    disk_watchdog,
    layer_usage,
    upper_dir,
)
from corral.executor.telemetry import tool_version

__all__ = ["DockerRuntime"]

log = logging.getLogger("corral.executor.runtimes.docker")

USER_CONFIGS_KEPT = 256  # ~/.docker/config.json reads kept from secrets() for stage(), newest first
DRAIN_TIMEOUT_S = 5.0  # seconds to read what a stopped container still wrote before it is removed


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


async def _settle(task: asyncio.Task[None]) -> None:
    """Cancel `task` unless it is done, and wait until it is."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})


async def _pump(payloads: AsyncIterator[bytes], output: OutputSink) -> None:
    async for data in payloads:
        output(data)


# --- the runtime ----------------------------------------------------------------------------------


@dataclass
class _JobPulls:
    """A job's registry credentials (its docker config while needed), the images its docker steps
    still need, and the images it already has (a later step with the same image pulls no more)."""

    auth: credentials.JobAuth
    pending: set[str] | None  # None: not known (use_docker_config), the config stays to cleanup
    found: dict[str, dict[str, Any]] = field(default_factory=dict)


class DockerRuntime:
    """Runs each step in a fresh container; see the module docstring for the container's settings."""

    name: ClassVar[str] = "docker"
    cli_runtime: ClassVar[str] = "shell"  # CLI steps and the diff run in the shell sandbox (registry)

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
        allowed_registries: Sequence[str] = (),
        executor_auth_config: Mapping[str, Any] | None = None,
        state_dir: Path | None = None,
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
        allowed_registries: host[:port] of registries that may be pulled from although they are on a
            loopback/private/... address (EXECUTOR_DOCKER_ALLOWED_REGISTRIES); exact matches only.
        executor_auth_config: EXECUTOR_DOCKER_AUTH_CONFIG: credentials equal to its entry for a registry
            are the operator's (for every job), not job-scoped.
        state_dir: where the record of images pulled with job-scoped credentials is kept across
            restarts (created 0700); None = in memory only.
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
        self.api = DockerAPI(socket)
        self._host_cpus: int | None = None  # the daemon's NCPU, fetched once
        try:
            allowed = frozenset(canonical_registry(r) for r in allowed_registries)
        except ValueError as exc:
            raise ConfigError(f"{ALLOWED_REGISTRIES_SETTING}: {exc} (use host[:port], [ipv6]:port)") from None
        self.executor_auth_config = executor_auth_config
        self.pulled = PulledImages(state_dir)
        self._storage_opt: bool | None = None  # StorageOpt size works on this daemon (None: not asked yet)
        self.options = ContainerOptions(runtime, network_runtime, add_host_gateway, tuple(self.mounts))
        self.images = Images(
            self.api,
            self.pulled,
            pull=pull,
            pull_timeout=pull_timeout,
            allowed_registries=allowed,
        )
        self._auth: dict[Path, _JobPulls] = {}  # job root -> its credentials and pulls
        # (queue, job id) -> the ~/.docker/config.json secrets() read for the job's redactor, which
        # stage() then uses: a file changed between the two cannot give the job an unmasked credential
        self._user_configs: OrderedDict[tuple[str, int], credentials.UserConfig] = OrderedDict()
        self._telemetry: dict[str, str] | None = None
        # containers made with a runtime other than the daemon's default: id -> job label, until the
        # job's cleanup (a failed runsc start leaves processes behind, see `gvisor`)
        self._sandboxed: dict[str, str] = {}

    @property
    def allowed_registries(self) -> frozenset[str]:
        """Canonical host[:port] of registries allowed on non-public addresses (read by every pull)."""
        return self.images.allowed_registries

    @allowed_registries.setter
    def allowed_registries(self, value: frozenset[str]) -> None:
        self.images.allowed_registries = frozenset(value)

    @classmethod
    def from_settings(cls, settings: DockerSettings, *, owner: str, state_dir: Path) -> DockerRuntime:
        runtime, network_runtime = settings.step_runtimes()
        return cls(
            runtime=runtime,
            network_runtime=network_runtime,
            add_host_gateway=settings.add_host_gateway,
            additional_mounts=settings.additional_mounts,
            owner=owner,
            allowed_registries=settings.allowed_registries,
            executor_auth_config=settings.auth_config,
            state_dir=state_dir,
        )

    def telemetry(self) -> dict[str, str]:
        if self._telemetry is None:
            version = tool_version(["docker", "version", "--format", "{{.Server.Version}}"])
            # corral's extensions: the OCI runtimes of steps without and with a network interface
            self._telemetry = {
                "dockerVersion": version,
                "dockerRuntime": self.runtime or "runc",
                "dockerNetworkRuntime": self.network_runtime or self.runtime or "runc",
            }
        return self._telemetry

    # --- registry credentials (CredentialStager) --------------------------------------------------

    def registry_credentials(
        self, registry_auth: Mapping[str, Any] | None
    ) -> dict[str, credentials.Credential]:
        """A job's credentials per registry, in corral's one precedence (see `credentials`)."""
        return credentials.job_credentials(registry_auth, self.executor_auth_config)

    def secrets(self, plan: JobPlan) -> list[str]:
        """The job's and the operator's registry credentials, for the job's redactor."""
        user = credentials.read_user_config()  # small and bounded: read here, kept for stage()
        key = (plan.queue, plan.job_id)
        self._user_configs[key] = user
        self._user_configs.move_to_end(key)
        while len(self._user_configs) > USER_CONFIGS_KEPT:
            self._user_configs.popitem(last=False)
        creds = credentials.job_credentials(plan.registry_auth, self.executor_auth_config, user)
        return credentials.auth_values(plan.registry_auth, self.executor_auth_config, creds.values())

    async def stage(self, space: JobSpace, plan: JobPlan) -> None:
        """Write the job's credentials (per registry: its own, else the operator's) to a private
        config for its pulls; removed once every docker step's image is there (see run_step)."""
        user = self._user_configs.pop((plan.queue, plan.job_id), None)
        if user is None:  # no redactor was made for this job here (tests)
            user = await asyncio.to_thread(credentials.read_user_config)
        creds = credentials.job_credentials(plan.registry_auth, self.executor_auth_config, user)
        images = {s.image for s in plan.steps if s.kind == "docker" and s.image}
        if not images:
            creds = {}  # nothing to pull: no config written
        try:
            config = await asyncio.to_thread(credentials.write_docker_config, space.root, creds)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot write the job's docker config: {exc}", reason=Reason.DOCKER
            ) from exc
        self._auth[space.root] = _JobPulls(credentials.JobAuth(config, creds, user), images)

    def use_docker_config(self, space: JobSpace, config: Path) -> None:
        """Pull this job's images with the docker config dir `config` (config.json "auths"), as if
        the job had given them (its dockerAuthConfig) and the operator's were added."""
        given = json.loads((config / "config.json").read_text())
        user = credentials.read_user_config()
        creds = credentials.job_credentials(given, self.executor_auth_config, user)
        self._auth[space.root] = _JobPulls(credentials.JobAuth(config, creds, user), None)

    def docker_config(self, space: JobSpace) -> Path | None:
        """The job's private docker config dir while its pulls may still need it."""
        pulls = self._auth.get(space.root)
        return pulls.auth.config if pulls is not None else None

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
        problems = _runtime_problems(
            info, [r for r in (self.runtime, self.network_runtime) if r], network=self.network_runtime
        )
        if self.pulled.problem:
            problems.append(f"the record of images pulled with job credentials: {self.pulled.problem}")
        user = await asyncio.to_thread(credentials.read_user_config)
        if user.problem:
            problems.append(f"registry credentials: {user.problem}")
        for registry in sorted(user.helpers):
            log.warning(
                "docker: %s names the credential helper %r for %s: credential helpers are not supported, "
                "so pulls get no credentials from it there (give static ones in EXECUTOR_DOCKER_AUTH_CONFIG)",
                user.path,
                user.helpers[registry],
                "every registry" if registry == "*" else registry,
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
            await asyncio.to_thread(safefs.chown_tree, space.workspace, space.uid, space.gid)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot prepare the workspace {space.workspace}: {exc}", reason=Reason.DOCKER
            ) from exc
        if space.network.filtered and not self._socket_problem:  # deny-private: see `pause`
            await start_pause(self.api, space)

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        if self._socket_problem:
            raise RuntimeFailure(self._socket_problem, reason=Reason.DOCKER)
        if not step.image:
            raise RuntimeFailure(f"step {step.key} has no image", reason=Reason.IMAGE)
        if not step.argv:
            raise RuntimeFailure(f"step {step.key} has no command", reason=Reason.DOCKER)
        cpus = await self._cpus(space.limits.cpus)
        config = container_config(space, step, cpus, self.options)
        found = await self._image(space, step.image)
        add_scratch_mounts(config, space, found)
        disk = space.limits.disk_bytes
        if disk > 0 and await self._storage_opt_supported():
            config["HostConfig"]["StorageOpt"] = {"size": str(disk)}
        name = container_name(space, step)
        try:
            cid = await self._create(name, config)
        except asyncio.CancelledError:
            # the daemon may have created it before the cancel reached us
            await _run_to_end(self.api.container_remove(name), f"removing {name}")
            raise
        if config["HostConfig"].get("Runtime"):
            self._sandboxed[cid] = space.labels[LABEL_JOB]
        watch = disk if disk > 0 and "StorageOpt" not in config["HostConfig"] else 0
        host = config["HostConfig"]
        not_counted = [WORKSPACE_MOUNT, *host.get("Tmpfs", {}), *(m.get("Target", "") for m in self.mounts)]
        try:
            return await self._start_and_stream(cid, name, step, output, watch, not_counted, space.kill_grace)
        finally:
            await _run_to_end(self.api.container_remove(cid), f"removing {name}")

    async def cleanup(self, space: JobSpace) -> None:
        pulls = self._auth.pop(space.root, None)
        if pulls is not None and pulls.auth.config is not None:
            await asyncio.to_thread(credentials.remove_docker_config, pulls.auth.config)
        if space.network.filtered:  # the namespace's name and slirp4netns; the pause container below
            try:
                await egress.down(space.owner, space.labels[LABEL_JOB])
            except netns.NetnsError as exc:
                log.warning("docker: cannot remove the network of %s: %s (the janitor will)", space.name, exc)
        if self._socket_problem:
            return
        job = space.labels[LABEL_JOB]
        # Only our own: another executor on this host (another EXECUTOR_VM_PREFIX, or another
        # server, whose job ids start at 1 too) may run a job with the same label right now.
        owned = [f"{LABEL_OWNER}={space.labels[LABEL_OWNER]}"] if space.labels.get(LABEL_OWNER) else []
        try:
            containers = await self.api.containers_list([f"{LABEL_JOB}={job}", *owned])
            await asyncio.gather(*(self.api.container_remove(c["Id"]) for c in containers))
        except DockerAPIError as exc:
            raise docker_failure(exc, f"cleaning up the containers of job {job}") from exc
        ours = {cid: label for cid, label in self._sandboxed.items() if label == job}
        if ours:
            await self._end_orphans(ours, {}, set())
            for cid in ours:
                self._sandboxed.pop(cid, None)

    async def janitor(self, live: set[str]) -> list[str]:
        if self._socket_problem:
            return []
        try:
            owned = [f"{LABEL_OWNER}={self.owner}"] if self.owner else []
            containers = await self.api.containers_list([f"{LABEL_MANAGED}=true", *owned])
        except DockerAPIError as exc:
            raise docker_failure(exc, "listing corral's containers") from exc
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
        removed += await self._janitor_orphans(live)
        return removed

    async def _janitor_orphans(self, live: set[str]) -> list[str]:
        """End the processes failed gVisor starts left behind for containers of ours whose job is not
        live (known from this runtime, or from the job root in the bundle after a restart)."""
        procs = await asyncio.to_thread(gvisor.find)
        if not procs:
            return []
        jobs = {p.container_id: await asyncio.to_thread(gvisor.bundle_job, p.bundle) for p in procs}
        ended = await self._end_orphans(self._sandboxed, jobs, live, procs)
        for p in ended:
            self._sandboxed.pop(p.container_id, None)
        return [f"{p.kind} {p.pid} (container {p.container_id[:12]})" for p in ended]

    async def _end_orphans(
        self,
        ours: Mapping[str, str],
        jobs: Mapping[str, tuple[str, str] | None],
        live: set[str],
        procs: list[gvisor.ShimProcess] | None = None,
    ) -> list[gvisor.ShimProcess]:
        """End the shim/runsc processes of containers in `ours` (or, per `jobs`, of our owner) that
        no longer exist in dockerd and whose job is not in `live`; see `gvisor.orphans`."""
        if procs is None:
            procs = await asyncio.to_thread(gvisor.find, set(ours))
        if not procs:
            return []
        try:
            existing = {c["Id"] for c in await self.api.containers_list([])}
        except DockerAPIError as exc:
            raise docker_failure(exc, "listing containers to find orphaned gVisor processes") from exc
        chosen = gvisor.orphans(procs, existing, ours, jobs, self.owner, live)
        ended = await asyncio.to_thread(gvisor.end, chosen)
        for p in ended:
            log.warning(
                "docker: ended orphaned %s %d of container %s (a failed start of its runtime)",
                p.kind,
                p.pid,
                p.container_id[:12],
            )
        return ended

    # --- pieces of run_step -----------------------------------------------------------------------

    async def _image(self, space: JobSpace, image: str) -> dict[str, Any]:
        """The step's image (see Images.ensure) with the job's credentials; once every image of the
        job's docker steps is there, its docker config is removed (the job needs no pull any more)."""
        pulls = self._auth.get(space.root)
        if pulls is None:
            return await self.images.ensure(None, image)
        found = pulls.found.get(image)
        if found is None:
            found = await self.images.ensure(pulls.auth, image)
            pulls.found[image] = found
        if pulls.pending is None:
            return found
        pulls.pending.discard(image)
        config = pulls.auth.config
        if config is not None and not pulls.pending:
            await asyncio.to_thread(credentials.remove_docker_config, config)
            pulls.auth = dataclasses.replace(pulls.auth, config=None)
        return found

    async def _cpus(self, wanted: float) -> float:
        """The CPU limit to set: `wanted`, at most the host's CPU count; 0 = unbounded."""
        if wanted <= 0:
            return 0.0
        if self._host_cpus is None:
            try:
                self._host_cpus = int((await self.api.info()).get("NCPU") or 0)
            except DockerAPIError as exc:
                raise docker_failure(exc, "cannot ask the Docker Engine for its CPU count") from exc
        return min(wanted, self._host_cpus) if self._host_cpus > 0 else wanted

    async def _storage_opt_supported(self) -> bool:
        """Whether StorageOpt size can bound the writable layer: overlay2 on xfs (with pquota, which
        only a create shows; see `_create`). Asked once."""
        if self._storage_opt is None:
            try:
                info = await self.api.info()
            except DockerAPIError as exc:
                raise docker_failure(exc, "cannot ask the Docker Engine about its storage driver") from exc
            status = dict(p for p in (info.get("DriverStatus") or []) if isinstance(p, list) and len(p) == 2)
            self._storage_opt = info.get("Driver") == "overlay2" and status.get("Backing Filesystem") == "xfs"
        return self._storage_opt

    async def _create(self, name: str, config: dict[str, Any]) -> str:
        try:
            return await self.api.container_create(name, config)
        except DockerAPIError as exc:
            if "StorageOpt" in config["HostConfig"] and "storage" in exc.message.lower():
                # xfs without pquota: fall back to the watchdog from now on
                log.warning("docker: StorageOpt size unusable (%s): using the disk watchdog", exc.message)
                self._storage_opt = False
                del config["HostConfig"]["StorageOpt"]
                return await self._create(name, config)
            if exc.status != 409:
                raise docker_failure(exc, f"cannot create container {name}") from exc
        # A container of that name is left from an earlier attempt of this job: replace it.
        try:
            await self.api.container_remove(name)
            return await self.api.container_create(name, config)
        except DockerAPIError as exc:
            raise docker_failure(exc, f"cannot create container {name}") from exc

    async def _start_and_stream(
        self,
        cid: str,
        name: str,
        step: Step,
        output: OutputSink,
        disk_limit: int,
        not_counted: Sequence[str] = (),
        grace: float = 0.0,
    ) -> StepResult:
        """Run the container to its end, streaming its output; `disk_limit` > 0: watch its writable layer.

        Cancelled (a cancel, the job's deadline): the log says why (`stopping.note`), the container
        gets SIGTERM and after `grace` seconds SIGKILL (docker stop), what it writes meanwhile is
        still read, then CancelledError is raised."""
        seen: list[int] = []  # the layer's size when the watchdog killed the container
        watchdog: asyncio.Task[None] | None = None
        sink = stopping.LineSink(output)
        try:
            async with self.api.attach(cid) as payloads:
                # The output is read by a task of its own, so that it goes on while a cancelled step
                # is being stopped: what the step writes in its grace is kept.
                pump = asyncio.create_task(_pump(payloads, sink))
                try:
                    try:
                        try:
                            await self.api.container_start(cid)
                        except DockerAPIError as exc:
                            raise docker_failure(
                                exc, f"cannot start the container of step {step.key}"
                            ) from exc
                        if disk_limit > 0:
                            watchdog = asyncio.create_task(
                                disk_watchdog(self.api, cid, disk_limit, seen, not_counted)
                            )
                        await asyncio.shield(pump)
                    except asyncio.CancelledError as exc:
                        sink.say(stopping.note(exc, math.floor(max(0.0, grace))))
                        await _run_to_end(self._stop(cid, grace, pump), f"stopping {name}")
                        raise
                finally:
                    await _run_to_end(_settle(pump), f"reading the output of {name}")
            exit_code = await self.api.container_wait(cid)
            state = await self.api.container_inspect(cid)
            upper = upper_dir(state)
            if disk_limit > 0 and upper is None:
                state = await self.api.container_inspect(cid, size=True)  # SizeRw: other drivers
        except DockerAPIError as exc:
            raise docker_failure(exc, f"step {step.key} ({name})") from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.wait({watchdog})
        oom = bool(state and state.get("State", {}).get("OOMKilled"))
        size = int((state or {}).get("SizeRw") or 0)
        if disk_limit > 0 and upper is not None and not seen:
            size = await asyncio.to_thread(layer_usage, upper, disk_limit)
        if disk_limit > 0 and (seen or size > disk_limit):
            mib = disk_limit / 1024**2
            message = (
                f"{step.key} was killed: wrote more than {mib:g} MiB to the container's filesystem "
                f"(limit EXECUTOR_JOB_DISK_SPACE={mib:g} MiB; {seen[0] / 1024**2:.0f} MiB when killed; "
                "/data and /tmp are not counted here)"
                if seen
                else f"{step.key} failed: wrote {size / 1024**2:.0f} MiB to the container's filesystem, "
                f"more than its limit of {mib:g} MiB (EXECUTOR_JOB_DISK_SPACE)"
            )
            output(f"\n{message}\n".encode())
            code = WATCHDOG_KILL_EXIT if seen else (exit_code or 1)
            return StepResult(exit_code=code, oom_killed=oom, reason=Reason.DISK, message=message)
        return StepResult(exit_code=exit_code, oom_killed=oom)

    async def _stop(self, cid: str, grace: float, pump: asyncio.Task[None]) -> None:
        """docker stop (SIGTERM to docker-init, which passes it on; SIGKILL after `grace` s), then read
        the output to its end (bounded): the container is gone, so its stream ends."""
        await self.api.container_stop(cid, max(0, math.floor(grace)))
        try:
            await asyncio.wait_for(asyncio.shield(pump), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "docker: the output of %s did not end %.0f s after it stopped", cid[:12], DRAIN_TIMEOUT_S
            )


def _runtime_problems(
    info: Mapping[str, Any], wanted: Sequence[str], network: str | None = None
) -> list[str]:
    """What keeps the OCI runtimes `wanted` from working on the daemon that answered GET /info.
    `network` (the runtime of jobs with a network) must not be gVisor with its own network stack:
    netstack would send the job's packets past the job namespace's nftables rules."""
    registered: Mapping[str, Any] = info.get("Runtimes") or {}
    problems: list[str] = []
    for name in dict.fromkeys(wanted):
        entry = registered.get(name)
        if entry is None:
            known = ", ".join(sorted(registered)) or "none"
            problems.append(
                f"the container runtime {name!r} is not registered with the Docker Engine (it has "
                f'{known}); add it to "runtimes" in /etc/docker/daemon.json, e.g. '
                f"{json.dumps({'runtimes': {name: _runtime_entry(name)}})}, "
                "then reload dockerd (kill -HUP <dockerd pid>; scripts/start-dockerd.sh does both)"
            )
            continue
        path = entry.get("path") if isinstance(entry, Mapping) else None
        if isinstance(path, str) and path.startswith("/") and not os.path.exists(path):
            problems.append(f"the container runtime {name!r} is registered, but {path} does not exist")
        args = entry.get("runtimeArgs") if isinstance(entry, Mapping) else None
        args = [a for a in args if isinstance(a, str)] if isinstance(args, list) else []
        if name == network and isinstance(path, str) and os.path.basename(path) == GVISOR_RUNTIME:
            if "--network=host" not in args:
                problems.append(
                    f"the network runtime {name!r} (EXECUTOR_DOCKER_NETWORK_RUNTIME) is gVisor without "
                    "--network=host in its runtimeArgs: gVisor's own network stack would bypass the "
                    f"egress firewall of a job's namespace; use {json.dumps(_runtime_entry(name))}"
                )
    return problems


def _runtime_entry(name: str) -> dict[str, Any]:
    """The daemon.json entry corral's setup writes for `name` (gVisor's two), else a template."""
    if name in (GVISOR_RUNTIME, GVISOR_RUNTIME + HOSTNET_SUFFIX):
        network = "host" if name.endswith(HOSTNET_SUFFIX) else "none"
        return {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", f"--network={network}"]}
    return {"path": f"/usr/bin/{name}"}


if TYPE_CHECKING:
    _conforms: Runtime = DockerRuntime()
    _stager: CredentialStager = DockerRuntime()
