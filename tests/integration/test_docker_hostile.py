"""Attacks on the docker runtime through what a job controls: its image name, its registry credentials,
and the container's writable layer (issue 9, items 7, 8 and 9b).

Network rule: nothing here resolves or contacts anything but loopback. Image names use IP literals and
`localhost` only; name resolution of other names is replaced by a fake in the pure tests; every
container runs with network "none".
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ConfigError, RuntimeFailure
from corral.executor.runtimes.base import JobSpace, Limits, Step, StepResult
from corral.executor.runtimes.docker import (
    ALLOWED_REGISTRIES_SETTING,
    DockerRuntime,
    PulledImages,
    canonical_registry,
    check_registry_address,
    parse_image_ref,
)
from corral.executor.settings import ExecutorSettings
from tests.conftest import require

IMAGE = "corral/busybox:1"
MiB = 1024**2


def step(script: str, image: str = IMAGE, index: int = 0) -> Step:
    return Step(
        key=f"step.docker.{index}", kind="docker", index=index, image=image, argv=("/bin/sh", "-c", script)
    )


class Output:
    def __init__(self) -> None:
        self.data = b""

    def __call__(self, data: bytes) -> None:
        self.data += data


@pytest.fixture
async def make_space(tmp_path: Path) -> AsyncIterator[Callable[..., JobSpace]]:
    spaces: list[JobSpace] = []

    def make(**kw: Any) -> JobSpace:
        job_id = random.randrange(10**8, 10**9)
        root = tmp_path / f"job-{job_id}"
        (root / "workspace").mkdir(parents=True)
        root.chmod(0o700)
        kw.setdefault("kill_grace", 1.0)
        kw.setdefault("limits", Limits(cpus=1, memory_bytes=256 * MiB, pids=256))
        space = JobSpace(job_id=job_id, queue="hostile", root=root, workspace=root / "workspace", **kw)
        spaces.append(space)
        return space

    yield make
    cleaner = DockerRuntime()
    for space in spaces:
        await cleaner.cleanup(space)
    await cleaner.aclose()


async def run(
    rt: DockerRuntime, space: JobSpace, script: str, image: str = IMAGE
) -> tuple[StepResult, Output]:
    out = Output()
    await rt.prepare(space)
    return await rt.run_step(space, step(script, image), out), out


def untag(image: str) -> None:
    subprocess.run(["docker", "rmi", image], capture_output=True, timeout=60)


# --- item 7: registry addresses (pure: no name is resolved for real) -------------------------------


# Registry spellings the address check must refuse. Only the pure check sees them: the test fakes
# getaddrinfo and asserts it is never asked, and no pull happens, so nothing is ever sent to them.
REFUSED = [
    "127.0.0.1:5000",
    "127.9.9.9",
    "localhost:5000",
    "localhost.:5000",
    "LOCALHOST:5000",
    "foo.localhost",
    "[::1]:5000",
    "[::ffff:127.0.0.1]:5000",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:7f00:1::]:5000",  # 6to4 of 127.0.0.1
    "[::127.0.0.1]",  # IPv4-compatible
    "[fe80::1%25eth0]",
    "[fc00::1]",
    "[fd12:3456::1]:443",
    "[::]:5000",
    "[ff02::1]",
    "2130706433:5000",  # decimal 127.0.0.1
    "0x7f.1:5000",
    "0x7f000001",
    "0177.0.0.1:5000",
    "127.1:5000",
    "127.0.0.1.:5000",
    "10.1.2.3",
    "172.16.0.1:5000",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # CGNAT
    "0.0.0.0:5000",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # TEST-NET
]


async def test_registry_addresses_are_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    asked: list[str] = []
    answers = {"registry.internal": "10.9.8.7", "public.example": "8.8.8.8", "v6.internal": "fd00::5"}

    async def fake_getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addr = answers[host]
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (addr, port))]

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)

    for registry in REFUSED:
        with pytest.raises(RuntimeFailure) as err:
            await check_registry_address(registry, f"{registry}/evil/img:1")
        assert err.value.reason == "image"
        assert f"{ALLOWED_REGISTRIES_SETTING}={canonical_registry(registry)}" in err.value.message
        assert "refused" in err.value.message, err.value.message
    assert asked == [], "IP literals and localhost must never reach the resolver"

    # names: resolved, refused when any address is not public
    for name in ("registry.internal", "registry.internal.", "v6.internal:5000", "nowhere.invalid"):
        with pytest.raises(RuntimeFailure) as err:
            await check_registry_address(name, f"{name}/x:1")
        assert name.split(":")[0].rstrip(".") in err.value.message
    await check_registry_address("public.example", "public.example/x:1")
    await check_registry_address("8.8.8.8:5000", "8.8.8.8:5000/x:1")

    # allowed: exact host[:port] entries (any spelling of the entry), nothing else
    allowed = {canonical_registry(r) for r in ("127.0.0.1:5000", "Registry.Internal", "[::1]:5000")}
    asked.clear()
    for ok in ("127.0.0.1:5000", "registry.internal", "registry.internal.", "[::1]:5000"):
        await check_registry_address(ok, f"{ok}/x:1", allowed)
    assert asked == []
    for still in ("127.0.0.1:5001", "0x7f.1:5000", "localhost:5000", "registry.internal:5000", "[::1]"):
        with pytest.raises(RuntimeFailure):
            await check_registry_address(still, f"{still}/x:1", allowed)

    # Docker's own rule for what names a registry: an upper-case first component does
    assert parse_image_ref("LOCALHOST/evil/img:1")[0] == "LOCALHOST"
    assert parse_image_ref("2130706433/evil/img:1")[0] == "docker.io"  # a Docker Hub user, not a host

    settings = ExecutorSettings.from_env(
        {
            "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
            "EXECUTOR_FRONTEND_PASSWORD": "x" * 24,
            "EXECUTOR_QUEUE_NAME": "q",
            ALLOWED_REGISTRIES_SETTING: "127.0.0.1:5000, registry.internal",
            "EXECUTOR_JOB_DISK_SPACE": "50M",
        }
    )
    assert settings.docker_allowed_registries == ["127.0.0.1:5000", "registry.internal"]
    assert settings.job_disk_space == 50 * MiB
    with pytest.raises(ConfigError):
        DockerRuntime(allowed_registries=["127.0.0.1:99999"])


# --- item 7: the real attack --------------------------------------------------------------------------


class Listener:
    """A TCP listener on loopback that counts connections (accepts and closes them)."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


async def test_image_name_cannot_make_dockerd_connect_to_loopback(
    docker_available: None, make_space: Callable[..., JobSpace], listener: Listener
) -> None:
    port = listener.port
    rt = DockerRuntime(pull_timeout=30)
    try:
        for registry in (f"127.0.0.1:{port}", f"localhost:{port}", f"2130706433:{port}", f"0x7f.1:{port}"):
            image = f"{registry}/evil/img:1"
            with pytest.raises(RuntimeFailure) as err:
                await run(rt, make_space(), "true", image)
            assert err.value.reason == "image"
            assert f"its registry {registry}" in err.value.message
            assert f"{ALLOWED_REGISTRIES_SETTING}={registry}" in err.value.message
        await asyncio.sleep(0.5)
        assert listener.connections == 0, "dockerd connected to the job's registry on loopback"
    finally:
        await rt.aclose()

    # allowed by the operator: dockerd reaches it (and then fails to pull from a socket that hangs up)
    allowed = DockerRuntime(pull_timeout=30, allowed_registries=[f"127.0.0.1:{port}"])
    try:
        with pytest.raises(RuntimeFailure) as err:
            await run(allowed, make_space(), "true", f"127.0.0.1:{port}/evil/img:1")
        # a registry that hangs up is an unreachable one: not the job's fault (retried, issue 15)
        assert err.value.reason == "docker" and "cannot be reached" in err.value.message, err.value
        assert listener.connections > 0
    finally:
        await allowed.aclose()


async def test_ipv6_loopback_registry_is_refused(
    docker_available: None, make_space: Callable[..., JobSpace]
) -> None:
    try:
        lst = Listener(socket.AF_INET6, "::1")
    except OSError:
        require(False, "no IPv6 loopback")
        return
    rt = DockerRuntime(pull_timeout=30)
    try:
        with pytest.raises(RuntimeFailure) as err:
            await run(rt, make_space(), "true", f"[::1]:{lst.port}/evil/img:1")
        # refused by corral, or already by the daemon (Docker < 26 has no IPv6 literal references)
        assert err.value.reason == "image"
        message = err.value.message
        assert f"{ALLOWED_REGISTRIES_SETTING}=[::1]:{lst.port}" in message or "invalid reference" in message
        await asyncio.sleep(0.3)
        assert lst.connections == 0
    finally:
        lst.close()
        await rt.aclose()


# --- item 9b: an image pulled with one job's credentials ----------------------------------------------


@dataclass
class Registry:
    address: str
    user: str
    password: str
    image: str  # pushed there, untagged locally

    def docker_config(self, space: JobSpace, password: str | None = None) -> Path:
        d = space.root / "docker"
        d.mkdir(mode=0o700)
        auth = base64.b64encode(f"{self.user}:{password or self.password}".encode()).decode()
        (d / "config.json").write_text(json.dumps({"auths": {self.address: {"auth": auth}}}))
        return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(docker_available: None, tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry with htpasswd auth on a free loopback port, holding jobs/busybox:1."""
    require(
        bool(shutil.which("docker-registry") and shutil.which("htpasswd")),
        "docker-registry and htpasswd (apache2-utils) are not installed (run scripts/setup.sh)",
    )
    d = tmp_path / "registry"
    (d / "data").mkdir(parents=True)
    user, password = "ciuser", f"s3cret-{random.randrange(10**9)}"
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, timeout=30, check=True
    )
    (d / "htpasswd").write_text(htpasswd.stdout)
    address = f"127.0.0.1:{free_port()}"
    (d / "config.yml").write_text(
        "version: 0.1\n"
        f"storage: {{ filesystem: {{ rootdirectory: {d / 'data'} }} }}\n"
        f"http: {{ addr: {address} }}\n"
        f"auth: {{ htpasswd: {{ realm: corral-test, path: {d / 'htpasswd'} }} }}\n"
    )
    log = (d / "log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=log)
    image = f"{address}/jobs/busybox:1"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (d / "log").read_text()
            time.sleep(0.1)
        cli = d / "cli"
        cli.mkdir(mode=0o700)
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        (cli / "config.json").write_text(json.dumps({"auths": {address: {"auth": auth}}}))
        subprocess.run(["docker", "tag", IMAGE, image], check=True, timeout=60)
        push = subprocess.run(
            ["docker", "--config", str(cli), "push", image], capture_output=True, text=True, timeout=120
        )
        assert push.returncode == 0, push.stderr
        untag(image)  # job A has to pull it
        yield Registry(address, user, password, image)
    finally:
        untag(image)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


async def test_image_pulled_with_job_credentials_is_not_usable_without_them(
    make_space: Callable[..., JobSpace], registry: Registry, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    rt = DockerRuntime(allowed_registries=[registry.address], state_dir=state, pull_timeout=60)
    try:
        a = make_space()
        rt.use_docker_config(a, registry.docker_config(a))
        result, out = await run(rt, a, "echo job-a", registry.image)
        assert (result.exit_code, out.data) == (0, b"job-a\n")

        # job B, no credentials: the image is local now, but B must not get it
        with pytest.raises(RuntimeFailure) as err:
            await run(rt, make_space(), "echo job-b", registry.image)
        assert err.value.reason == "image"
        assert f"image {registry.image!r}" in err.value.message and "unauthorized" in err.value.message
        assert registry.password not in err.value.message

        # wrong password: refused too
        bad = make_space()
        rt.use_docker_config(bad, registry.docker_config(bad, password="wrong-password"))
        with pytest.raises(RuntimeFailure) as err:
            await run(rt, bad, "true", registry.image)
        assert "unauthorized" in err.value.message

        # by image id (a name that cannot be pulled): refused
        image_id = str((await rt.api.image_inspect(registry.image) or {})["Id"])
        with pytest.raises(RuntimeFailure) as err:
            await run(rt, make_space(), "true", image_id)
        assert "another job's registry credentials" in err.value.message
    finally:
        await rt.aclose()

    # the record survives a restart: a new runtime on the same state dir still refuses job B
    record = state / PulledImages.FILE
    assert record.stat().st_mode & 0o777 == 0o600
    text = record.read_text()
    assert registry.password not in text and base64.b64encode(registry.password.encode()).decode() not in text
    rt2 = DockerRuntime(allowed_registries=[registry.address], state_dir=state, pull_timeout=60)
    try:
        with pytest.raises(RuntimeFailure) as err:
            await run(rt2, make_space(), "echo job-b", registry.image)
        assert "unauthorized" in err.value.message
        # job C, the right credentials: works (the registry agrees)
        c = make_space()
        rt2.use_docker_config(c, registry.docker_config(c))
        result, out = await run(rt2, c, "echo job-c", registry.image)
        assert (result.exit_code, out.data) == (0, b"job-c\n")
        # an unrelated local image is used as is, and the local name of the same content too
        result, out = await run(rt2, make_space(), "echo local", IMAGE)
        assert (result.exit_code, out.data) == (0, b"local\n")
    finally:
        await rt2.aclose()

    # a corrupt record fails closed: registry images are pulled again
    record.write_text("{not json")
    rt3 = DockerRuntime(allowed_registries=[registry.address], state_dir=state, pull_timeout=60)
    try:
        assert rt3.pulled.strict and rt3.pulled.problem
        with pytest.raises(RuntimeFailure) as err:
            await run(rt3, make_space(), "true", registry.image)
        assert "unauthorized" in err.value.message
    finally:
        await rt3.aclose()


async def test_operator_credentials_are_for_every_job(
    make_space: Callable[..., JobSpace], registry: Registry
) -> None:
    auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    operator = {"auths": {registry.address: {"auth": auth}}}
    rt = DockerRuntime(allowed_registries=[registry.address], executor_auth_config=operator)
    try:
        a = make_space()
        # what the runtime's stage() writes from EXECUTOR_DOCKER_AUTH_CONFIG
        rt.use_docker_config(a, registry.docker_config(a))
        assert (await run(rt, a, "true", registry.image))[0].exit_code == 0
        result, out = await run(rt, make_space(), "echo b", registry.image)
        assert (result.exit_code, out.data) == (0, b"b\n")
    finally:
        await rt.aclose()


# --- item 8: the container's writable layer ----------------------------------------------------------

SCRATCH_IMAGE = "corral/test-scratch:1"


@pytest.fixture(scope="module")
def scratch_image() -> Iterator[str]:
    """corral/busybox:1 plus a world-writable /scratch (in the writable layer) and a VOLUME /cache."""
    require(shutil.which("docker") is not None, "docker CLI missing")
    ctx = Path(f"/tmp/corral-scratch-image-{os.getpid()}")
    ctx.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("scratch")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)
    (ctx / "scratch.tar").write_bytes(buf.getvalue())
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nADD scratch.tar /\nVOLUME /cache\nVOLUME /data/big\n")
    build = subprocess.run(
        ["docker", "build", "--network", "none", "-q", "-t", SCRATCH_IMAGE, str(ctx)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(ctx, ignore_errors=True)
    require(build.returncode == 0, f"cannot build the test image: {build.stderr}")
    yield SCRATCH_IMAGE
    untag(SCRATCH_IMAGE)


async def test_writable_layer_is_bounded(
    docker_available: None, make_space: Callable[..., JobSpace], scratch_image: str
) -> None:
    limits = Limits(cpus=1, memory_bytes=256 * MiB, pids=256, disk_bytes=50 * MiB)
    rt = DockerRuntime()
    try:
        # a writer that keeps going: killed within a few seconds, with the reason
        started = time.monotonic()
        result, out = await run(
            rt,
            make_space(limits=limits),
            "dd if=/dev/zero of=/scratch/big bs=1M count=200 2>/dev/null; sleep 60",
            scratch_image,
        )
        took = time.monotonic() - started
        assert result.reason == "disk", (result, out.data)
        assert result.exit_code != 0
        assert result.message.startswith(
            "step.docker.0 was killed: wrote more than 50 MiB to the container's filesystem (limit"
        ), result.message
        assert result.message.encode() in out.data
        assert took < 8, took

        # a fast writer that stops at 2000 MiB: how far past the limit does it get?
        result, _ = await run(
            rt, make_space(limits=limits), "dd if=/dev/zero of=/scratch/big bs=1M count=2000", scratch_image
        )
        assert result.reason == "disk", result
        print("fast writer:", result.message)

        # a writer that is done before the first poll: still fails, after the fact
        result, _ = await run(
            rt, make_space(limits=limits), "dd if=/dev/zero of=/scratch/big bs=1M count=80", scratch_image
        )
        assert result.reason == "disk" and result.exit_code != 0, result
        assert "wrote 80 MiB to the container's filesystem, more than its limit of 50 MiB" in result.message

        # a file unlinked but held open uses the disk without being in the layer: counted too
        result, out = await run(
            rt,
            make_space(limits=limits),
            "exec 3>/scratch/big; rm /scratch/big; dd if=/dev/zero bs=1M count=200 >&3 2>/dev/null; sleep 60",
            scratch_image,
        )
        assert result.reason == "disk" and "was killed" in result.message, (result, out.data)

        # many small files: dockerd's SizeRw counts their apparent size (bytes), the disk holds blocks
        result, out = await run(
            rt,
            make_space(limits=limits),
            "cd /scratch && i=0; while [ $i -lt 30000 ]; do echo > f$i; i=$((i+1)); done; sleep 60",
            scratch_image,
        )
        assert result.reason == "disk" and "was killed" in result.message, (result, out.data[-500:])

        # a tree deeper than the watchdog follows counts as over the limit (nothing hides below it)
        result, out = await run(
            rt,
            make_space(limits=limits),
            "cd /scratch && i=0; while [ $i -lt 300 ]; do mkdir d && cd d; i=$((i+1)); done; sleep 60",
            scratch_image,
        )
        assert result.reason == "disk" and "was killed" in result.message, (result, out.data[-500:])

        # under the limit: fine
        result, _ = await run(
            rt, make_space(limits=limits), "dd if=/dev/zero of=/scratch/f bs=1M count=20", scratch_image
        )
        assert result == StepResult(exit_code=0)

        # /tmp and the image's VOLUME are bounded tmpfs (memory cgroup), not the layer, not a host volume
        result, out = await run(
            rt,
            make_space(limits=limits),
            "grep -E ' /(tmp|cache|data/big) ' /proc/mounts; "
            "dd if=/dev/zero of=/tmp/f bs=1M count=100 2>/dev/null || echo TMP-FULL",
            scratch_image,
        )
        text = out.data.decode()
        assert result.exit_code == 0, text
        # a VOLUME under /data got an anonymous volume on the host's disk (outside quota and watchdog)
        for mount in ("/tmp", "/cache", "/data/big"):
            assert f"tmpfs {mount} tmpfs rw,nosuid,nodev,relatime,size=51200k" in text, text
        assert "TMP-FULL" in text
    finally:
        await rt.aclose()
