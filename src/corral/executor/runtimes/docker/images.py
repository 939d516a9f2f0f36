"""Image references, pull failures, and images pulled with job-scoped credentials.

Pull failures are of two kinds (`pull_failure`): the image is missing or refused (a tag or repository
the registry does not know, credentials it refuses, no image for this platform): the job's fault, so
reason "image" and the job fails with "image ... not found: <the registry's words>"; or the registry
cannot be reached (a name that does not resolve, a refused or reset connection, a timeout, a registry
answering 5xx or "too many requests"): not the job's fault, so reason "docker" and the job is errored
and retried elsewhere or later. The Engine API reports pull errors as text only (its message, or an
"error" in the progress stream: no error codes), so the kind is read from that text against the
phrases dockerd and the registry protocol use (the lists below, checked against a real daemon), with
the HTTP status as the fallback: 4xx is the image's, anything else the network's.

Job-scoped credentials (a job's dockerAuthConfig) must not leak through the image cache: an image that
job A pulled with its credentials is local afterwards, and job B must not run it without the
registry's consent. `PulledImages` remembers, per repository, which credentials (an HMAC fingerprint,
never the secret) pulled it and the image ids they brought; a later job whose credentials for that
registry differ, or who has none, pulls again with its own, so the registry decides (a refusal fails
the job: "image ... not found: unauthorized ..."). The operator's credentials
(EXECUTOR_DOCKER_AUTH_CONFIG, the executor user's ~/.docker/config.json, or a job entry equal to
theirs: `credentials.Credential.shared`) are meant for every job and are not job-scoped. The record
is kept in a small JSON file in a directory the executor owns, so it survives restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import DockerAPIError, Reason, RuntimeFailure
from corral.executor.runtimes.docker.api import DockerAPI, docker_failure
from corral.executor.runtimes.docker.credentials import JobAuth, registry_auth_header
from corral.executor.runtimes.docker.registries import (
    DOCKER_HUB,
    DOCKER_HUB_ALIASES,
    canonical_registry,
    check_registry_address,
)

__all__ = ["DEFAULT_PULL_TIMEOUT_S", "Images", "PulledImages", "parse_image_ref", "pull_failure"]

log = logging.getLogger("corral.executor.runtimes.docker")

DEFAULT_PULL_TIMEOUT_S = 600.0  # seconds a pull may take before it counts as an unreachable registry

# dockerd's words for a registry it could not talk to (Go's net errors, registry 5xx, rate limits),
# e.g. 'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', 'dial tcp:
# lookup reg.example on 10.255.255.53:53: no such host', 'toomanyrequests: You have reached your pull
# rate limit'. Looked for first: a token or blob fetch that failed this way is the network's too.
UNREACHABLE_PHRASES = (
    "dial tcp",
    "connection refused",
    "connection reset",
    "no such host",
    "server misbehaving",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "i/o timeout",
    "tls handshake timeout",
    "context deadline exceeded",
    "timeout exceeded",
    "unexpected eof",
    "toomanyrequests",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "internal server error",
)
# ... and for an image the registry does not have or will not give this job, e.g. 'manifest for
# 127.0.0.1:5000/x:nope not found: manifest unknown: manifest unknown' (404), 'pull access denied for
# x, repository does not exist or may require docker login', 'no basic auth credentials'.
MISSING_PHRASES = (
    "manifest unknown",
    "name unknown",
    "not found",
    "does not exist",
    "pull access denied",
    "no matching manifest",
    "invalid reference format",
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
)


def pull_failure(status: int, message: str) -> Reason:
    """What a failed pull means: Reason.IMAGE (missing or refused: the job's fault, it fails) or
    Reason.DOCKER (the registry or the daemon could not be reached: errored, retried). `status`
    is the Engine's HTTP status (200 for an error inside the progress stream, 0: no daemon)."""
    lowered = message.lower()
    if status == 0 or any(p in lowered for p in UNREACHABLE_PHRASES):
        return Reason.DOCKER
    if any(p in lowered for p in MISSING_PHRASES) or 400 <= status < 500:
        return Reason.IMAGE
    return Reason.DOCKER


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


# --- images pulled with job-scoped credentials -----------------------------------------------------


def _canonical_ref(image: str) -> tuple[str, str]:
    """(repository key, full reference) in one spelling: "busybox" -> ("docker.io/library/busybox",
    "docker.io/library/busybox:latest")."""
    registry, repo, ref = parse_image_ref(image)
    path = repo[len(registry) + 1 :] if repo.startswith(registry + "/") else repo
    for alias in DOCKER_HUB_ALIASES:
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


class Images:
    """Finds a step's image: local, or pulled (after the registry address check) with the job's own
    credentials when they differ from those that brought the local copy (see PulledImages)."""

    def __init__(
        self,
        api: DockerAPI,
        pulled: PulledImages,
        *,
        pull: bool,
        pull_timeout: float,
        allowed_registries: frozenset[str],
    ) -> None:
        self.api, self.pulled = api, pulled
        self.pull, self.pull_timeout = pull, pull_timeout
        self.allowed_registries = allowed_registries

    async def ensure(self, job: JobAuth | None, image: str) -> dict[str, Any]:
        """The image's details, pulling it first when it is missing locally, or when it was pulled with
        another job's credentials (see PulledImages): then the registry decides with this job's own.
        `job`: the job's docker config (read for the pull's X-Registry-Auth) and where its credentials
        came from; only the job's own (not the operator's) are fingerprinted, see PulledImages."""
        job = job or JobAuth(None)
        registry, repo, ref = parse_image_ref(image)
        auth = registry_auth_header(job.config, registry)
        fp = self.pulled.fingerprint(auth) if auth is not None and job.scoped(registry) else None
        try:
            found = await self.api.image_inspect(image)
        except DockerAPIError as exc:
            if exc.status == 400:  # e.g. "invalid reference format" (older daemons: IPv6 registries)
                raise RuntimeFailure(
                    f"image {image!r} refused by the Docker Engine: {exc.message}", reason=Reason.IMAGE
                ) from exc
            raise docker_failure(exc, f"cannot inspect image {image!r}") from exc
        if found is not None:
            verdict = self.pulled.verdict(image, found, fp)
            if verdict == "use":
                return found
            if verdict == "refuse":
                raise RuntimeFailure(
                    f"image {image!r} refused: it names by id a local image that was pulled with another "
                    "job's registry credentials; name it by its registry reference (repository:tag) so "
                    "that it is pulled with this job's credentials",
                    reason=Reason.IMAGE,
                )
            log.info("docker: %s was pulled with other job credentials: pulling it again", image)
            if not self.pull:
                raise RuntimeFailure(
                    f"image {image!r} was pulled with another job's registry credentials and pulling is "
                    "disabled, so this job cannot prove its access to it",
                    reason=Reason.IMAGE,
                )
        elif not self.pull:
            raise RuntimeFailure(
                f"image {image!r} not found: it is not present locally and pulling is disabled",
                reason=Reason.IMAGE,
            )
        await check_registry_address(registry, image, self.allowed_registries)
        try:
            async with asyncio.timeout(self.pull_timeout):
                await self.api.image_pull(repo, ref, registry_auth=auth)
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"image {image!r} could not be pulled: the pull took longer than {self.pull_timeout:g} s "
                f"(registry {registry}); the job is retried",
                reason=Reason.DOCKER,
            ) from exc
        except DockerAPIError as exc:
            message = exc.message
            if pull_failure(exc.status, message) is Reason.DOCKER:
                where = "the Docker Engine" if exc.status == 0 else f"its registry {registry}"
                raise RuntimeFailure(
                    f"image {image!r} could not be pulled: {where} cannot be reached ({message}); "
                    "this is not the job's fault, so it is retried",
                    reason=Reason.DOCKER,
                ) from exc
            lowered = message.lower()
            if any(w in lowered for w in ("no basic auth credentials", "authentication required", "denied")):
                if "unauthorized" not in lowered:
                    message = f"unauthorized: {message}"
                message += f" (pulled {job.describe(registry)})" if auth else f" ({job.describe(registry)})"
            raise RuntimeFailure(f"image {image!r} not found: {message}", reason=Reason.IMAGE) from exc
        try:
            found = await self.api.image_inspect(image)
        except DockerAPIError as exc:
            raise docker_failure(exc, f"cannot inspect image {image!r}") from exc
        if found is None:
            raise RuntimeFailure(
                f"image {image!r} not found: the pull finished but the image is absent", reason=Reason.IMAGE
            )
        if self.pulled.record(image, str(found.get("Id", "")), fp):
            await self.pulled.save()
        return found
