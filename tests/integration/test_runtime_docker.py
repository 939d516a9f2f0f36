"""The docker runtime against the real Docker Engine on this machine.

Every container runs with network "none" unless a test says otherwise, and no test makes the daemon
touch anything but loopback: the pull tests use a tiny registry served by the test on 127.0.0.1 (dockerd
treats 127.0.0.0/8 as an insecure registry, so plain HTTP works), and the "missing image" test turns
pulling off so that dockerd does not even ask DNS about Docker Hub.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ConfigError, RuntimeFailure
from corral.executor import stopping
from corral.executor.network import NetworkPolicy
from corral.executor.runtimes.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_OWNER,
    JobSpace,
    Limits,
    Step,
    StepResult,
)
from corral.executor.runtimes.docker import (
    LABEL_STEP,
    DockerRuntime,
    parse_image_ref,
    parse_mount_spec,
    registry_auth_header,
)
from corral.executor.runtimes.docker.api import FrameDecoder, socket_from_env
from corral.executor.runtimes.docker.containers import container_name
from tests.conftest import require

pytestmark = pytest.mark.docker

IMAGE = "corral/busybox:1"
UID = 1000
SH = "/bin/sh"


# --- helpers and fixtures -------------------------------------------------------------------------


@dataclass
class Output:
    """An OutputSink that remembers when each chunk arrived."""

    calls: list[tuple[float, bytes]] = field(default_factory=list)

    def __call__(self, data: bytes) -> None:
        self.calls.append((time.monotonic(), data))

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.calls)

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def step(
    script: str, *, index: int = 0, image: str = IMAGE, dir: str = "", env: dict[str, str] | None = None
) -> Step:
    return Step(
        key=f"step.docker.{index}",
        kind="docker",
        index=index,
        image=image,
        argv=(SH, "-c", script),
        dir=dir,
        env=env or {},
    )


# The owner (EXECUTOR_VM_PREFIX) of everything these tests make: their janitor and cleanup never
# touch another executor's containers on this daemon (other tests, other engineers' runs).
OWNER = f"t{random.randrange(16**8):08x}-rt"


@pytest.fixture
async def rt(docker_available: None) -> AsyncIterator[DockerRuntime]:
    runtime = DockerRuntime(owner=OWNER)
    yield runtime
    await runtime.aclose()


@pytest.fixture
async def make_space(rt: DockerRuntime, tmp_path: Path) -> AsyncIterator[Callable[..., JobSpace]]:
    """Build prepared-ready JobSpaces with unique job ids; their containers are cleaned up afterwards."""
    spaces: list[JobSpace] = []

    def make(**kw: Any) -> JobSpace:
        job_id = random.randrange(10**8, 10**9)
        root = tmp_path / f"job-{job_id}"
        workspace = root / "workspace"
        workspace.mkdir(parents=True)
        root.chmod(0o700)
        kw.setdefault("kill_grace", 1.0)
        kw.setdefault("limits", Limits(cpus=1, memory_bytes=256 * 1024**2, pids=256))
        kw.setdefault("owner", OWNER)
        space = JobSpace(job_id=job_id, queue="dockertest", root=root, workspace=workspace, **kw)
        spaces.append(space)
        return space

    yield make
    for space in spaces:
        await rt.cleanup(space)


async def run(rt: DockerRuntime, space: JobSpace, script: str, **kw: Any) -> tuple[StepResult, Output]:
    out = Output()
    result = await rt.run_step(space, step(script, **kw), out)
    return result, out


async def job_containers(rt: DockerRuntime, space: JobSpace) -> list[dict[str, Any]]:
    return await rt.api.containers_list([f"{LABEL_JOB}={space.labels[LABEL_JOB]}"])


# --- pure pieces ----------------------------------------------------------------------------------


def test_frame_decoder_handles_split_and_joined_frames() -> None:
    def frame(stream: int, payload: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload

    wire = frame(1, b"hello ") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"x" * 70000)
    for cut in (1, 3, 8, 9, 17, 5000):
        dec = FrameDecoder()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(wire), cut):
            got += dec.feed(wire[i : i + cut])
        assert got == [(1, b"hello "), (2, b"err\n"), (1, b""), (1, b"x" * 70000)]
        assert dec.pending == 0


def test_image_refs_mounts_and_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_image_ref("busybox") == ("docker.io", "busybox", "latest")
    assert parse_image_ref("corral/busybox:1") == ("docker.io", "corral/busybox", "1")
    assert parse_image_ref("127.0.0.1:5000/a/b") == ("127.0.0.1:5000", "127.0.0.1:5000/a/b", "latest")
    assert parse_image_ref("localhost/x:2") == ("localhost", "localhost/x", "2")
    digest = "sha256:" + "0" * 64
    assert parse_image_ref(f"reg.example/x@{digest}") == ("reg.example", "reg.example/x", digest)

    assert parse_mount_spec("type=bind,source=/a,target=/b,readonly") == {
        "Type": "bind",
        "Source": "/a",
        "Target": "/b",
        "ReadOnly": True,
    }
    for bad in ("type=bind,source=rel,target=/b", "type=bind,src=/a", "type=bind,src=/a,dst=/b,shared=1"):
        with pytest.raises(ConfigError):
            parse_mount_spec(bad)

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
                    "127.0.0.1:5000": {"auth": base64.b64encode(b"ciuser:s3:cret").decode()},
                }
            }
        )
    )
    hdr = registry_auth_header(tmp_path, "127.0.0.1:5000")
    assert hdr is not None
    assert json.loads(base64.urlsafe_b64decode(hdr)) == {
        "username": "ciuser",
        "password": "s3:cret",
        "serveraddress": "127.0.0.1:5000",
    }
    hub = registry_auth_header(tmp_path, "docker.io")
    assert hub is not None and json.loads(base64.urlsafe_b64decode(hub))["username"] == "hub"
    assert registry_auth_header(tmp_path, "other:1") is None
    assert registry_auth_header(None, "127.0.0.1:5000") is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RuntimeFailure) as err:
        registry_auth_header(tmp_path, "127.0.0.1:5000")
    assert err.value.reason == "image"

    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    assert socket_from_env() == "/run/other.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    with pytest.raises(ValueError):
        socket_from_env()


# --- running steps ---------------------------------------------------------------------------------


async def test_output_is_streamed_live(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space()
    await rt.prepare(space)
    result, out = await run(rt, space, "echo a; sleep 1; echo b")
    assert result == StepResult(exit_code=0)
    assert out.data == b"a\nb\n"
    assert len(out.calls) >= 2
    assert out.calls[-1][0] - out.calls[0][0] > 0.6, "the second line came with the first: not streamed"


async def test_output_is_complete_and_exit_code_propagates(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    await rt.prepare(space)
    # stderr merged in, a last line without newline, and an exit code. (stdout and stderr are two pipes:
    # their relative order is the order the daemon read them in, as with `docker run`.)
    result, out = await run(rt, space, "echo out; echo err >&2; sleep 0.2; printf 'no newline'; exit 3")
    assert result.exit_code == 3 and not result.oom_killed
    assert out.data in (b"out\nerr\nno newline", b"err\nout\nno newline")
    # a partial line is delivered before the process ends (no line buffering in between)
    result, out = await run(rt, space, "printf abc; sleep 0.8; printf def", index=1)
    assert out.data == b"abcdef" and out.calls[0][1] == b"abc"
    # very short containers lose nothing, and silent ones give nothing
    for i in range(4):
        result, out = await run(rt, space, f"echo hello{i}", index=2 + i)
        assert (result.exit_code, out.data) == (0, f"hello{i}\n".encode())
    result, out = await run(rt, space, "true", index=9)
    assert (result.exit_code, out.data) == (0, b"")
    # lots of output arrives intact
    result, out = await run(rt, space, "seq 1 100000", index=10)
    assert out.data == b"".join(b"%d\n" % i for i in range(1, 100001))
    assert await job_containers(rt, space) == [], "step containers must be removed after each step"


async def test_workspace_user_and_capabilities(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    (space.workspace / "sub").mkdir()
    (space.workspace / "sub" / "existing.txt").write_text("from the executor\n")
    (space.workspace / "link").symlink_to("/etc/hostname")  # must be chowned itself, not its target
    etc_owner = os.stat("/etc/hostname").st_uid
    await rt.prepare(space)
    assert os.stat("/etc/hostname").st_uid == etc_owner
    assert (space.workspace / "sub" / "existing.txt").stat().st_uid == UID

    script = (
        "id -u; id -g; pwd; echo $GREETING; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        "echo made > /data/made.txt && echo more >> existing.txt && echo ok"
    )
    result, out = await run(rt, space, script, dir="sub", env={"GREETING": "hi there"})
    assert result.exit_code == 0, out.text
    lines = out.text.splitlines()
    assert lines[:4] == [str(UID), str(UID), "/data/sub", "hi there"]
    assert re.search(r"CapEff:\s+0000000000000000", out.text), out.text
    # uid 1000 has no effective capabilities anyway; CapDrop ALL also empties the bounding set
    assert re.search(r"CapBnd:\s+0000000000000000", out.text), out.text
    assert re.search(r"NoNewPrivs:\s+1", out.text), out.text
    assert lines[-1] == "ok"
    made = space.workspace / "made.txt"
    assert made.read_text() == "made\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (UID, UID)
    assert (space.workspace / "sub" / "existing.txt").read_text() == "from the executor\nmore\n"


async def test_one_runtime_runs_jobs_concurrently(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    spaces = [make_space() for _ in range(3)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(run(rt, sp, f"echo job{i}; sleep 1; echo end{i}") for i, sp in enumerate(spaces))
    )
    assert time.monotonic() - started < 2.9, "the steps ran one after another"
    for i, (result, out) in enumerate(results):
        assert (result.exit_code, out.data) == (0, f"job{i}\nend{i}\n".encode())


async def test_command_that_cannot_start(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    """docker-init (PID 1) cannot exec the step's program: the step fails with 127, as a shell's
    "command not found" (the job's fault, not the daemon's: nothing to retry), and says why."""
    space = make_space()
    bad = Step(key="step.docker.0", kind="docker", index=0, image=IMAGE, argv=("/bin/no-such-tool",))
    out = Output()
    result = await rt.run_step(space, bad, out)
    assert result.exit_code == 127
    assert "/bin/no-such-tool" in out.text and "No such file or directory" in out.text
    assert await job_containers(rt, space) == []


async def test_a_failing_output_sink_leaves_no_container(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()

    def broken_sink(data: bytes) -> None:
        raise OSError("log storage is full")

    with pytest.raises(OSError, match="log storage is full"):
        await asyncio.wait_for(rt.run_step(space, step("yes"), broken_sink), timeout=20)
    assert await job_containers(rt, space) == []


async def test_step_dir_outside_workspace_is_refused(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    with pytest.raises(RuntimeFailure):
        await run(rt, space, "true", dir="../etc")


async def test_network_none_has_only_loopback(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space()
    result, out = await run(rt, space, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert result.exit_code == 0
    assert out.text.split() == ["lo"]


async def test_network_allowed_gets_an_interface(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    # no traffic is sent: only the interface list is read
    space = make_space(network=NetworkPolicy.open())
    result, out = await run(rt, space, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert result.exit_code == 0
    assert "lo" in out.text.split() and "eth0" in out.text.split()


async def test_memory_limit_oom_kills(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space(limits=Limits(cpus=1, memory_bytes=64 * 1024**2, pids=64))
    script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; head -c 200m /dev/zero | tail"
    result, out = await run(rt, space, script)
    assert str(64 * 1024**2) in out.text.splitlines()
    assert result.exit_code == 137
    assert result.oom_killed is True


async def test_cpu_quota(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space(limits=Limits(cpus=0.5, memory_bytes=128 * 1024**2, pids=64))
    script = (
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us; "
        "for i in 1 2; do (while :; do :; done) & done; sleep 2; "
        "cat /sys/fs/cgroup/cpuacct/cpuacct.usage"
    )
    result, out = await run(rt, space, script)
    assert result.exit_code == 0, out.text
    quota, period, usage_ns = (int(x) for x in out.text.split())
    assert (quota, period) == (50_000, 100_000)
    # two spinners for 2 s would use up to 4 s of CPU unlimited; half a CPU allows about 1 s
    assert 0.2e9 < usage_ns < 1.5e9, f"{usage_ns / 1e9:.2f} s of CPU in 2 s with cpus=0.5"


async def test_pids_limit_stops_a_fork_bomb(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space(limits=Limits(cpus=1, memory_bytes=256 * 1024**2, pids=32))
    # a fork bomb of bounded depth (2^12 processes wanted): it ends once the pids cgroup made it fail
    bomb = "f() { [ $1 -lt 12 ] && { f $(($1+1)) & f $(($1+1)) & wait; }; }; f 0"
    _, out = await asyncio.wait_for(run(rt, space, f"cat /sys/fs/cgroup/pids/pids.max; {bomb}"), timeout=30)
    assert "32" in out.text.splitlines()  # (stderr may overtake stdout: separate pipes)
    assert "can't fork" in out.text


async def test_additional_mounts(
    docker_available: None, make_space: Callable[..., JobSpace], tmp_path: Path
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "tool.txt").write_text("shared\n")
    runtime = DockerRuntime(additional_mounts=[f"type=bind,source={extra},target=/opt/extra,readonly"])
    try:
        space = make_space()
        result, out = await run(
            runtime, space, "cat /opt/extra/tool.txt; touch /opt/extra/x 2>/dev/null || echo ro"
        )
        assert (result.exit_code, out.text) == (0, "shared\nro\n")
    finally:
        await runtime.cleanup(space)
        await runtime.aclose()


async def test_stale_container_of_the_same_name_is_replaced(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space()
    await rt.api.container_create(
        container_name(space, step("true")), {"Image": IMAGE, "Cmd": ["true"], "Labels": space.labels}
    )
    result, out = await run(rt, space, "echo fresh")
    assert (result.exit_code, out.data) == (0, b"fresh\n")


async def test_a_container_of_another_executor_is_never_touched(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """Job ids are only unique per server: another executor on this daemon (another server's, a
    local batch run) may run job `dockertest-N` too. Ours neither collides with its container's
    name nor removes it in cleanup() or janitor()."""
    space = make_space()
    other = JobSpace(**{**space.__dict__, "owner": f"{OWNER}-other"})
    theirs = await rt.api.container_create(
        container_name(other, step("true")),
        {
            "Image": IMAGE,
            "Cmd": ["sleep", "300"],
            "Labels": other.labels,
            "HostConfig": {"NetworkMode": "none"},
        },
    )
    try:
        await rt.api.container_start(theirs)
        result, out = await run(rt, space, "echo ours")
        assert (result.exit_code, out.data) == (0, b"ours\n")
        await rt.cleanup(space)
        assert await rt.janitor(set()) == []
        state = await rt.api.container_inspect(theirs)
        assert state is not None and state["State"]["Running"]
    finally:
        await rt.api.container_remove(theirs)


# --- images ----------------------------------------------------------------------------------------


async def test_missing_image_fails_fast(docker_available: None, make_space: Callable[..., JobSpace]) -> None:
    runtime = DockerRuntime(pull=False)  # a pull would make dockerd ask DNS about Docker Hub
    try:
        space = make_space()
        started = time.monotonic()
        with pytest.raises(RuntimeFailure) as err:
            await run(runtime, space, "true", image="corral/does-not-exist:1")
        assert time.monotonic() - started < 5
        assert err.value.reason == "image"
        assert "image 'corral/does-not-exist:1' not found" in err.value.message
        assert await job_containers(runtime, space) == []
    finally:
        await runtime.aclose()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, never listening: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_registry_is_not_the_jobs_fault(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """dockerd cannot connect (a closed loopback port, allowed by the operator so that the pull is
    tried): reason "docker", so the handler marks the job errored and the server retries it."""
    registry = f"127.0.0.1:{closed_port()}"
    rt.allowed_registries = rt.allowed_registries | {registry}
    with pytest.raises(RuntimeFailure) as err:
        await run(rt, make_space(), "true", image=f"{registry}/corral/busybox:1")
    assert err.value.reason == "docker", err.value
    assert f"its registry {registry} cannot be reached" in err.value.message
    assert "connection refused" in err.value.message and "retried" in err.value.message


@pytest.fixture
def debian_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, anonymous, empty; its address."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "docker-registry is not installed (apt-get install docker-registry)")
    assert binary is not None
    port = closed_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry-data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        "log: {level: error}\n"
    )
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            started = proc.poll() is None and time.monotonic() < deadline
            assert started, (tmp_path / "registry.log").read_text()
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_image_a_real_registry_does_not_have_fails_the_job(
    rt: DockerRuntime, make_space: Callable[..., JobSpace], debian_registry: str
) -> None:
    rt.allowed_registries = rt.allowed_registries | {debian_registry}
    image = f"{debian_registry}/corral/nothing-here:1"
    with pytest.raises(RuntimeFailure) as err:
        await run(rt, make_space(), "true", image=image)
    assert err.value.reason == "image", err.value
    assert err.value.message.startswith(f"image {image!r} not found: "), err.value.message
    assert "manifest unknown" in err.value.message


class FakeRegistry:
    """A registry (API v2) on 127.0.0.1 with Basic auth that serves one image: enough for `docker pull`."""

    def __init__(self, repo: str, tag: str, user: str, password: str, saved_image: bytes) -> None:
        self.repo, self.tag = repo, tag
        self.user, self.password = user, password
        self.expected_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen_auth: list[str | None] = []
        self.blobs: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(saved_image)) as tar:

            def member(name: str) -> bytes:
                f = tar.extractfile(name)
                assert f is not None
                return f.read()

            manifest = json.loads(member("manifest.json"))[0]
            config = member(manifest["Config"])
            layers = [gzip.compress(member(name), compresslevel=1) for name in manifest["Layers"]]

        def add(blob: bytes, media_type: str) -> dict[str, Any]:
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            self.blobs[digest] = blob
            return {"mediaType": media_type, "size": len(blob), "digest": digest}

        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": add(config, "application/vnd.docker.container.image.v1+json"),
                "layers": [
                    add(layer, "application/vnd.docker.image.rootfs.diff.tar.gzip") for layer in layers
                ],
            }
        ).encode()
        self.manifest_digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.serve(body=True)

            def do_HEAD(self) -> None:
                self.serve(body=False)

            def reply(self, status: int, data: bytes, ctype: str, extra: dict[str, str], body: bool) -> None:
                self.send_response(status)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, status: int, code: str, body: bool, extra: dict[str, str] | None = None) -> None:
                data = json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " ")}]})
                self.reply(status, data.encode(), "application/json", extra or {}, body)

            def serve(self, body: bool) -> None:
                auth = self.headers.get("Authorization")
                registry.seen_auth.append(auth)
                if auth != registry.expected_auth:
                    challenge = {"WWW-Authenticate": 'Basic realm="corral-test"'}
                    return self.error(401, "UNAUTHORIZED", body, challenge)
                path = self.path.split("?", 1)[0]
                if path == "/v2/":
                    return self.reply(200, b"{}", "application/json", {}, body)
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
                if not m or m.group(1) != registry.repo:
                    return self.error(404, "NAME_UNKNOWN", body)
                kind, ref = m.group(2), m.group(3)
                if kind == "manifests":
                    if ref not in (registry.tag, registry.manifest_digest):
                        return self.error(404, "MANIFEST_UNKNOWN", body)
                    mt = "application/vnd.docker.distribution.manifest.v2+json"
                    return self.reply(
                        200, registry.manifest, mt, {"Docker-Content-Digest": registry.manifest_digest}, body
                    )
                blob = registry.blobs.get(ref)
                if blob is None:
                    return self.error(404, "BLOB_UNKNOWN", body)
                return self.reply(200, blob, "application/octet-stream", {"Docker-Content-Digest": ref}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def registry(rt: DockerRuntime) -> AsyncIterator[FakeRegistry]:
    saved = (await rt.api.request("GET", f"/images/{IMAGE}/get")).content
    password = f"s3cret-{random.randrange(10**9)}-pass"
    with FakeRegistry("corral/private", "1", "ciuser", password, saved) as reg:
        # a loopback registry: refused unless allowed (EXECUTOR_DOCKER_ALLOWED_REGISTRIES)
        rt.allowed_registries = rt.allowed_registries | {reg.address}
        yield reg
        try:
            await rt.api.image_remove(f"{reg.address}/corral/private:1")  # only untags: same image as IMAGE
        except Exception:
            pass


def write_docker_config(space: JobSpace, registry: str, user: str, password: str) -> Path:
    config_dir = space.root / "docker-config"
    config_dir.mkdir(mode=0o700)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return config_dir


async def test_pull_uses_the_jobs_registry_credentials(
    rt: DockerRuntime, make_space: Callable[..., JobSpace], registry: FakeRegistry
) -> None:
    image = f"{registry.address}/corral/private:1"
    # wrong password: the registry refuses, the step fails with reason "image"
    space = make_space()
    rt.use_docker_config(space, write_docker_config(space, registry.address, "ciuser", "wrong"))
    with pytest.raises(RuntimeFailure) as err:
        await run(rt, space, "true", image=image)
    assert err.value.reason == "image" and "not found" in err.value.message
    assert "wrong" not in err.value.message

    # an unknown tag: fails fast with reason "image"
    space = make_space()
    rt.use_docker_config(
        space, write_docker_config(space, registry.address, registry.user, registry.password)
    )
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as err:
        await run(rt, space, "true", image=f"{registry.address}/corral/private:nope")
    assert err.value.reason == "image"
    assert time.monotonic() - started < 10

    # the right credentials: pulled, then run
    registry.seen_auth.clear()
    result, out = await run(rt, space, "echo pulled", image=image)
    assert (result.exit_code, out.data) == (0, b"pulled\n")
    assert registry.expected_auth in registry.seen_auth


async def test_container_never_sees_the_docker_config(
    rt: DockerRuntime, make_space: Callable[..., JobSpace], registry: FakeRegistry
) -> None:
    space = make_space()
    password = registry.password
    rt.use_docker_config(space, write_docker_config(space, registry.address, registry.user, password))
    auth = base64.b64encode(f"{registry.user}:{password}".encode()).decode()
    cfg = rt.docker_config(space)
    script = (
        f"test -e {cfg} && echo CONFIG-DIR-VISIBLE; "
        f"grep -q {cfg} /proc/self/mountinfo && echo CONFIG-MOUNTED; "
        f"env | grep -e {password} -e {auth} -e DOCKER_CONFIG && echo IN-ENV; "
        # every regular file outside /proc, /sys, /dev; /tmp/control proves the scan finds what is there
        f"echo {password} > /tmp/control; "
        r"find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print 2>/dev/null | "
        f"xargs grep -l -e {password} -e {auth} 2>/dev/null; "
        "echo checked"
    )
    # an image that must be pulled with the credentials, so they were in use for this very step
    result, out = await run(rt, space, script, image=f"{registry.address}/corral/private:1")
    assert result.exit_code == 0
    assert out.text == "/tmp/control\nchecked\n", out.text
    assert registry.expected_auth != registry.seen_auth[0]  # sanity: the first try is anonymous
    assert f"Basic {auth}" in registry.seen_auth


# --- cancellation, cleanup, janitor, check --------------------------------------------------------


async def cancel_when_started(rt: DockerRuntime, space: JobSpace, script: str) -> float:
    """Run `script` (which prints "started"), cancel it once started; seconds until run_step ended."""
    out = Output()
    task = asyncio.create_task(rt.run_step(space, step(script), out))
    deadline = time.monotonic() + 15
    while b"started" not in out.data:
        assert time.monotonic() < deadline and not task.done(), f"the step did not start: {out.text}"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - started


async def test_cancel_stops_the_step(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space(kill_grace=1.0)
    await rt.prepare(space)
    assert await cancel_when_started(rt, space, "echo started; sleep 300") < 3
    assert await job_containers(rt, space) == []
    # a step that handles SIGTERM gets it first (docker stop), and can react within the grace
    script = "trap 'echo term > /data/got-term; exit 0' TERM; echo started; while :; do sleep 0.1; done"
    assert await cancel_when_started(rt, space, script) < 3
    assert (space.workspace / "got-term").read_text() == "term\n"
    assert await job_containers(rt, space) == []


async def die_events(rt: DockerRuntime, name: str, into: list[dict[str, Any]]) -> None:
    """Collect the daemon's "die" events of container `name` (each carries the exit code)."""
    filters = json.dumps({"type": ["container"], "event": ["die"], "container": [name]})
    async with rt.api.stream("GET", "/events", params={"filters": filters}) as resp:
        async for line in resp.aiter_lines():
            if line.strip():
                into.append(json.loads(line))


async def test_pid_1_is_docker_init_so_a_plain_shell_ends_on_sigterm(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    """A shell as PID 1 ignores SIGTERM (only SIGKILL, after the whole grace, ended a cancelled step);
    under docker-init the step's shell gets the SIGTERM and dies of it: the container exits 143
    (128 + SIGTERM), not 137 (SIGKILL), although the grace is long."""
    space = make_space(kill_grace=60.0)
    await rt.prepare(space)
    result, out = await run(rt, space, "tr '\\0' ' ' < /proc/1/cmdline")
    assert result.exit_code == 0 and out.text.startswith("/sbin/docker-init -- /bin/sh -c"), out.text
    died: list[dict[str, Any]] = []
    watch = asyncio.create_task(die_events(rt, container_name(space, step("", index=1)), died))
    await asyncio.sleep(0.2)  # the event stream is open
    try:
        out = Output()
        task = asyncio.create_task(rt.run_step(space, step("echo started; sleep 300", index=1), out))
        await wait_for_output(out, "started", task)
        task.cancel("canceling: the test asked")
        with pytest.raises(asyncio.CancelledError):
            await task
        while not died:
            await asyncio.sleep(0.05)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    assert died[0]["Actor"]["Attributes"]["exitCode"] == "143", died
    assert "[corral] canceling: the test asked: sending SIGTERM, then SIGKILL after 1m0s\n" in out.text


async def wait_for_output(out: Output, text: str, task: asyncio.Task[Any]) -> None:
    async with asyncio.timeout(30):
        while text not in out.text:
            assert not task.done(), out.text
            await asyncio.sleep(0.05)


GRACE_SCRIPT = (
    # printf spells its output differently from its command (which a `set -x` trace would print)
    "trap 'sleep 0.5; printf \"%s-%s\\n\" grace kept; exit 0' TERM; echo started; "
    "while :; do sleep 0.1; done"
)


async def test_cancel_says_why_and_keeps_the_output_of_the_grace(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    space = make_space(kill_grace=10.0)
    await rt.prepare(space)
    out = Output()
    task = asyncio.create_task(rt.run_step(space, step(GRACE_SCRIPT), out))
    await wait_for_output(out, "started", task)
    task.cancel("canceling: the server asked")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.text == (
        "started\n[corral] canceling: the server asked: sending SIGTERM, then SIGKILL after 10s\n"
        "grace-kept\n"
    )
    assert await job_containers(rt, space) == []


async def test_a_timeout_says_so_in_the_log(rt: DockerRuntime, make_space: Callable[..., JobSpace]) -> None:
    space = make_space(kill_grace=10.0)
    await rt.prepare(space)
    out = Output()
    with pytest.raises(TimeoutError):
        async with stopping.deadline(2):
            await rt.run_step(space, step("printf 'no newline yet'; sleep 300"), out)
    assert out.text == (
        "no newline yet\n[corral] timeout after 2s: sending SIGTERM, then SIGKILL after 10s\n"
    )
    assert await job_containers(rt, space) == []


async def test_cleanup_and_janitor_remove_leftovers(
    rt: DockerRuntime, make_space: Callable[..., JobSpace]
) -> None:
    live_space, dead_space = make_space(), make_space()

    async def leftover(space: JobSpace, n: int) -> None:
        labels = {**space.labels, LABEL_STEP: f"step.docker.{n}"}
        config = {
            "Image": IMAGE,
            "Cmd": ["sleep", "300"],
            "Labels": labels,
            "HostConfig": {"NetworkMode": "none"},
        }
        cid = await rt.api.container_create(f"{space.name}-{n}", config)
        await rt.api.container_start(cid)

    await leftover(live_space, 0)
    await leftover(live_space, 1)
    await leftover(dead_space, 0)

    # cleanup: all of one job's containers, idempotently
    await rt.cleanup(live_space)
    assert await job_containers(rt, live_space) == []
    await rt.cleanup(live_space)

    await leftover(live_space, 2)
    # The janitor removes every container of its owner whose job is not live (OWNER: only this
    # module's); keep those of the other tests of this module live.
    others = await rt.api.containers_list([f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={OWNER}"])
    live = {c["Labels"][LABEL_JOB] for c in others} - {dead_space.labels[LABEL_JOB]}
    removed = await rt.janitor(live)
    assert f"{dead_space.name}-0" in removed
    assert f"{live_space.name}-2" not in removed
    assert await job_containers(rt, dead_space) == []
    assert len(await job_containers(rt, live_space)) == 1
    assert await rt.janitor(live) == []


async def test_check(rt: DockerRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await rt.check() == []

    missing = DockerRuntime(socket=str(tmp_path / "nope.sock"))
    try:
        problems = await missing.check()
        assert len(problems) == 1 and "does not exist" in problems[0]
        space = JobSpace(job_id=1, queue="dockertest", root=tmp_path, workspace=tmp_path)
        with pytest.raises(RuntimeFailure) as err:
            await missing.run_step(space, step("true"), Output())
        assert err.value.reason == "docker" and "cannot reach the Docker Engine" in err.value.message
    finally:
        await missing.aclose()

    not_a_socket = tmp_path / "file.sock"
    not_a_socket.write_text("")
    assert "not a unix socket" in (await DockerRuntime(socket=str(not_a_socket)).check())[0]

    gvisor = DockerRuntime(runtime="no-such-runtime")
    try:
        problems = await gvisor.check()
        assert len(problems) == 1 and "'no-such-runtime' is not registered" in problems[0]
    finally:
        await gvisor.aclose()

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    problems = await DockerRuntime().check()
    assert len(problems) == 1 and "DOCKER_HOST" in problems[0]
