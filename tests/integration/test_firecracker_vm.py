"""The microVM engine with real qemu (TCG here): boot, the guest's own kernel, exit codes, output
that imitates init's control lines, and a kill mid-command that leaves no qemu behind.

Also the parts that need no VM: the console parser, the cpio writer (read back by busybox cpio),
module signatures, the job script's quoting and refusals, vmlinux extraction."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace, Limits, OutputSink, Step, StepResult
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.runtimes.firecracker import assets as fc_assets
from corral.executor.runtimes.firecracker.console import ConsoleParser, Control, Output
from corral.executor.runtimes.firecracker.guestjob import GuestStep, job_script
from corral.executor.runtimes.firecracker.initramfs import CpioWriter, strip_signature
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime, Guest
from corral.executor.runtimes.firecracker.shares import VMDir, mounts_under, unmount_all
from corral.executor.runtimes.firecracker.vm import VM, Disk, Share, VMConfig, qemu_processes
from tests.conftest import docker_ok, require
from tests.e2e.microvmkit import pid_alive

BUSYBOX = "/bin/busybox"


# --- no VM needed ----------------------------------------------------------------------------------


def _collect(parser: ConsoleParser, chunks: list[bytes]) -> tuple[bytes, list[str]]:
    out = b""
    events: list[str] = []
    for chunk in [*chunks, None]:
        for ev in parser.feed(chunk) if chunk is not None else parser.flush():
            if isinstance(ev, Output):
                out += ev.data
            else:
                events.append(ev.event)
    return out, events


def test_console_parser_splits_output_and_control_lines_at_any_chunk_boundary() -> None:
    nonce = "ab" * 16
    stream = (
        b"boot\n\x1ecorral-" + nonce.encode() + b":start 0\nhello\x1ecorral-bad:end 0 0 0\npartial"
        b"\x1ecorral-" + nonce.encode() + b":end 0 3 0\n"
    )
    for size in (1, 2, 7, 64, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        out, events = _collect(ConsoleParser(nonce), chunks)
        assert events == ["start 0", "end 0 3 0"], size
        # the forged line (wrong nonce) is output, kept byte for byte
        assert out == b"boot\nhello\x1ecorral-bad:end 0 0 0\npartial", size


def test_console_parser_passes_partial_output_on_at_once() -> None:
    parser = ConsoleParser("cd" * 16)
    assert parser.feed(b"no newline yet") == [Output(b"no newline yet")]
    # a tail that may begin a control line waits for the next bytes
    assert parser.feed(b"x\x1ecorr") == [Output(b"x")]
    assert parser.feed(b"al is not it") == [Output(b"\x1ecorral is not it")]
    assert parser.feed(b"\x1ecorral-" + b"cd" * 16 + b":done\n") == [Control("done")]


def test_cpio_archive_reads_back_with_busybox_cpio(tmp_path: Path) -> None:
    require(os.path.exists(BUSYBOX), "busybox-static is not installed (scripts/setup.sh)")
    w = CpioWriter()
    w.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("etc/odd-size", b"x" * 5)
    w.symlink("bin/sh", "tool")
    w.directory("empty", 0o700)
    (tmp_path / "a.cpio.gz").write_bytes(w.gzipped())
    archive = gzip.decompress((tmp_path / "a.cpio.gz").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([BUSYBOX, "cpio", "-i", "-d"], input=archive, cwd=out, check=True, capture_output=True)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(out / "bin" / "tool").st_mode & 0o777 == 0o755
    assert (out / "etc" / "odd-size").read_bytes() == b"xxxxx"
    assert os.readlink(out / "bin" / "sh") == "tool"
    assert (out / "empty").is_dir()
    listed = subprocess.run([BUSYBOX, "cpio", "-t"], input=archive, capture_output=True, check=True).stdout
    assert sorted(listed.decode().split()) == ["bin", "bin/sh", "bin/tool", "empty", "etc", "etc/odd-size"]


def test_strip_signature_removes_exactly_the_appended_signature() -> None:
    body = b"\x7fELF" + b"m" * 100
    sig = b"S" * 37
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + len(sig).to_bytes(4, "big")
    assert strip_signature(body + sig + info + b"~Module signature appended~\n") == body
    assert strip_signature(body) == body


def test_job_script_quotes_every_word_and_refuses_what_the_guest_cannot_carry() -> None:
    step = GuestStep(
        0, "img0", ["/bin/sh", "-c", "echo '$HOME' `id`; $(reboot)"], dir="a b", env={"X": "1; rm -rf /"}
    )
    script = job_script([step])
    line = script.splitlines()[1]
    assert line.startswith("step 0 img0 1000 1000 'a b' 'X=1; rm -rf /' /bin/sh -c ")
    # run the line through a real shell with a `step` that prints its words: they arrive intact
    shown = subprocess.run(
        ["sh", "-c", 'step() { for w in "$@"; do printf "[%s]" "$w"; done; }; ' + line],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == "[0][img0][1000][1000][a b][X=1; rm -rf /][/bin/sh][-c][echo '$HOME' `id`; $(reboot)]"
    for bad in (
        GuestStep(0, "img0", ["a=b"]),
        GuestStep(0, "img0", ["sh"], env={"BAD-NAME": "x"}),
        GuestStep(0, "img0", ["sh"], env={"X": "nul\0"}),
        GuestStep(0, "img0", ["sh"], dir="../../etc"),
        GuestStep(0, "img0", []),
        GuestStep(0, "img0", ["sh"], uid=0),  # root without capabilities still owns /proc/sys
        GuestStep(0, "img0", ["sh"], gid=-1),
    ):
        with pytest.raises(ValueError):
            job_script([bad])
    assert (
        job_script([GuestStep(0, "img0", ["sh"], dir="/x//y/./")])
        .splitlines()[1]
        .startswith("step 0 img0 1000 1000 x/y ")
    )


def test_extract_vmlinux_finds_the_xz_payload() -> None:
    import lzma

    elf = b"\x7fELF" + os.urandom(3000)
    bz = b"MZ" + b"\0" * 500 + b"\xfd7zXZ\x00junk" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 64
    assert fc_assets.extract_vmlinux(bz) == elf
    with pytest.raises(ValueError):
        fc_assets.extract_vmlinux(b"MZ" + b"\0" * 100)


# --- real VMs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets() -> fc_assets.Assets:
    require(
        shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed (scripts/setup.sh)"
    )
    require(os.geteuid() == 0, "the microVM's 9p shares need root")
    return fc_assets.ensure_assets().assets


def test_install_is_idempotent(assets: fc_assets.Assets) -> None:
    before = {p: p.stat().st_mtime_ns for p in (assets.kernel, assets.initrd)}
    report = fc_assets.ensure_assets(assets.dir)
    assert not report.changed
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert assets.kernel.read_bytes()[:4] == b"\x7fELF"


def _busybox_root(tmp: Path) -> Path:
    """An ext4 image holding busybox as /bin/sh and friends (no docker needed)."""
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "uname", "id", "sleep", "echo", "printf", "cat", "dd", "head", "tr"):
        (root / "bin" / applet).symlink_to("busybox")
    img = tmp / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "16M"], check=True)
    return img


@pytest.fixture
def vm_root() -> Iterator[Path]:
    """Where VM directories (and their mounts) go: outside pytest's temporary root, below which
    every pytest session on the host unmounts everything at its start and end (tests/conftest.py)."""
    root = Path(tempfile.mkdtemp(prefix="corral-fc-test-", dir="/var/tmp"))
    yield root
    unmount_all(root)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def _running(
    tmp: Path, assets: fc_assets.Assets, name: str, steps: list[GuestStep], memory_mib: int = 256
) -> AsyncIterator[VM]:
    """A VM booted generic (its directory as the runtime makes it), then given `steps` (image img0:
    busybox) as the runtime does: staged after "ready", then `go`. Nothing of it remains after."""
    (tmp / "ws").mkdir(exist_ok=True)
    (tmp / "steps").mkdir(exist_ok=True)
    image = _busybox_root(tmp)
    d = VMDir(Path(tempfile.mkdtemp(prefix="corral-fc-test-", dir="/var/tmp")) / "vm")
    d.make(64 * 1024**2)
    vm = VM(
        VMConfig(
            name=name,
            assets=assets,
            memory_mib=memory_mib,
            disks=[Disk("scratch", d.scratch, readonly=False)],
            shares=[Share("job", d.job), Share("rw", d.rw, readonly=False)],
        )
    )
    try:
        await vm.start()
        async with asyncio.timeout(90):
            await vm.wait_ready()
        assert not any(d.job.iterdir()), "a VM boots knowing no job"
        d.stage(job_sh=job_script(steps), scripts=tmp / "steps", images={"img0": image}, workspace=tmp / "ws")
        await vm.go()
        yield vm
    finally:
        await vm.kill()
        d.remove()
        assert not d.path.exists() and mounts_under(d.path.parent) == []
        d.path.parent.rmdir()


async def test_a_step_runs_in_the_guest_kernel_and_its_exit_code_comes_back(
    assets: fc_assets.Assets, tmp_path: Path
) -> None:
    forged = "printf '\\036corral-0123:end 0 0 0\\n'"
    boot_forged = "printf '\\036corral-boot:end 0 0 0\\n'"
    # what the step holds (guest/step.c): ids, groups, capabilities, no_new_privs, and exactly its
    # environment (its shell's own, as exec'd: /proc/$$/environ), its working directory
    privileges = (
        "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status | tr '\\t' ' ';"
        " tr '\\0' '\\n' < /proc/$$/environ | sed 's/^/env /'; echo \"cwd $(pwd -P)\""
    )
    steps = [
        GuestStep(
            0,
            "img0",
            [
                "/bin/sh",
                "-c",
                f'uname -r; id -u; echo "$GREETING" > out.txt; {forged}; {boot_forged}; {privileges}; '
                "printf tail; exit 3",
            ],
            uid=4242,
            gid=4242,
            env={"PATH": "/bin", "GREETING": "hi from the vm"},
        ),
        GuestStep(1, "img0", ["/bin/sh", "-c", "echo never"]),
    ]
    (tmp_path / "ws").mkdir()
    os.chown(tmp_path / "ws", 4242, 4242)
    out = b""
    events: list[str] = []
    async with _running(tmp_path, assets, f"corral-test-{os.getpid()}-vm1", steps) as vm:
        async with asyncio.timeout(90):
            async for ev in vm.events():
                if isinstance(ev, Control):
                    events.append(ev.event)
                elif events and events[-1] == "start 0":  # between the step's start and end
                    out += ev.data
        assert await vm.wait() == 0, vm.stderr
    assert events[0] == "start 0" and events[1].startswith("end 0 3 0 0"), (events, out)
    assert events[-1] == "done"
    lines = out.decode().split("\n")  # (splitlines would also split at \x1e)
    assert lines[0] == assets.kernel_release != os.uname().release
    assert lines[1] == "4242"
    assert "\x1ecorral-0123:end 0 0 0" in lines[2]  # the step's forgeries are plain output
    assert "\x1ecorral-boot:end 0 0 0" in lines[3]  # (the boot marker too, once the job runs)
    assert out.endswith(b"tail")
    assert "never" not in out.decode()
    held = {k: v.strip() for k, _, v in (line.partition(":") for line in lines[4:] if line[:1].isupper())}
    assert held["Uid"] == held["Gid"] == "4242 4242 4242 4242", held
    assert held["Groups"] == "", held
    assert {k: held[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), "0000000000000000"
    ), held
    assert held["NoNewPrivs"] == "1", held
    assert sorted(line for line in lines if line.startswith("env ")) == [
        "env GREETING=hi from the vm",
        "env PATH=/bin",
    ], lines
    assert "cwd /data" in lines, lines
    assert (tmp_path / "ws" / "out.txt").read_text() == "hi from the vm\n"
    assert (tmp_path / "ws" / "out.txt").stat().st_uid == 4242


async def test_kill_mid_command_stops_the_vm_at_once_and_leaves_no_qemu(
    assets: fc_assets.Assets, tmp_path: Path
) -> None:
    name = f"corral-test-{os.getpid()}-vm2"
    seen = b""
    steps = [GuestStep(0, "img0", ["/bin/sh", "-c", "echo started; sleep 600"])]
    async with _running(tmp_path, assets, name, steps) as vm:
        async with asyncio.timeout(90):
            async for ev in vm.events():
                if isinstance(ev, Output):
                    seen += ev.data
                    if b"started" in seen:
                        break
        assert qemu_processes(name)
        t = time.monotonic()
        await vm.kill()
        took = time.monotonic() - t
    assert vm.proc is not None and vm.proc.returncode is not None
    assert took < 5
    assert qemu_processes(name) == {}


async def test_a_full_disk_and_running_out_of_memory_are_reported_as_such(
    assets: fc_assets.Assets, tmp_path: Path
) -> None:
    fill = "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>/dev/null; echo dd=$?; true"
    hog = 'x=0123456789; while :; do x="$x$x"; done; echo survived'
    steps = [
        GuestStep(0, "img0", ["/bin/sh", "-c", fill], env={"PATH": "/bin"}),
        GuestStep(1, "img0", ["/bin/sh", "-c", hog], env={"PATH": "/bin"}),
    ]
    events: list[str] = []
    out = b""
    async with _running(tmp_path, assets, f"corral-test-{os.getpid()}-vm3", steps, memory_mib=192) as vm:
        async with asyncio.timeout(120):
            async for ev in vm.events():
                if isinstance(ev, Control):
                    events.append(ev.event)
                else:
                    out += ev.data
    # step 0: the 64 MiB scratch disk (the job's disk limit) filled up; its layer is gone afterwards
    assert any(e.startswith("end 0 0 0 1") for e in events), (events, out[-2000:])
    assert b"dd=1" in out
    # step 1: the guest kernel's OOM killer took the step (not init, which reported it)
    end1 = next(e for e in events if e.startswith("end 1 "))
    rc, oom = end1.split()[2:4]
    assert rc != "0" and oom != "0", (events, out[-2000:])
    assert b"survived" not in out


async def test_the_janitor_kills_only_its_own_vms_of_jobs_that_are_not_live(tmp_path: Path) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime

    owner = f"t{os.getpid()}-jan"
    # live, stale, and another owner's (whose name starts with this owner's and a dash)
    names = [f"corral-fc.{owner}.batches-1", f"corral-fc.{owner}.batches-2", f"corral-fc.{owner}-x.batches-3"]
    procs = [
        subprocess.Popen(
            ["qemu-system-x86_64", "-name", n, "-M", "none", "-display", "none", "-nodefaults"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in names
    ]
    try:
        deadline = time.monotonic() + 10
        while len(qemu_processes(f"corral-fc.{owner}")) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        rt = FirecrackerRuntime(DockerRuntime(pull=False, owner=owner), owner=owner, cache_dir=tmp_path / "c")
        removed = await rt.janitor({"batches-1"})
        assert [r.split("(")[1].rstrip(")") for r in removed] == [names[1]]
        assert procs[1].wait(10) == -9
        assert procs[0].poll() is None and procs[2].poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_install_command_reports_what_is_in_place_and_refuses_unknown_targets(
    assets: fc_assets.Assets,
) -> None:
    corral = str(Path(sys.executable).parent / "corral")
    done = subprocess.run([corral, "executor", "install", "firecracker"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "kernel and initramfs already in place" in done.stdout
    assert assets.kernel_release in done.stdout and "accelerator " in done.stdout
    bad = subprocess.run([corral, "executor", "install", "kubernetes"], capture_output=True, text=True)
    assert bad.returncode == 2 and "firecracker" in bad.stderr


# --- the runtime's warm pool, with real VMs ------------------------------------------------------------

POOL_LIMITS = Limits(cpus=1.0, memory_bytes=256 * 1024**2, disk_bytes=256 * 1024**2)


class _Sink:
    def __init__(self) -> None:
        self.out: dict[str, bytes] = {}
        self.results: list[StepResult] = []

    async def started(self, step: Step) -> OutputSink:
        self.out[step.key] = b""

        def out(data: bytes) -> None:
            self.out[step.key] += data

        return out

    async def finished(self, step: Step, result: StepResult) -> None:
        self.results.append(result)


def _space(tmp: Path, n: int) -> JobSpace:
    root = tmp / f"job-{n}"
    (root / "workspace").mkdir(parents=True)
    (root / "scripts").mkdir()
    return JobSpace(n, "q", root, root / "workspace", uid=4242, gid=4242, limits=POOL_LIMITS, owner="t")


async def _ready(rt: FirecrackerRuntime, other_than: object = None) -> Guest:
    """The pool's ready VM (once it has one, and not `other_than`)."""
    async with asyncio.timeout(180):
        while not rt.pool.ready or rt.pool.ready[0] is other_than:
            await asyncio.sleep(0.05)
    return rt.pool.ready[0]


async def test_the_warm_pool_serves_each_job_a_fresh_vm_booted_before_it_replaces_a_dead_one_and_drains(
    assets: fc_assets.Assets, tmp_path: Path, vm_root: Path
) -> None:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    owner = f"t{os.getpid()}-pool"
    docker = DockerRuntime(pull=False, owner=owner)
    vms = vm_root / owner
    rt = FirecrackerRuntime(
        docker, owner=owner, cache_dir=tmp_path / "c", vm_dir=vms, limits=POOL_LIMITS, warm_pool=1, max_vms=2
    )
    one = ("/bin/sh", "-c", "echo one; ls /bin/corral-fmt || true")
    busybox = Step("step.docker.0", "docker", 0, "corral/busybox:1", one)
    two = ("/bin/sh", "-c", "ls /bin/corral-fmt && echo two")
    tools = Step("step.docker.1", "docker", 1, "corral/tools:1", two)
    served: list[tuple[int, str, str]] = []  # (qemu pid, nonce, name) of each job's VM
    await rt.start()
    try:
        for n, steps in enumerate([(busybox,), (busybox, tools)]):
            warm = await _ready(rt)  # booted before the job exists
            assert warm.vm.proc is not None
            pid = warm.vm.proc.pid
            space = _space(tmp_path, n)
            sink = _Sink()
            await rt.prepare(space)
            try:
                await rt.run_plan(space, JobPlan(n, "q", steps), sink)
                assert rt._jobs[space.root].guest is warm and warm.origin == "warm"
            finally:
                await rt.cleanup(space)
            assert [r.exit_code for r in sink.results] == [0] * len(steps), sink.out
            assert sink.out["step.docker.0"].startswith(b"one\n")
            if n == 1:  # two images in one VM, attached after it booted
                assert b"No such file" in sink.out["step.docker.0"] and b"two" in sink.out["step.docker.1"]
            # the job's VM is gone: no qemu, no directory, no mount
            assert not pid_alive(pid) and not warm.dir.path.exists() and mounts_under(warm.dir.path) == []
            assert warm.name not in qemu_processes(f"corral-fc.{owner}.").values()
            served.append((pid, warm.vm.nonce, warm.name))
        assert len({s[0] for s in served}) == len({s[1] for s in served}) == len({s[2] for s in served}) == 2
        assert rt.pool.stats.warm == 2 and rt.pool.stats.missed == 0
        # a warm VM that dies is discarded (its directory too) and replaced
        victim = await _ready(rt)
        assert victim.vm.proc is not None
        os.kill(victim.vm.proc.pid, signal.SIGKILL)
        replacement = await _ready(rt, other_than=victim)
        assert replacement.name != victim.name and not victim.dir.path.exists()
        assert rt.pool.stats.died == 1
    finally:
        await rt.stop()
        await docker.aclose()
    assert qemu_processes(f"corral-fc.{owner}.") == {}  # drained
    assert list(vms.iterdir()) == [] and mounts_under(vm_root) == []


# A killed executor: its warm VM (qemu runs on in its own session), with a workspace bound into it
# as a job's staging leaves it, printed, then the process waits to be SIGKILLed.
_KILLED_EXECUTOR = """
import asyncio, sys
from pathlib import Path
from corral.executor.runtimes.base import Limits
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime
from corral.executor.runtimes.firecracker.shares import bind

async def main():
    owner, vms, cache, ws = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    limits = Limits(cpus=1.0, memory_bytes=256 * 1024**2, disk_bytes=256 * 1024**2)
    rt = FirecrackerRuntime(DockerRuntime(pull=False, owner=owner), owner=owner, cache_dir=cache,
                            vm_dir=vms, limits=limits, warm_pool=1, max_vms=1)
    await rt.start()
    while not rt.pool.ready:
        await asyncio.sleep(0.05)
    guest = rt.pool.ready[0]
    bind(ws, guest.dir.rw / "ws", readonly=False)
    print(guest.name, guest.vm.proc.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_new_executors_janitor_removes_a_killed_ones_warm_vm_its_mounts_and_directory(
    assets: fc_assets.Assets, tmp_path: Path, vm_root: Path
) -> None:
    owner = f"t{os.getpid()}-killed"
    vms = vm_root / owner
    (tmp_path / "ws").mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_EXECUTOR, owner, str(vms), str(tmp_path / "c"), str(tmp_path / "ws"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(180):
            line = (await proc.stdout.readline()).decode().split()
        assert len(line) == 2, "the executor did not get a warm VM ready"
        name, pid = line[0], int(line[1])
        proc.kill()
        await proc.wait()
        # rw (a read-only bind of itself), the workspace on rw/ws, the console log's tmpfs
        assert pid_alive(pid) and (vms / name).is_dir() and len(mounts_under(vms / name)) == 3
        docker = DockerRuntime(pull=False, owner=owner)
        rt = FirecrackerRuntime(docker, owner=owner, cache_dir=tmp_path / "c", vm_dir=vms)
        await rt.start()  # the janitor of its start, before any VM of its own
        await rt.stop()
        await docker.aclose()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not pid_alive(pid) and qemu_processes(f"corral-fc.{owner}.") == {}
    assert not (vms / name).exists() and mounts_under(vm_root) == []
    assert (tmp_path / "ws").is_dir()  # the workspace itself is never touched
