"""The `firecracker` runtime: the whole job in one microVM, never reused; a warm pool boots them ahead.

On these machines the VMM is qemu `-M microvm` (TCG; KVM where a guest really boots with it, see
`vm.accelerator`): Firecracker proper is not obtainable here (no package, and /dev/kvm is PVM).
The VM is Firecracker-shaped: an uncompressed kernel booted directly, no firmware, no PCI, virtio-mmio
devices, a serial console for the kernel and a virtio console for the job.

Every VM boots generic, before or without knowing its job (`_boot`): the kernel, the initramfs, its
scratch disk (virtio-blk, as large as the job's disk limit: EXECUTOR_JOB_DISK_SPACE /
EXECUTOR_FIRECRACKER_DISK_SPACE; vCPUs and RAM from EXECUTOR_JOB_NUM_CPUS / EXECUTOR_JOB_MEMORY:
limits are executor-wide, so every VM has the same shape) and three empty 9p shares of its own
directory (`shares.VMDir`): "job" and "cli" (read-only) and "rw". Its init mounts two, says "ready" and
waits for a `go` line on the console's input. The job is attached late (`VMDir.stage`): job.sh and
the step scripts, each image's cached ext4 disk HARD-LINKED into the read-only share (the VM sees
its job's images and no other; the guest loop-mounts them read-only), and the workspace bound
(mount --bind) into "rw". Then `go <nonce>`: init takes the job's nonce from it (never written to
a file) and runs each step, in order, in a fresh overlay of its image (writable layer on the
scratch disk), chrooted, with the workspace at /data, as the job's uid without capabilities. A step
that runs the guest out of memory is killed by the guest kernel and reported as such (the guest's
oom_kill counter), a step that fills the scratch disk as a disk failure.

Warm and cold are one code path: a cold job boots a generic VM and says `go` as soon as it is
ready, and it boots it while the job's images are pulled and converted (so the boot hides behind
them). The warm pool (`pool.WarmPool`, EXECUTOR_FIRECRACKER_WARM_POOL VMs, default 1) keeps VMs
booted before their jobs are dequeued, within EXECUTOR_MAXIMUM_NUM_JOBS VMs in all; a VM serves one
job and is killed after it (qemu, mounts, directory: nothing remains). A job with network never gets
a warm VM: its VM boots cold with a NIC in the job's namespace (`vmnet`).

Several images per job, the choice made here: each image is converted once per image id into a
read-only ext4 disk (`images`, cached), attached as a loop device over the read-only 9p share, one
overlay per step. Before the warm pool, each image was its own virtio disk attached at boot, which
a VM booted before its job cannot have (measured against this design in the README).

Network (`vmnet`): none by default (no NIC at all); a deny-private job's VM runs qemu with a
user-mode NIC inside the job's namespace behind the egress firewall, an open job's in the host's.

CLI steps run in the VM too, never on the host (`clistep`): in a root of the host's /usr and the
CLIs' installations, bound read-only into the VM's "cli" share (read-only, empty at boot) when a job
with CLI steps is staged, so a job without them sees nothing of the host; with the workspace at
/data, as the job's uid.

Measured (bench/firecracker_boot.py; figures in the README): see there for cold vs a bare boot,
warm vs cold, and the host memory of an idle warm VM.

Not yet (say so rather than pretend): skip.json between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from corral.errors import ConfigError, Reason, RuntimeFailure, StepFailed
from corral.executor import safefs
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace, Limits, OutputSink, PlanSink, Step, StepResult
from corral.executor.runtimes.firecracker import fcapi, vmnet
from corral.executor.runtimes.firecracker.assets import DEFAULT_ASSETS_DIR, Assets, find_qemu, load_assets
from corral.executor.runtimes.firecracker.clistep import CliSteps
from corral.executor.runtimes.firecracker.console import Control, Output
from corral.executor.runtimes.firecracker.guestjob import GuestStep, job_script
from corral.executor.runtimes.firecracker.images import DEFAULT_CACHE_BYTES, ImageDisk, ImageDisks
from corral.executor.runtimes.firecracker.pool import WarmPool
from corral.executor.runtimes.firecracker.shares import VMDir, mounts_under, unmount_all
from corral.executor.runtimes.firecracker.vm import (
    VM,
    Disk,
    Nic,
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
MAX_IMAGES = 16  # distinct images in one job (each a loop device in the guest)
BOOT_TIMEOUT_S = 120.0  # seconds from qemu's start to init's "ready" (TCG on a busy host: 2-6 s)


@dataclass(frozen=True)
class Shape:
    """What every VM of an executor has (limits are executor-wide): a warm VM fits a job of the same."""

    cpus: int
    memory_mib: int
    disk_bytes: int

    @classmethod
    def of(cls, limits: Limits) -> Shape:
        return cls(
            _cpus(limits.cpus),
            limits.memory_bytes // 1024**2 or DEFAULT_MEMORY_MIB,
            limits.disk_bytes or DEFAULT_DISK_BYTES,
        )


@dataclass(eq=False)
class Guest:
    """A booted VM and its directory. `origin`: "warm" (ready before its job asked for it), "pooled"
    (the pool's boot under way when its job asked), "cold" (booted for its job)."""

    name: str
    dir: VMDir
    vm: VM
    origin: str = "cold"

    def __str__(self) -> str:
        return self.name


@dataclass
class _Job:
    guest_task: asyncio.Task[Guest] | None = None
    guest: Guest | None = None
    slot: bool = False  # holds one of the pool's EXECUTOR_MAXIMUM_NUM_JOBS slots
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
        limits: Limits | None = None,
        warm_pool: int = 0,
        max_vms: int = 1,
        vm_dir: Path | None = None,
    ) -> None:
        self.docker = docker
        self.owner = owner
        self.assets_dir = assets_dir
        self.disks = ImageDisks(docker.api, cache_dir or assets_dir / "images", max_bytes=cache_bytes)
        self._jobs: dict[Path, _Job] = {}
        # CLI steps run in the VM (clistep.py): the host's /usr and these CLI installations, read-only
        self.cli = CliSteps(cli_binds, cli_dir or self.disks.dir.parent / f"cli-{owner}")
        self._telemetry: dict[str, str] | None = None
        # the VMs' directories: next to the image cache (same filesystem: its disks are hard-linked)
        self.vm_dir = vm_dir or self.disks.dir.parent / "vms" / owner
        self.shape = Shape.of(limits or Limits())
        self._known: set[str] = set()  # this process's VMs (booting, warm, running): the janitor's
        self._owner_lock: int | None = None  # the flock on .<owner>.lock while started (_hold_owner)
        self._seq = 0
        self.pool: WarmPool[Guest] = WarmPool(
            size=warm_pool,
            capacity=max_vms,
            boot=lambda: self._boot(self.shape, rehearse=True),
            discard=self._discard,
            exited=lambda g: g.vm.wait(),
            alive=lambda g: g.vm.alive,
        )

    @classmethod
    def from_settings(cls, s: ExecutorSettings, docker: DockerRuntime) -> FirecrackerRuntime:
        from corral.executor.runtimes.registry import cli_binds

        cli_dir = s.workspace_root.parent / f"firecracker-cli-{s.vm_prefix}"  # outside the workspace root
        limits = Limits(cpus=s.job_num_cpus, memory_bytes=s.job_memory, disk_bytes=s.job_disk_space)
        return cls(
            docker,
            owner=s.vm_prefix,
            cli_binds=cli_binds(s),
            cli_dir=cli_dir,
            limits=limits,
            warm_pool=s.firecracker_warm_pool,
            max_vms=s.maximum_num_jobs,
        )

    def _assets(self) -> Assets:
        return load_assets(self.assets_dir)

    def _name_prefix(self) -> str:
        """corral-fc.<owner>.: "." is in no owner (EXECUTOR_VM_PREFIX), so one owner's janitor never
        takes another owner's VM for its own."""
        return f"corral-fc.{self.owner}."

    def _new_name(self) -> str:
        """corral-fc.<owner>.vm.<pid>-<n>-<random>: no job label has a "." (queue names have none)."""
        self._seq += 1
        return f"{self._name_prefix()}vm.{os.getpid()}-{self._seq}-{secrets.token_hex(3)}"

    # --- the runtime's own lifecycle (base.Lifecycle) -------------------------------------------

    async def start(self) -> None:
        """Hold the owner's lock, remove what a killed executor of this owner left, then fill the
        warm pool. ConfigError when another executor of this host holds the lock: every VM of the
        owner that this process does not know is a leftover to the janitor, so two live executors
        with one EXECUTOR_VM_PREFIX would kill each other's VMs and unmount their workspaces."""
        self._hold_owner()
        removed = await self.janitor(set())
        for what in removed:
            log.warning("janitor (owner %s): removed %s: left by an earlier executor", self.owner, what)
        self.pool.start()

    async def stop(self) -> None:
        """Drain the warm pool: its VMs killed, their directories removed; the owner's lock freed."""
        try:
            await self.pool.drain()
        finally:
            if self._owner_lock is not None:
                os.close(self._owner_lock)  # drops the flock
                self._owner_lock = None

    def _hold_owner(self) -> None:
        """flock `.<owner>.lock` next to the owner's VM directories for as long as this runtime runs
        (close-on-exec: no qemu keeps it; a killed executor's lock goes with its process)."""
        if self._owner_lock is not None:
            return
        path = self.vm_dir.with_name(f".{self.vm_dir.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"another executor with EXECUTOR_VM_PREFIX={self.owner} runs on this host (it holds "
                f"{path}): each executor needs a prefix of its own, or their janitors remove each "
                "other's VMs"
            ) from None
        self._owner_lock = fd

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
            ("warm pool", self._pool_words()),
        ]

    def _pool_words(self) -> str:
        size, cap = self.pool.size, self.pool.capacity
        if size == 0:
            return "off (EXECUTOR_FIRECRACKER_WARM_POOL=0): every job boots its VM"
        words = (
            f"{size} VM{'s' * (size > 1)} booted ahead of jobs (EXECUTOR_FIRECRACKER_WARM_POOL), "
            f"at most {cap} VM{'s' * (cap > 1)} in all (EXECUTOR_MAXIMUM_NUM_JOBS)"
        )
        if size > cap:  # the operator asked for more than the bound lets the pool hold
            running = f"{cap} jobs run" if cap > 1 else "a job runs"
            words += f": so at most {cap} warm, and none while {running}"
        return words

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
        if pre := plan.skip_points:
            # the guest runs the steps one after another from job.sh; it has no way yet to stop after
            # a .pre step for the host to read skip.json: refused before any VM is taken or booted
            raise StepFailed(
                f"{pre[0]} may leave a skip.json naming the next step, which the firecracker runtime "
                "does not honour yet: run this job on the docker or shell runtime",
                Reason.SANDBOX,
            )
        job = self._jobs.setdefault(space.root, _Job())
        # the VM (warm, or booting cold) while the images are pulled and converted
        job.guest_task = asyncio.ensure_future(self._guest(space, job))
        serials = await self._image_disks(space, plan.steps, job)
        cli_root = await self.cli.root() if plan.has_cli_steps else None
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
            script = job_script(guest_steps, preamble)
        except ValueError as exc:
            raise RuntimeFailure(f"cannot run the job's steps: {exc}", reason=Reason.FILES) from exc
        guest = await job.guest_task
        images = {serial: d.path for serial, d in serials.values()}
        stage = functools.partial(
            guest.dir.stage,
            job_sh=script,
            scripts=space.scripts,
            images=images,
            workspace=space.workspace,
            cli=[(share.tag, share.path) for share in cli_root.shares] if cli_root else (),
        )
        try:
            # a cancel waits for the thread: cleanup's removal of the VM's directory must not run
            # beside its binds (rmtree would walk into a workspace bound the moment after its check)
            await _unabandoned(asyncio.to_thread(stage))
        except OSError as exc:
            raise RuntimeFailure(f"cannot attach the job to its VM: {exc}", reason=Reason.SANDBOX) from exc
        log.info("job %s: runs in %s VM %s", space.job_id, guest.origin, guest.name)
        try:
            await guest.vm.go()
            await self._follow(guest.vm, plan.steps, sink, space)
        finally:
            await guest.vm.kill()

    async def _guest(self, space: JobSpace, job: _Job) -> Guest:
        """The job's VM: a warm one when the pool has one that fits, else one booted now."""
        nic = vmnet.nic(space)
        # A job with network never gets a warm VM: its VM boots with a NIC in the job's namespace.
        warm_fits = nic is None and Shape.of(space.limits) == self.shape
        asked = time.monotonic()
        taken = await self.pool.acquire(take=warm_fits)
        job.slot = True
        if taken is not None:
            taken.origin = "warm" if taken.vm.ready_at <= asked else "pooled"
            job.guest = taken
            return taken
        job.guest = await self._boot(Shape.of(space.limits), nic=nic)
        return job.guest

    async def _boot(self, shape: Shape, nic: Nic | None = None, *, rehearse: bool = False) -> Guest:
        """Boot a generic VM (no job data) up to init's "ready"; on failure or cancellation nothing
        of it remains. `rehearse` (the pool's VMs, booted before a job waits): init runs a step's
        path once before "ready" (guest/init.sh), which takes about half of the first step's start
        off the job; a cold VM would only move that time before its job."""
        name = self._new_name()
        self._known.add(name)  # before anything exists: the janitor never takes it for a leftover
        vmdir, vm = VMDir(self.vm_dir / name), None
        try:
            assets = await asyncio.to_thread(self._assets)
            try:
                await _unabandoned(asyncio.to_thread(self._make_dir, vmdir, shape.disk_bytes))
            except OSError as exc:
                raise RuntimeFailure(f"cannot make the VM's directory: {exc}", reason=Reason.DISK) from exc
            vm = VM(
                VMConfig(
                    name=name,
                    assets=assets,
                    cpus=shape.cpus,
                    memory_mib=shape.memory_mib,
                    disks=[Disk("scratch", vmdir.scratch, readonly=False)],
                    shares=[
                        Share("job", vmdir.job),
                        Share("rw", vmdir.rw, readonly=False),
                        Share("cli", vmdir.cli),  # empty until a job with CLI steps is staged
                    ],
                    accel=await accelerator(assets),
                    nic=nic,
                    console_log=vmdir.console_log,
                    extra_cmdline=("corral.rehearse",) if rehearse else (),
                )
            )
            await vm.start()
            try:
                async with asyncio.timeout(BOOT_TIMEOUT_S):
                    await vm.wait_ready()
            except TimeoutError:
                raise RuntimeFailure(
                    f"the VM did not boot within {BOOT_TIMEOUT_S:g} s: {vm.why()}", reason=Reason.SANDBOX
                ) from None
            return Guest(name, vmdir, vm)
        except BaseException:
            await asyncio.shield(self._remove(name, vmdir, vm))
            raise

    def _make_dir(self, vmdir: VMDir, disk_bytes: int) -> None:
        self.vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        vmdir.make(disk_bytes)

    async def _discard(self, guest: Guest) -> None:
        """Kill the VM, unmount and remove its directory (idempotent)."""
        await self._remove(guest.name, guest.dir, guest.vm)

    async def _remove(self, name: str, vmdir: VMDir, vm: VM | None) -> None:
        self._known.discard(name)
        if vm is not None:
            await vm.kill()
        try:
            await asyncio.to_thread(vmdir.remove)
        except OSError as exc:
            log.warning("cannot remove the VM directory %s: %s (the janitor will retry)", vmdir.path, exc)

    async def _follow(self, vm: VM, steps: tuple[Step, ...], sink: PlanSink, space: JobSpace) -> None:
        """The steps' output and results from the console. Only init knows the nonce, but a step that
        broke the guest's kernel can read it from init's memory: each step is started once, in
        order, and ended once, so forged lines may lie about the job's own steps and nothing more
        (a line out of that order fails the job, never opens another log entry)."""
        out: OutputSink | None = None
        current: Step | None = None
        started = 0  # steps started so far: the next "start" must be of step `started`
        done = False
        async for ev in vm.events():
            if isinstance(ev, Output):
                if out is not None:
                    out(ev.data)
                else:
                    vm.keep_boot_log(ev.data)
                continue
            words = ev.words
            kind = words[0] if words else ""
            if kind == "start":
                if len(words) != 2 or current is not None or _numbers(ev, words[1:]) != [started]:
                    raise _broken(ev)
                if started == len(steps):
                    raise _broken(ev)
                current = steps[started]
                started += 1
                out = await sink.started(current)
            elif kind == "end":
                if current is None or not 4 <= len(words) <= 6:
                    raise _broken(ev)
                index, rc, oom_kills, *rest = _numbers(ev, words[1:])
                if index != started - 1:
                    raise _broken(ev)
                full, refused = [*rest, 0, 0][:2]
                result = _result(current, rc, oom_kills > 0, full == 1, space, refused)
                out, step, current = None, current, None
                await sink.finished(step, result)  # raises StepFailed when the job stops here
            elif kind == "error":
                raise RuntimeFailure(f"the job's VM failed: {ev.event[6:]}", reason=Reason.SANDBOX)
            elif kind == "done":
                done = True
                break
        if not done:
            rc = await vm.wait()
            phase = "while a step ran" if current is not None else "between steps"
            raise RuntimeFailure(
                f"the job's VM stopped {phase} (qemu exit {rc}): {vm.why()}", reason=Reason.SANDBOX
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

    async def cleanup(self, space: JobSpace) -> None:
        job = self._jobs.pop(space.root, None)
        if job is not None:
            task = job.guest_task
            if task is not None and not task.done():
                task.cancel()  # a boot cancelled removes what it made
            if task is not None:
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is None:
                    job.guest = task.result()
            if job.guest is not None:
                await self._discard(job.guest)
            if job.slot:
                self.pool.release()
            for d in job.disks:
                self.disks.release(d.image_id)
        await vmnet.down(space)
        await self.docker.cleanup(space)

    async def janitor(self, live: set[str]) -> list[str]:
        """Kill this owner's qemu processes and remove its VM directories (and their mounts) that
        belong to no VM of this process: a killed executor's. A VM named after a live job (older
        executors named VMs corral-fc.<owner>.<queue>-<id>) is left alone."""
        prefix = self._name_prefix()
        removed = []
        for pid, name in qemu_processes(prefix).items():
            if name not in self._known and name.removeprefix(prefix) not in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    removed.append(f"qemu {pid} ({name})")
        removed += await asyncio.to_thread(self._sweep_dirs)
        await asyncio.to_thread(self.disks.clear_leftovers)
        return removed

    def _sweep_dirs(self) -> list[str]:
        removed = []
        try:
            entries = list(os.scandir(self.vm_dir))
        except OSError:
            return []
        for e in entries:
            if e.name in self._known or not e.name.startswith(self._name_prefix()):
                continue
            path = Path(e.path)
            for m in unmount_all(path):
                removed.append(f"mount {m}")
            if mounts_under(path):
                continue  # rmtree would walk into it: left for the next sweep
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"VM directory {path}")
        return removed


async def _unabandoned(work: Awaitable[None]) -> None:
    """Await `work` (a thread); when cancelled, still wait for it to end before re-raising, so that
    what it makes exists before the caller's cleanup removes it."""
    fut = asyncio.ensure_future(work)
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait({fut})
        raise


_NUMBER = re.compile(r"[0-9]{1,9}")  # a control line's numbers: exit codes, counts, indexes


def _broken(ev: Control) -> RuntimeFailure:
    return RuntimeFailure(
        f"the job's VM sent a control line out of its protocol: {ev.event[:200]!r}", reason=Reason.SANDBOX
    )


def _numbers(ev: Control, words: list[str]) -> list[int]:
    if not all(_NUMBER.fullmatch(w) for w in words):
        raise _broken(ev)
    return [int(w) for w in words]


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
