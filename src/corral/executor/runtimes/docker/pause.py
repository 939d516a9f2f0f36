"""The network of a deny-private job in the docker runtime: a pause container per job.

Docker cannot put a container into a named network namespace, so each such job gets a pause
container (`pause_name`): NetworkMode none (only lo), the job's uid:gid, every capability dropped,
no-new-privileges, the job's labels (cleanup() and janitor() remove it with the steps), running
busybox's `sleep` from `PAUSE_IMAGE`. Its network namespace is named `<owner>.<label>` and given
the firewall and slirp4netns by `corral.executor.network.egress` (exactly as the shell runtime's),
before any step exists; every step container then joins it (NetworkMode container:<pause>) and
gets the namespace's resolv.conf bound read-only at /etc/resolv.conf. The job's CLI steps in the
shell sandbox enter the same namespace.

`PAUSE_IMAGE` is made locally, never pulled: the host's static busybox (Debian's busybox-static)
imported as a one-file image (POST /images/create?fromSrc=-), once per daemon.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

from corral.errors import DockerAPIError, Reason, RuntimeFailure
from corral.executor.network import egress
from corral.executor.runtimes.base import LABEL_JOB, JobSpace
from corral.executor.runtimes.docker.api import DockerAPI, docker_failure

__all__ = ["PAUSE_IMAGE", "busybox_path", "ensure_image", "pause_config", "pause_name", "start_pause"]

PAUSE_IMAGE = "corral/pause:1"
PAUSE_SECONDS = "2147483647"  # the pause process sleeps until it is removed
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
LABEL_PAUSE = "dev.corral.pause"


def pause_name(space: JobSpace) -> str:
    return f"{space.owner}-{space.name}-net"


def busybox_path() -> str | None:
    """The host's busybox, if it is statically linked (it runs alone in the pause image)."""
    for candidate in (*BUSYBOX_CANDIDATES, shutil.which("busybox") or ""):
        path = Path(candidate)
        if candidate and path.is_file():
            with path.open("rb") as f:
                head = f.read(1 << 16)
            if head.startswith(b"\x7fELF") and b"/ld-linux" not in head and b"ld-musl" not in head:
                return str(path)
    return None


def _image_tar(busybox: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="busybox")
    return buf.getvalue()


async def ensure_image(api: DockerAPI) -> None:
    """Import PAUSE_IMAGE unless the daemon has it. RuntimeFailure when it cannot."""
    try:
        if await api.image_inspect(PAUSE_IMAGE) is not None:
            return
        busybox = busybox_path()
        if busybox is None:
            raise RuntimeFailure(
                "the pause container of a deny-private job needs a static busybox on the host "
                "(apt-get install busybox-static)",
                reason=Reason.DOCKER,
            )
        repo, tag = PAUSE_IMAGE.rsplit(":", 1)
        resp = await api.request(
            "POST",
            "/images/create",
            params={"fromSrc": "-", "repo": repo, "tag": tag},
            headers={"Content-Type": "application/x-tar"},
            content=_image_tar(busybox),
        )
        if '"error"' in resp.text:
            raise RuntimeFailure(f"cannot import {PAUSE_IMAGE}: {resp.text[:500]}", reason=Reason.DOCKER)
    except DockerAPIError as exc:
        raise docker_failure(exc, f"cannot make the image {PAUSE_IMAGE}") from exc


def pause_config(space: JobSpace) -> dict[str, Any]:
    return {
        "Image": PAUSE_IMAGE,
        "Entrypoint": ["/busybox", "sleep", PAUSE_SECONDS],
        "User": f"{space.uid}:{space.gid}",
        "Labels": {**space.labels, LABEL_PAUSE: "true"},
        "NetworkDisabled": False,
        "HostConfig": {
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "IpcMode": "private",
            "Privileged": False,
            # runc's init (Go, several threads) runs inside these limits before it execs sleep: with
            # 4 pids / 16 MiB it failed now and then on a loaded machine ("cannot start a stopped
            # process"); sleep itself needs 1 pid and well under 1 MiB
            "Memory": 64 * 1024**2,
            "MemorySwap": 64 * 1024**2,
            "PidsLimit": 32,
            "LogConfig": {"Type": "none", "Config": {}},
        },
    }


async def start_pause(api: DockerAPI, space: JobSpace) -> str:
    """The job's pause container, started, its namespace behind the egress firewall; its id."""
    await ensure_image(api)
    name = pause_name(space)
    try:
        existing = await api.container_inspect(name)
        if existing is not None and (existing.get("State") or {}).get("Running"):
            if egress.is_up(space.owner, space.labels[LABEL_JOB]):
                return str(existing["Id"])
        if existing is not None:
            await api.container_remove(name)
        cid = await api.container_create(name, pause_config(space))
        await api.container_start(cid)
        state = await api.container_inspect(cid)
    except DockerAPIError as exc:
        raise docker_failure(exc, f"cannot start the job's pause container {name}") from exc
    pid = int(((state or {}).get("State") or {}).get("Pid") or 0)
    if pid <= 0:
        raise RuntimeFailure(f"the job's pause container {name} is not running", reason=Reason.DOCKER)
    try:
        await egress.up(space.owner, space.labels[LABEL_JOB], space.network, space.root, pid=pid)
    except egress.EgressError as exc:
        raise RuntimeFailure(f"cannot set up the job's network: {exc}", reason=Reason.DOCKER) from exc
    return cid
