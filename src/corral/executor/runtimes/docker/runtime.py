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
- no init process: argv[0] is PID 1. A shell as PID 1 ignores SIGTERM, so a cancelled step is killed
  after the job's kill grace;
- logging driver "none": output is taken from an attach made before start (the raw stream, live, also
  for partial lines), so nothing is written to the daemon's disk. (Following a json-file log instead
  was measured to lose a last line without a newline, and delays partial lines until their newline.)
- labels: the job's labels plus the step key, so cleanup() and janitor() can find it.

Registry credentials (space.docker_config/config.json) are only sent to the daemon in the pull request's
X-Registry-Auth header; nothing of them is mounted into or passed to a container.

Image names are job-controlled, and dockerd pulls from the executor host's own network. Before any
pull the registry's address is checked (`check_registry_address`): registries on loopback, link-local,
private, CGNAT, unspecified, multicast or reserved addresses (IPv4 and IPv6, IPv4 embedded in IPv6,
`localhost`, the numeric IPv4 spellings inet_aton accepts such as 2130706433 or 0x7f.1) are refused
unless the operator lists them, exactly as host[:port], in EXECUTOR_DOCKER_ALLOWED_REGISTRIES.
Hostnames are resolved first and refused if any address is in those ranges. Caveats, to be closed by
an egress firewall for dockerd rather than here: dockerd resolves the name again itself (a DNS name
with a short TTL can answer a public address to us and 127.0.0.1 to dockerd: DNS rebinding), and a
registry may redirect blob downloads or name a token realm on any host, which dockerd follows. Only a
pull contacts a registry: inspecting a local image and creating a container from it do not (the
Engine API's create answers 404 for a missing image; only the CLI pulls then).

Job-scoped credentials (a job's dockerAuthConfig) must not leak through the image cache: an image that
job A pulled with its credentials is local afterwards, and job B must not run it without the
registry's consent. `PulledImages` remembers, per repository, which credentials (an HMAC fingerprint,
never the secret) pulled it and the image ids they brought; a later job whose credentials for that
registry differ, or who has none, pulls again with its own, so the registry decides (a refusal fails
the job: "image ... not found: unauthorized ..."). Credentials equal to the executor's own
EXECUTOR_DOCKER_AUTH_CONFIG entry are the operator's, meant for every job, and are not job-scoped. The
record is kept in a small JSON file in a directory the executor owns, so it survives restarts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from corral.errors import ConfigError, RuntimeFailure
from corral.executor.runtimes.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_OWNER,
    SCRIPTS_MOUNT,
    WORKSPACE_MOUNT,
    JobSpace,
    OutputSink,
    Step,
    StepResult,
)
from corral.executor.runtimes.dockerapi import DockerAPI, DockerAPIError, socket_from_env

__all__ = [
    "ALLOWED_REGISTRIES_SETTING",
    "LABEL_STEP",
    "DockerRuntime",
    "PulledImages",
    "canonical_registry",
    "check_registry_address",
    "parse_image_ref",
    "parse_mount_spec",
    "refused_address",
    "registry_auth_header",
]

log = logging.getLogger(__name__)

LABEL_STEP = "dev.corral.step"  # the step's log key, on every step container
DEFAULT_PULL_TIMEOUT_S = 600.0  # seconds a pull may take before the step fails with reason "image"
NANO_CPUS_PER_CPU = 1_000_000_000  # Engine API unit for NanoCpus
HOST_GATEWAY = "host.docker.internal:host-gateway"  # --add-host entry, as Sourcegraph adds it
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DOCKER_HUB_AUTH_ADDRESS = "https://index.docker.io/v1/"
_DOCKER_HUB_HOST = "registry-1.docker.io"  # where dockerd pulls docker.io images from
ALLOWED_REGISTRIES_SETTING = "EXECUTOR_DOCKER_ALLOWED_REGISTRIES"
RESOLVE_TIMEOUT_S = 10.0  # seconds a registry's name may take to resolve before the pull is refused
# The disk watchdog polls a running step's writable-layer size this often, or 20x as long as the poll
# itself took (the daemon walks the layer's files: 0.4 ms for a few files, ~3.5 us per file, 0.2 s for
# 60,000 files on this machine), so that it costs the daemon at most ~5% of a core per step.
DISK_POLL_INTERVAL_S = 0.1
DISK_POLL_COST_FACTOR = 20.0
_WATCHDOG_KILL_EXIT = 137  # exit code reported for a step the watchdog killed (SIGKILL)
INODE_BYTES = 256  # bytes charged per file of the writable layer on top of its blocks (an ext4 inode)
LAYER_MAX_DEPTH = 256  # directory levels of the writable layer the watchdog follows; deeper = over limit


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
    # as Docker's splitDockerDomain: a first component with ".", ":", upper case, or "localhost"
    if rest and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
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
    return auth_header_from_config(config, registry)


def auth_header_from_config(config: Any, registry: str) -> str | None:
    """The X-Registry-Auth value for `registry` from a parsed docker config ({"auths": ...}), or None."""
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


# --- registry addresses (SSRF through the image name) ----------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _split_registry(registry: str) -> tuple[str, int | None]:
    """ "[::1]:5000" -> ("::1", 5000); "Reg.Example.:443" -> ("reg.example", 443). ValueError if malformed."""
    r = registry.strip()
    if r.startswith("["):
        end = r.find("]")
        if end < 0:
            raise ValueError(f"{registry!r}: unclosed [")
        host, rest = r[1:end], r[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{registry!r}: junk after ]")
        port_s = rest[1:]
    else:
        host, _, port_s = r.partition(":")
    if port_s and not (port_s.isdigit() and 0 < int(port_s) < 65536):
        raise ValueError(f"{registry!r}: bad port")
    host = host.lower().rstrip(".")
    if not host or "/" in host:
        raise ValueError(f"{registry!r}: no host")
    return host, int(port_s) if port_s else None


def canonical_registry(registry: str) -> str:
    """One spelling per host[:port] (lower case, no trailing dot, IPv6 in brackets): for allow-lists."""
    host, port = _split_registry(registry)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells without DNS: an IP literal, or any IPv4 form inet_aton accepts
    (2130706433, 0x7f.1, 0177.0.0.1, 127.1), as the C resolver does. None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or not host.isascii():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def refused_address(ip: IPAddress) -> str | None:
    """Why a registry must not be contacted at `ip` ("loopback", "private", ...), or None if it may."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and (any(ip in n for n in _NAT64) or ip in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            why = refused_address(embedded)
            if why:
                return f"{why} (IPv4 {embedded} inside {ip})"
    if not ip.is_global:
        return "non-global"
    return None


async def check_registry_address(registry: str, image: str, allowed: Iterable[str] = ()) -> None:
    """Refuse (RuntimeFailure, reason "image") a pull from a registry on a non-public address.

    `allowed`: canonical host[:port] entries (EXECUTOR_DOCKER_ALLOWED_REGISTRIES) that pass as they are.
    A hostname is resolved (off the event loop) and refused if any of its addresses is refused.
    """

    def refuse(what: str) -> RuntimeFailure:
        return RuntimeFailure(
            f"image {image!r} refused: its registry {registry} {what}; dockerd pulls from the executor "
            f"host's network, so a job may not make it connect there. An operator can allow this "
            f"registry with {ALLOWED_REGISTRIES_SETTING}={shown}",
            reason="image",
        )

    shown = registry
    try:
        shown = canonical_registry(registry)
        host, port = _split_registry(registry)
    except ValueError as exc:
        raise refuse(f"is not a valid host[:port] ({exc})") from None
    if shown in set(allowed):
        return
    if registry == DOCKER_HUB:
        host = _DOCKER_HUB_HOST
    if host == "localhost" or host.endswith(".localhost"):
        raise refuse("is loopback (localhost)")
    ip = literal_address(host)
    if ip is not None:
        why = refused_address(ip)
        if why:
            raise refuse(f"is on a {why} address ({ip})")
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise refuse(f"cannot be resolved ({exc or 'timed out'})") from None
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        why = refused_address(addr)
        if why:
            raise refuse(f"resolves to a {why} address ({addr})")


# --- images pulled with job-scoped credentials -----------------------------------------------------


def _canonical_ref(image: str) -> tuple[str, str]:
    """(repository key, full reference) in one spelling: "busybox" -> ("docker.io/library/busybox",
    "docker.io/library/busybox:latest")."""
    registry, repo, ref = parse_image_ref(image)
    path = repo[len(registry) + 1 :] if repo.startswith(registry + "/") else repo
    for alias in _DOCKER_HUB_ALIASES:
        if registry == DOCKER_HUB and path.startswith(alias + "/"):
            path = path[len(alias) + 1 :]
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    try:
        host = canonical_registry(registry)
    except ValueError:
        host = registry
    key = f"{host}/{path}"
    return key, f"{key}{'@' if '@' in image else ':'}{ref}"


def _names_image(found: Mapping[str, Any], image: str) -> bool:
    """Whether `image` is one of the local image's names (a tag or repo digest), not an id (prefix)."""
    wanted = _canonical_ref(image)[1]
    names = [*(found.get("RepoTags") or []), *(found.get("RepoDigests") or [])]
    return any(isinstance(n, str) and _canonical_ref(n)[1] == wanted for n in names)


class PulledImages:
    """Which repositories (and image ids) were pulled with job-scoped credentials, and with which ones.

    Per repository: the HMAC fingerprints of the credentials that pulled from it (a later job holding
    the same credentials may use the local copy) and the image ids those pulls brought (so that a job
    cannot reach them by id). Kept in `state_dir/FILE` when a state dir is given: written atomically
    (a new O_EXCL|O_NOFOLLOW file, fsync, rename) relative to the directory, which the executor
    creates 0700 and must own. If the record cannot be read (corrupt, or the directory is not safe),
    it fails closed: every local image that came from a registry is pulled again before use, and that
    is remembered in the file ("strict") until an operator deletes it.
    """

    FILE = "job-pulled-images.json"
    MAX_BYTES = 8 * 1024 * 1024  # the file is refused (strict mode) beyond this
    MAX_PER_REPO = 64  # fingerprints and ids kept per repository (oldest dropped first)
    MAX_REPOS = 20_000  # beyond this, strict mode instead of forgetting (forgetting would fail open)

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.repos: dict[str, dict[str, list[str]]] = {}
        self.strict = False
        self.problem: str | None = None  # why the record could not be loaded or saved, for check()
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._version = 0
        self._written = 0
        if state_dir is not None:
            self._load()

    # --- decisions --------------------------------------------------------------------------------

    def fingerprint(self, auth_header: str) -> str:
        return hmac.new(self._key, auth_header.encode(), hashlib.sha256).hexdigest()

    def verdict(self, image: str, found: Mapping[str, Any], fp: str | None) -> str:
        """For a local image: "use" it as is, "pull" it again with this job's credentials (fingerprint
        `fp`; None = no job-scoped ones), or "refuse" (named by id, so it cannot be pulled)."""
        entry = self.repos.get(_canonical_ref(image)[0])
        if entry is not None:
            return "use" if fp is not None and fp in entry["fps"] else "pull"
        named = _names_image(found, image)
        image_id = found.get("Id")
        held = [e for e in self.repos.values() if image_id in e["ids"]]
        if held and not any(fp is not None and fp in e["fps"] for e in held):
            # An image of a recorded repository reached under another name: a tag of an unrecorded
            # repository was made by the operator or by a pull without job credentials, so it is
            # public; an id is not a name and proves nothing.
            return "use" if named else "refuse"
        if self.strict and found.get("RepoDigests"):
            return "pull" if named else "refuse"
        return "use"

    def record(self, image: str, image_id: str, fp: str | None) -> bool:
        """Remember a successful pull; True when the record changed (then `save()` it)."""
        if fp is None:
            return False
        key = _canonical_ref(image)[0]
        if key not in self.repos and len(self.repos) >= self.MAX_REPOS:
            self.strict = True
            return True
        entry = self.repos.setdefault(key, {"fps": [], "ids": []})
        changed = False
        for field_name, value in (("fps", fp), ("ids", image_id)):
            values = entry[field_name]
            if value not in values:
                values.append(value)
                del values[: max(0, len(values) - self.MAX_PER_REPO)]
                changed = True
        return changed

    # --- persistence ------------------------------------------------------------------------------

    def _open_dir(self) -> int:
        assert self.state_dir is not None
        try:
            self.state_dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise PermissionError(
                f"{self.state_dir} must be owned by the executor's user and not group/world-writable"
            )
        return fd

    def _load(self) -> None:
        try:
            dfd = self._open_dir()
        except OSError as exc:
            self._fail_closed(f"cannot use {self.state_dir}: {exc}")
            return
        try:
            fd = os.open(self.FILE, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            os.close(dfd)
            return
        except OSError as exc:
            os.close(dfd)
            self._fail_closed(f"cannot read {self.state_dir}/{self.FILE}: {exc}")
            return
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read(self.MAX_BYTES + 1)
            if len(data) > self.MAX_BYTES:
                raise ValueError(f"larger than {self.MAX_BYTES} bytes")
            doc = json.loads(data)
            repos = doc["repos"]
            if not (
                isinstance(repos, dict)
                and all(
                    isinstance(e, dict)
                    and all(
                        isinstance(e.get(k), list) and all(isinstance(v, str) for v in e[k])
                        for k in ("fps", "ids")
                    )
                    for e in repos.values()
                )
            ):
                raise ValueError("unexpected shape")
            self._key = bytes.fromhex(doc["key"])
            self.repos = {str(k): {"fps": v["fps"], "ids": v["ids"]} for k, v in repos.items()}
            self.strict = bool(doc.get("strict", False))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._fail_closed(f"{self.state_dir}/{self.FILE} is unreadable ({exc})")
        finally:
            os.close(dfd)

    def _fail_closed(self, why: str) -> None:
        self.problem = f"{why}: every image from a registry is pulled again before use"
        self.strict = True
        log.warning("docker: %s", self.problem)

    async def save(self) -> None:
        if self.state_dir is None:
            return
        self._version += 1
        doc = {"version": 1, "key": self._key.hex(), "strict": self.strict, "repos": self.repos}
        await asyncio.to_thread(self._write, self._version, json.dumps(doc, sort_keys=True).encode())

    def _write(self, version: int, data: bytes) -> None:
        with self._lock:
            if version <= self._written:
                return  # a newer snapshot is already on disk
            tmp = f".{self.FILE}.{secrets.token_hex(6)}.tmp"
            try:
                dfd = self._open_dir()
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(tmp, self.FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self._written = version
            except OSError as exc:
                self.problem = f"cannot save {self.state_dir}/{self.FILE}: {exc}"
                log.warning("docker: %s (the record is kept in memory)", self.problem)


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


def _deleted_open_bytes(init_pid: int, not_counted: Sequence[str]) -> int:
    """Bytes on disk of files that the container's processes hold open but have unlinked: they use the
    writable layer's disk but no longer appear in it, so SizeRw misses them (`exec 3>/f; rm /f; dd >&3`).

    The processes are those of the pids cgroup of `init_pid`; a file counts unless its path (as the
    container sees it, in /proc/PID/fd) is under one of `not_counted` (the workspace, tmpfs mounts).
    Only /proc and /sys are read: the magic links are stat()ed, which reaches the open file itself.
    """
    try:
        with open(f"/proc/{init_pid}/cgroup") as f:
            path = next((ln.split(":", 2)[2].strip() for ln in f if ln.split(":", 2)[1:2] == ["pids"]), None)
        pids = [init_pid]
        if path:
            with open(f"/sys/fs/cgroup/pids{path}/cgroup.procs") as f:
                pids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(link)
                if not target.endswith(" (deleted)") or not target.startswith("/"):
                    continue
                if any(target == p or target.startswith(p.rstrip("/") + "/") for p in not_counted):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _layer_usage(upper: str, cap: int) -> int:
    """Disk the writable layer (overlay2's upper dir, on the host) really takes: every entry's allocated
    blocks plus INODE_BYTES. dockerd's SizeRw sums apparent sizes and skips directories, so 60,000
    one-byte files (240 MiB of 4 KiB blocks) counted as 60 KB. The walk is iterative, through directory
    descriptors opened with O_NOFOLLOW (nothing is followed, read or written: only lstat), stops as soon
    as `cap` is passed, and a tree deeper than LAYER_MAX_DEPTH counts as over the cap (it cannot hide
    data where the walk does not reach). Returns the bytes counted (> cap when over)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        root = os.open(upper, flags)
    except OSError:
        return 0
    total = 0
    stack: list[tuple[int, int]] = [(root, 0)]  # (directory fd, depth)
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512 + INODE_BYTES
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 > LAYER_MAX_DEPTH:
                            return cap + 1
                        try:
                            stack.append((os.open(entry.name, flags, dir_fd=fd), depth + 1))
                        except OSError:
                            continue
                    if total > cap:
                        return total
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def _upper_dir(state: dict[str, Any] | None) -> str | None:
    """overlay2's upper dir of a container (GraphDriver.Data.UpperDir), when the daemon says it."""
    driver = (state or {}).get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir") if driver.get("Name") == "overlay2" else None
    return upper if isinstance(upper, str) and upper.startswith("/") else None


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
        self.pull = pull
        self.pull_timeout = pull_timeout
        self.api = DockerAPI(socket)
        self._host_cpus: int | None = None  # the daemon's NCPU, fetched once
        try:
            self.allowed_registries = frozenset(canonical_registry(r) for r in allowed_registries)
        except ValueError as exc:
            raise ConfigError(f"{ALLOWED_REGISTRIES_SETTING}: {exc} (use host[:port], [ipv6]:port)") from None
        self.executor_auth_config = executor_auth_config
        self.pulled = PulledImages(state_dir)
        self._storage_opt: bool | None = None  # StorageOpt size works on this daemon (None: not asked yet)

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
        if self.pulled.problem:
            problems.append(f"the record of images pulled with job credentials: {self.pulled.problem}")
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
        found = await self._ensure_image(space, step.image)
        self._add_scratch_mounts(config, space, found)
        disk = space.limits.disk_bytes
        if disk > 0 and await self._storage_opt_supported():
            config["HostConfig"]["StorageOpt"] = {"size": str(disk)}
        name = f"{space.name}-{step.index}"
        try:
            cid = await self._create(name, config)
        except asyncio.CancelledError:
            # the daemon may have created it before the cancel reached us
            await _run_to_end(self.api.container_remove(name), f"removing {name}")
            raise
        watch = disk if disk > 0 and "StorageOpt" not in config["HostConfig"] else 0
        host = config["HostConfig"]
        not_counted = [WORKSPACE_MOUNT, *host.get("Tmpfs", {}), *(m.get("Target", "") for m in self.mounts)]
        try:
            return await self._start_and_stream(cid, name, step, output, watch, not_counted)
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
            "Binds": [f"{space.workspace}:{WORKSPACE_MOUNT}", f"{space.scripts}:{SCRIPTS_MOUNT}:ro"],
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

    def _job_scoped_fingerprint(self, registry: str, auth: str | None) -> str | None:
        """The fingerprint of the job's own credentials for `registry`; None when it has none, or when
        they are the operator's (EXECUTOR_DOCKER_AUTH_CONFIG's entry for that registry, for every job)."""
        if auth is None:
            return None
        if self.executor_auth_config is not None:
            if auth_header_from_config(self.executor_auth_config, registry) == auth:
                return None
        return self.pulled.fingerprint(auth)

    async def _ensure_image(self, space: JobSpace, image: str) -> dict[str, Any]:
        """The image's details, pulling it first when it is missing locally, or when it was pulled with
        another job's credentials (see PulledImages): then the registry decides with this job's own."""
        registry, repo, ref = parse_image_ref(image)
        auth = registry_auth_header(space.docker_config, registry)
        fp = self._job_scoped_fingerprint(registry, auth)
        try:
            found = await self.api.image_inspect(image)
        except DockerAPIError as exc:
            if exc.status == 400:  # e.g. "invalid reference format" (older daemons: IPv6 registries)
                raise RuntimeFailure(
                    f"image {image!r} refused by the Docker Engine: {exc.message}", reason="image"
                ) from exc
            raise _failure(exc, f"cannot inspect image {image!r}") from exc
        if found is not None:
            verdict = self.pulled.verdict(image, found, fp)
            if verdict == "use":
                return found
            if verdict == "refuse":
                raise RuntimeFailure(
                    f"image {image!r} refused: it names by id a local image that was pulled with another "
                    "job's registry credentials; name it by its registry reference (repository:tag) so "
                    "that it is pulled with this job's credentials",
                    reason="image",
                )
            log.info("docker: %s was pulled with other job credentials: pulling it again", image)
            if not self.pull:
                raise RuntimeFailure(
                    f"image {image!r} was pulled with another job's registry credentials and pulling is "
                    "disabled, so this job cannot prove its access to it",
                    reason="image",
                )
        elif not self.pull:
            raise RuntimeFailure(
                f"image {image!r} not found: it is not present locally and pulling is disabled",
                reason="image",
            )
        await check_registry_address(registry, image, self.allowed_registries)
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
            message = exc.message
            lowered = message.lower()
            if any(w in lowered for w in ("no basic auth credentials", "authentication required", "denied")):
                if "unauthorized" not in lowered:
                    message = f"unauthorized: {message}"
                whose = "with this job's credentials" if auth else "this job has no credentials for it"
                message += f" ({whose})"
            raise RuntimeFailure(f"image {image!r} not found: {message}", reason=reason) from exc
        try:
            found = await self.api.image_inspect(image)
        except DockerAPIError as exc:
            raise _failure(exc, f"cannot inspect image {image!r}") from exc
        if found is None:
            raise RuntimeFailure(
                f"image {image!r} not found: the pull finished but the image is absent", reason="image"
            )
        if self.pulled.record(image, str(found.get("Id", "")), fp):
            await self.pulled.save()
        return found

    def _add_scratch_mounts(self, config: dict[str, Any], space: JobSpace, image: Mapping[str, Any]) -> None:
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
            if any(target == t or target.startswith(t.rstrip("/") + "/") for t in taken if t):
                continue  # under the workspace or an operator mount: already not the writable layer
            tmpfs[target] = options
        host["Tmpfs"] = tmpfs

    async def _storage_opt_supported(self) -> bool:
        """Whether StorageOpt size can bound the writable layer: overlay2 on xfs (with pquota, which
        only a create shows; see `_create`). Asked once."""
        if self._storage_opt is None:
            try:
                info = await self.api.info()
            except DockerAPIError as exc:
                raise _failure(exc, "cannot ask the Docker Engine about its storage driver") from exc
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
                raise _failure(exc, f"cannot create container {name}") from exc
        # A container of that name is left from an earlier attempt of this job: replace it.
        try:
            await self.api.container_remove(name)
            return await self.api.container_create(name, config)
        except DockerAPIError as exc:
            raise _failure(exc, f"cannot create container {name}") from exc

    async def _start_and_stream(
        self,
        cid: str,
        name: str,
        step: Step,
        output: OutputSink,
        disk_limit: int,
        not_counted: Sequence[str] = (),
    ) -> StepResult:
        """Run the container to its end, streaming its output; `disk_limit` > 0: watch its writable layer."""
        seen: list[int] = []  # the layer's size when the watchdog killed the container
        watchdog: asyncio.Task[None] | None = None
        try:
            async with self.api.attach(cid) as payloads:
                try:
                    await self.api.container_start(cid)
                except DockerAPIError as exc:
                    raise _failure(exc, f"cannot start the container of step {step.key}") from exc
                if disk_limit > 0:
                    watchdog = asyncio.create_task(self._disk_watchdog(cid, disk_limit, seen, not_counted))
                async for data in payloads:
                    output(data)
            exit_code = await self.api.container_wait(cid)
            state = await self.api.container_inspect(cid)
            upper = _upper_dir(state)
            if disk_limit > 0 and upper is None:
                state = await self.api.container_inspect(cid, size=True)  # SizeRw: other drivers
        except DockerAPIError as exc:
            raise _failure(exc, f"step {step.key} ({name})") from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.wait({watchdog})
        oom = bool(state and state.get("State", {}).get("OOMKilled"))
        size = int((state or {}).get("SizeRw") or 0)
        if disk_limit > 0 and upper is not None and not seen:
            size = await asyncio.to_thread(_layer_usage, upper, disk_limit)
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
            code = _WATCHDOG_KILL_EXIT if seen else (exit_code or 1)
            return StepResult(exit_code=code, oom_killed=oom, reason="disk", message=message)
        return StepResult(exit_code=exit_code, oom_killed=oom)

    async def _disk_watchdog(
        self, cid: str, limit: int, seen: list[int], not_counted: Sequence[str] = ()
    ) -> None:
        """Kill the container once its writable layer holds more than `limit` bytes.

        Measures the layer's allocated blocks (`_layer_usage`, overlay2; SizeRw for other drivers) every
        DISK_POLL_INTERVAL_S, or DISK_POLL_COST_FACTOR times the last poll's own
        duration when that is longer (the daemon walks every file of the layer). A writer gets past the
        limit by what it writes in one interval plus the kill's latency: measured with dd from
        /dev/zero (~2 GB/s here) and a 50 MiB limit, it had 250-330 MiB when killed at a 0.1 s interval
        (570-590 MiB at 0.25 s, 0.6-1.2 GiB at 0.5 s). Files the step unlinked but holds open count
        too (see `_deleted_open_bytes`; under gVisor the sandbox holds them, so they are not seen).
        For a hard bound, use overlay2 on xfs with pquota (then StorageOpt size is used).
        """
        interval = DISK_POLL_INTERVAL_S
        upper: str | None = None  # overlay2's upper dir, measured by blocks (see _layer_usage)
        while True:
            await asyncio.sleep(interval)
            began = time.monotonic()
            try:
                if upper is None:
                    state = await self.api.container_inspect(cid)
                    upper = _upper_dir(state) or ""
                if not upper:
                    state = await self.api.container_inspect(cid, size=True)
                else:
                    state = await self.api.container_inspect(cid)
            except DockerAPIError as exc:
                log.warning("docker: disk watchdog of %s: %s", cid[:12], exc.message)
                continue
            if state is None or not (state.get("State") or {}).get("Running"):
                return
            if upper:
                size = await asyncio.to_thread(_layer_usage, upper, limit)
            else:
                size = int(state.get("SizeRw") or 0)
            interval = max(DISK_POLL_INTERVAL_S, (time.monotonic() - began) * DISK_POLL_COST_FACTOR)
            pid = int((state.get("State") or {}).get("Pid") or 0)
            if pid > 0 and size <= limit:
                size += await asyncio.to_thread(_deleted_open_bytes, pid, not_counted)
            if size > limit:
                seen.append(size)
                try:
                    await self.api.container_kill(cid)
                except DockerAPIError as exc:
                    log.warning("docker: disk watchdog cannot kill %s: %s", cid[:12], exc.message)
                return
