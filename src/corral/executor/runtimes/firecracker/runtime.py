"""The `firecracker` runtime: the whole job in one microVM, booted for it and never reused.

On these machines the VMM is qemu `-M microvm` (TCG; KVM where a guest really boots with it, see
`vm.accelerator`): Firecracker proper is not obtainable here (no package, and /dev/kvm is PVM).
The VM is Firecracker-shaped: an uncompressed kernel booted directly, no firmware, no PCI, virtio-mmio
disks, a serial console.

A job (`run_plan`, PlanRunner): every image its docker steps name is pulled on the host by the
docker runtime's code (registry checks, the job's own credentials, which never enter the VM),
turned once per image id into a read-only ext4 disk (`images`), and attached to the VM as its own
virtio disk. The VM boots from the initramfs; its init (guest/init.sh) runs each step, in order, in
a fresh overlay of that step's image (writable layer on the job's scratch disk, whose size is the
job's disk limit: EXECUTOR_FIRECRACKER_DISK_SPACE / EXECUTOR_JOB_DISK_SPACE), chrooted, with the
workspace (9p, the host's workspace directory) at /data, as the job's uid without capabilities.
vCPUs and RAM are the job's (EXECUTOR_JOB_NUM_CPUS, EXECUTOR_JOB_MEMORY; the older FIRECRACKER
names too): a step that runs the guest out of memory is killed by the guest kernel and reported
as such (the guest's oom_kill counter), a step that fills the scratch disk as a disk failure.

Several images per job, the choice made here: one disk per image, attached at boot. It costs one
conversion per image id (cached; measured in the README) and nothing per step. It needs the images
known when the VM boots, which a cold VM per job has; a warm pool (a VM booted before its job is
known) needs images attached later: the read-only 9p image store is the candidate for that (next).

Network (`vmnet`): none by default (no NIC at all); a deny-private job's VM runs qemu with a
user-mode NIC inside the job's namespace behind the egress firewall, an open job's in the host's.

CLI steps run in the VM too, never on the host (`clistep`): in a root of the host's /usr and the
CLIs' installations, read-only 9p shares, with the workspace at /data, as the job's uid.

Not yet (say so rather than pretend): the warm pool, skip.json between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from corral.errors import ConfigError, Reason, RuntimeFailure
from corral.executor import safefs
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import LABEL_JOB, JobSpace, OutputSink, PlanSink, Step, StepResult
from corral.executor.runtimes.firecracker import fcapi, vmnet
from corral.executor.runtimes.firecracker.assets import DEFAULT_ASSETS_DIR, Assets, find_qemu, load_assets
from corral.executor.runtimes.firecracker.clistep import CliSteps
from corral.executor.runtimes.firecracker.console import Output
from corral.executor.runtimes.firecracker.guestjob import GuestStep, write_control
from corral.executor.runtimes.firecracker.images import DEFAULT_CACHE_BYTES, ImageDisk, ImageDisks
from corral.executor.runtimes.firecracker.vm import (
    VM,
    Disk,
    Share,
    VMConfig,
    accel_words,
    accelerator,
    qemu_processes,
)
from corral.executor.telemetry import tool_version

if TYPE_CHECKING:
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.settings import ExecutorSettings

__all__ = ["FirecrackerRuntime"]

log = logging.getLogger("corral.executor.runtimes.firecracker")

DEFAULT_DISK_BYTES = 20 * 1024**3  # scratch disk when the job's disk limit is 0 (unbounded)
DEFAULT_MEMORY_MIB = 2048  # VM RAM when the job's memory limit is 0 (unbounded)
BOOT_LOG_MAX = 64 * 1024  # bytes of console kept from before "ready", for errors
MAX_IMAGES = 16  # distinct images in one job (each is a virtio disk)


@dataclass
class _Job:
    vm: VM | None = None
    disks: list[ImageDisk] = field(default_factory=list)


class FirecrackerRuntime:
    name: ClassVar[str] = "firecracker"
    cli_runtime: ClassVar[str] = "shell"  # the diff runs in the shell sandbox on the host workspace

    def __init__(
        self,
        docker: DockerRuntime,
        *,
        owner: str,
        assets_dir: Path = DEFAULT_ASSETS_DIR,
        cache_dir: Path | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cli_binds: Sequence[str] = (),
        cli_dir: Path | None = None,
    ) -> None:
        self.docker = docker
        self.owner = owner
        self.assets_dir = assets_dir
        self.disks = ImageDisks(docker.api, cache_dir or assets_dir / "images", max_bytes=cache_bytes)
        self._jobs: dict[Path, _Job] = {}
        # CLI steps run in the VM (clistep.py): the host's /usr and these CLI installations, read-only
        self.cli = CliSteps(cli_binds, cli_dir or self.disks.dir.parent / f"cli-{owner}")
        self._telemetry: dict[str, str] | None = None

    @classmethod
    def from_settings(cls, s: ExecutorSettings, docker: DockerRuntime) -> FirecrackerRuntime:
        from corral.executor.runtimes.registry import cli_binds

        cli_dir = s.workspace_root.parent / f"firecracker-cli-{s.vm_prefix}"  # outside the workspace root
        return cls(docker, owner=s.vm_prefix, cli_binds=cli_binds(s), cli_dir=cli_dir)

    def _assets(self) -> Assets:
        return load_assets(self.assets_dir)

    def vm_name(self, space: JobSpace) -> str:
        """corral-fc.<owner>.<queue>-<job id>: "." is in neither an owner (EXECUTOR_VM_PREFIX) nor a
        queue name, so one owner's janitor never takes another owner's VM for its own."""
        return f"{self._name_prefix()}{space.labels[LABEL_JOB]}"

    def _name_prefix(self) -> str:
        return f"corral-fc.{self.owner}."

    # --- Runtime ----------------------------------------------------------------------------------

    async def check(self) -> list[str]:
        problems = []
        qemu = find_qemu()
        if qemu is None:
            problems.append(
                "qemu is not installed (no qemu-system-x86_64 on PATH or in /usr/bin), so no microVM can "
                "boot: run `corral executor install firecracker` (it installs Debian's qemu-system-x86 "
                "and prepares the VM kernel and initramfs)"
            )
        try:
            assets = await asyncio.to_thread(self._assets)
            if qemu is not None:
                # probed once (cached); the accelerator and the engine are said once in the log
                fcapi.say_once(fcapi.engine(await accelerator(assets)))
        except ConfigError as exc:
            problems.append(exc.message)
        if os.geteuid() != 0:
            problems.append("the firecracker runtime must run as root (the VMs' 9p shares keep owners)")
        problems += [f"images: {p}" for p in await self.docker.check()]
        return problems

    async def describe(self) -> list[tuple[str, str]]:
        """validate's line: the VMM, the accelerator (KVM or TCG) and the guest's kernel."""
        assets = await asyncio.to_thread(self._assets)
        probed = await accelerator(assets)
        accel = accel_words(probed)
        vmm = self.telemetry()["firecrackerVersion"]
        return [
            ("microVMs", f"{vmm}, accelerator {accel}, guest kernel {assets.kernel_release}"),
            ("engine", fcapi.engine(probed).words()),  # Firecracker proper: found, and how far it goes
        ]

    def telemetry(self) -> dict[str, str]:
        if self._telemetry is None:
            version = tool_version(["qemu-system-x86_64", "--version"], prefix="QEMU emulator version ")
            self._telemetry = {"firecrackerVersion": f"qemu-microvm {version}".strip()}
        return self._telemetry

    def secrets(self, plan: JobPlan) -> list[str]:
        return self.docker.secrets(plan)

    async def stage(self, space: JobSpace, plan: JobPlan) -> None:
        await self.docker.stage(space, plan)

    async def prepare(self, space: JobSpace) -> None:
        try:
            await asyncio.to_thread(space.workspace.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(safefs.chown_tree, space.workspace, space.uid, space.gid)
        except OSError as exc:
            raise RuntimeFailure(f"cannot prepare the workspace {space.workspace}: {exc}") from exc
        self._jobs[space.root] = _Job()
        await vmnet.up(space)  # deny-private: the job's namespace behind the egress firewall

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        raise RuntimeFailure("the firecracker runtime runs whole jobs (run_plan), not single steps")

    async def run_plan(self, space: JobSpace, plan: JobPlan, sink: PlanSink) -> None:
        job = self._jobs.setdefault(space.root, _Job())
        assets = await asyncio.to_thread(self._assets)
        serials = await self._image_disks(space, plan.steps, job)
        cli_root = await self.cli.root() if plan.has_cli_steps else None
        vmdir = space.root / "vm"
        await asyncio.to_thread(self._make_vmdir, vmdir, space)
        cfg = VMConfig(
            name=self.vm_name(space),
            assets=assets,
            cpus=_cpus(space.limits.cpus),
            memory_mib=space.limits.memory_bytes // 1024**2 or DEFAULT_MEMORY_MIB,
            disks=[
                Disk("scratch", vmdir / "scratch.ext4", readonly=False),
                *(Disk(serial, d.path) for serial, d in serials.values()),
            ],
            shares=[
                Share("ctl", vmdir / "ctl"),
                Share("ws", space.workspace, readonly=False),
                Share("steps", space.scripts),
                *(cli_root.shares if cli_root else ()),
            ],
            accel=await accelerator(assets),
            nic=vmnet.nic(space),  # a job with network: its own cold VM with a NIC (vmnet)
            console_log=vmdir / "console.log",
        )
        vm = VM(cfg)
        guest_steps = [
            self.cli.guest_step(i, space, s)
            if s.kind == "cli"
            else GuestStep(
                i,
                serials[str(s.image)][0],
                s.argv,
                uid=space.uid,
                gid=space.gid,
                dir=s.dir,
                env=_merged_env(serials[str(s.image)][1].env, s.env),
            )
            for i, s in enumerate(plan.steps)
        ]
        try:
            preamble = [f"pids_max {max(0, space.limits.pids)}", *(cli_root.preamble if cli_root else ())]
            await asyncio.to_thread(write_control, vmdir / "ctl", vm.nonce, guest_steps, preamble)
        except ValueError as exc:
            raise RuntimeFailure(f"cannot run the job's steps: {exc}", reason=Reason.FILES) from exc
        job.vm = vm
        try:
            await vm.start()
            await self._follow(vm, plan.steps, sink, space)
        finally:
            await vm.kill()

    async def _follow(self, vm: VM, steps: tuple[Step, ...], sink: PlanSink, space: JobSpace) -> None:
        out: OutputSink | None = None
        current: Step | None = None
        ready = done = False
        async for ev in vm.events():
            if isinstance(ev, Output):
                if out is not None:
                    out(ev.data)
                elif not ready and len(vm.boot_log) < BOOT_LOG_MAX:
                    vm.boot_log += ev.data
                continue
            words = ev.words
            kind = words[0] if words else ""
            if kind == "ready":
                ready = True
            elif kind == "start" and len(words) == 2 and words[1].isdigit() and int(words[1]) < len(steps):
                current = steps[int(words[1])]
                out = await sink.started(current)
            elif kind == "end" and current is not None and len(words) >= 4:
                rc, oom = int(words[2]), int(words[3]) > 0
                full = len(words) > 4 and words[4] == "1"
                refused = int(words[5]) if len(words) > 5 and words[5].isdigit() else 0
                result = _result(current, rc, oom, full, space, refused)
                out, step, current = None, current, None
                await sink.finished(step, result)  # raises StepFailed when the job stops here
            elif kind == "error":
                raise RuntimeFailure(f"the job's VM failed: {ev.event[6:]}", reason=Reason.SANDBOX)
            elif kind == "done":
                done = True
                break
        if not done:
            rc = await vm.wait()
            tail = (bytes(vm.boot_log[-1000:]) + _tail(vm.cfg.console_log)).decode(errors="replace").strip()
            why = vm.stderr or tail or "no output"
            phase = "while a step ran" if ready else "before its init was ready"
            raise RuntimeFailure(
                f"the job's VM stopped {phase} (qemu exit {rc}): {why}", reason=Reason.SANDBOX
            )

    async def _image_disks(
        self, space: JobSpace, steps: tuple[Step, ...], job: _Job
    ) -> dict[str, tuple[str, ImageDisk]]:
        """image name -> (disk serial, its disk), for every distinct image of the steps."""
        out: dict[str, tuple[str, ImageDisk]] = {}
        by_id: dict[str, str] = {}
        for s in steps:
            if s.kind == "cli":
                continue  # in the root of the host's /usr and CLIs (clistep.py)
            if not s.image:
                raise RuntimeFailure(f"step {s.key} has no image", reason=Reason.IMAGE)
            if s.image in out:
                continue
            found: dict[str, Any] = await self.docker._image(space, s.image)
            image_id = str(found.get("Id", ""))
            if image_id in by_id:
                out[s.image] = out[by_id[image_id]]
                continue
            if len(by_id) >= MAX_IMAGES:
                raise RuntimeFailure(f"a job may use at most {MAX_IMAGES} images", reason=Reason.IMAGE)
            disk = await self.disks.disk(image_id, found)
            job.disks.append(disk)
            by_id[image_id] = s.image
            out[s.image] = (f"img{len(by_id) - 1}", disk)
        return out

    @staticmethod
    def _make_vmdir(vmdir: Path, space: JobSpace) -> None:
        (vmdir / "ctl").mkdir(parents=True, mode=0o700, exist_ok=True)
        scratch = vmdir / "scratch.ext4"
        size = space.limits.disk_bytes or DEFAULT_DISK_BYTES
        with scratch.open("wb") as f:
            f.truncate(size)
        argv = [
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        ]
        proc = subprocess.run([*argv, str(scratch)], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeFailure(
                f"cannot make the job's scratch disk: {proc.stderr.strip()}", reason=Reason.DISK
            )

    async def cleanup(self, space: JobSpace) -> None:
        job = self._jobs.pop(space.root, None)
        if job is not None:
            if job.vm is not None:
                await job.vm.kill()
            for d in job.disks:
                self.disks.release(d.image_id)
        for pid in qemu_processes(self.vm_name(space)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        await asyncio.to_thread(shutil.rmtree, space.root / "vm", True)
        await vmnet.down(space)
        await self.docker.cleanup(space)

    async def janitor(self, live: set[str]) -> list[str]:
        prefix = self._name_prefix()
        removed = []
        for pid, name in qemu_processes(prefix).items():
            if name.removeprefix(prefix) not in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    removed.append(f"qemu {pid} ({name})")
        await asyncio.to_thread(self.disks.clear_leftovers)
        return removed


def _tail(path: Path | None, n: int = 2000) -> bytes:
    """The last n bytes of the kernel's console log (why a VM died before or while running)."""
    if path is None:
        return b""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read(n)
    except OSError:
        return b""


def _cpus(limit: float) -> int:
    host = os.cpu_count() or 1
    return host if limit <= 0 else max(1, min(host, math.ceil(limit)))


def _merged_env(image_env: tuple[str, ...], step_env: Mapping[str, str]) -> dict[str, str]:
    """The image's Env, then the step's (as Docker does for a container)."""
    env: dict[str, str] = {}
    for item in image_env:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/tmp")
    env.update(step_env)
    return env


def _result(step: Step, rc: int, oom: bool, full: bool, space: JobSpace, refused: int = 0) -> StepResult:
    """`refused`: forks the step's process limit (EXECUTOR_JOB_PIDS, its cgroup in the guest) refused."""
    if full:
        gib = (space.limits.disk_bytes or DEFAULT_DISK_BYTES) / 1024**3
        return StepResult(rc, reason=Reason.DISK, message=f"{step.key} filled the job's disk ({gib:g} GiB)")
    if oom:
        return StepResult(137 if rc == 0 else rc, oom_killed=True)
    if refused:
        limit = f"{space.limits.pids} processes, EXECUTOR_JOB_PIDS"
        why = f"{step.key} hit the job's process limit ({limit}): {refused} forks refused"
        return StepResult(rc, reason=Reason.EXIT, message=why)
    return StepResult(rc)
