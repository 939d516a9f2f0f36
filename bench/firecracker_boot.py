"""firecracker_boot: what a job microVM costs (qemu -M microvm; TCG unless KVM boots a guest here).

Side by side in one run, alternating, medians; every figure is "dequeue to the first byte of the
step's output" (a runtime's prepare + run_plan, in this process; the clone and the server are not
in it), for one docker step `echo first` in corral/busybox:1 (its disk cached after the first run):
- bare boot: the same kernel, initramfs and VM shape, its directory made and the job staged before
  qemu starts, `go` written the moment init is ready: the VM alone, no executor work;
- cold job: the runtime without a warm pool (boots a generic VM while it looks the image up, then
  stages and says `go`);
- warm job: the runtime with EXECUTOR_FIRECRACKER_WARM_POOL=1, its VM booted before the job (the
  pool is refilled and ready again before the next measurement);
- host memory of an idle warm VM beyond its guest RAM: qemu's anonymous memory
  (/proc/PID/smaps_rollup "Anonymous") minus the resident part of the guest-RAM mapping (the
  anonymous mapping of exactly the guest's RAM size in /proc/PID/smaps): what qemu itself costs the
  host and cannot share or drop (TCG's code buffer, device state, heap); also its PSS minus the
  same (with one VM that includes qemu's mapping of the kernel file, ~60 MiB of page cache that
  every VM shares), and qemu's whole RSS against the guest RAM it touched, for a 512 MiB guest.
No VM has a network device: nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RUNTIME_OWNER, BenchError, Row, Table, median, tempdir
from bench.job_overhead import IMAGE, _space

NAME = "firecracker_boot"
COMMAND = ("/bin/sh", "-c", "echo first")
MIB = 1024**2
MEMORY_MIB = 512
POOL_READY_TIMEOUT_S = 180.0


class _Sink:
    """The step's first output byte, timed from t0."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.first: float | None = None
        self.results: list[Any] = []

    async def started(self, step: Any) -> Any:
        def out(data: bytes) -> None:
            if self.first is None and data:
                self.first = time.perf_counter() - self.t0

        return out

    async def finished(self, step: Any, result: Any) -> None:
        self.results.append(result)


async def _bare(assets: Any, image: Path, root: Path, i: int) -> float:
    from corral.executor.runtimes.firecracker.console import Output
    from corral.executor.runtimes.firecracker.guestjob import GuestStep, job_script
    from corral.executor.runtimes.firecracker.shares import VMDir
    from corral.executor.runtimes.firecracker.vm import VM, Disk, Share, VMConfig

    base = root / f"bare-{i}"
    (base / "ws").mkdir(parents=True)
    (base / "steps").mkdir()
    d = VMDir(base / "vm")
    d.make(20 * 1024**3)
    step = GuestStep(0, "img0", COMMAND, env={"PATH": "/bin"})
    d.stage(job_sh=job_script([step]), scripts=base / "steps", images={"img0": image}, workspace=base / "ws")
    vm = VM(
        VMConfig(
            name=f"corral-fc.{RUNTIME_OWNER}.bare-{i}",
            assets=assets,
            memory_mib=MEMORY_MIB,
            disks=[Disk("scratch", d.scratch, readonly=False)],
            shares=[Share("job", d.job), Share("rw", d.rw, readonly=False)],
        )
    )
    t0 = time.perf_counter()
    try:
        await vm.start()
        await vm.wait_ready()
        await vm.go()
        async for ev in vm.events():
            if isinstance(ev, Output) and b"first" in ev.data:
                return time.perf_counter() - t0
        raise BenchError(f"the bare VM ended without output: {vm.why()}")
    finally:
        await vm.kill()
        d.remove()


async def _job(rt: Any, root: Path, i: int) -> float:
    from corral.executor.plan import JobPlan
    from corral.executor.runtimes.base import Step

    space = _space(root, 30_000 + i)
    space.scripts.mkdir()
    step = Step(key="step.docker.0", kind="docker", index=0, image=IMAGE, argv=COMMAND)
    sink = _Sink(time.perf_counter())
    try:
        await rt.prepare(space)
        await rt.run_plan(space, JobPlan(job_id=space.job_id, queue="bench", steps=(step,)), sink)
    finally:
        await rt.cleanup(space)
    shutil.rmtree(space.root, ignore_errors=True)
    if not sink.results or sink.results[0].exit_code != 0 or sink.first is None:
        raise BenchError(f"firecracker: {COMMAND} did not succeed: {sink.results}")
    return sink.first


async def _pool_ready(rt: Any) -> Any:
    deadline = time.monotonic() + POOL_READY_TIMEOUT_S
    while not rt.pool.ready:
        if time.monotonic() > deadline:
            raise BenchError(f"the warm pool had no VM ready within {POOL_READY_TIMEOUT_S:g} s")
        await asyncio.sleep(0.05)
    return rt.pool.ready[0]


def _memory_kib(pid: int, guest_mib: int) -> tuple[int, int, int, int]:
    """(qemu PSS, qemu RSS, qemu anonymous memory, resident guest RAM) in KiB, from
    /proc/PID/smaps(_rollup)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    value = {f[0].rstrip(":"): int(f[1]) for f in (line.split() for line in rollup[1:]) if len(f) >= 2}
    guest = 0
    size = rss = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and "-" in fields[0] and ":" not in fields[0]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            size, rss = (end - start) // 1024, 0
        elif fields and fields[0] == "Rss:":
            rss = int(fields[1])
            if size == guest_mib * 1024:
                guest = max(guest, rss)
    return value.get("Pss", 0), value.get("Rss", 0), value.get("Anonymous", 0), guest


def run(quick: bool = False, profile: bool = False) -> Table:
    from corral.executor.runtimes.base import Limits
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.firecracker.assets import load_assets
    from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime
    from corral.executor.runtimes.firecracker.shares import unmount_all
    from corral.executor.runtimes.firecracker.vm import accelerator

    n = 2 if quick else 5
    assets = load_assets()
    limits = Limits(cpus=1.0, memory_bytes=MEMORY_MIB * MIB, pids=1024)

    async def main() -> Table:
        accel = await accelerator(assets)
        t = Table(NAME, f"a job microVM ({accel}, {os.cpu_count()} host cores), medians of {n}")
        docker = DockerRuntime(pull=False, owner=RUNTIME_OWNER)
        # VM directories hold mounts: outside the temporary root other test runs sweep
        vms = Path(tempfile.mkdtemp(prefix="corral-bench-vms-", dir="/var/tmp"))
        try:
            with tempdir("fc-boot") as root:
                common = {"owner": RUNTIME_OWNER, "cache_dir": root / "images", "limits": limits}
                cold_rt = FirecrackerRuntime(docker, **common, vm_dir=vms / "cold")
                warm_rt = FirecrackerRuntime(docker, **common, vm_dir=vms / "warm", warm_pool=1, max_vms=1)
                found = await docker.api.image_inspect(IMAGE)
                if found is None:
                    raise BenchError(f"image {IMAGE} is missing (scripts/build-images.sh)")
                t0 = time.perf_counter()
                disk = await cold_rt.disks.disk(found["Id"], found)
                convert = time.perf_counter() - t0
                await warm_rt.start()
                bare: list[float] = []
                cold: list[float] = []
                warm: list[float] = []
                pss: list[int] = []
                rss: list[int] = []
                anon: list[int] = []
                touched: list[int] = []
                for i in range(n):
                    # the pool's VM is ready (and idle: its job waits) before anything is measured,
                    # so that its boot never runs beside a measurement
                    idle = await _pool_ready(warm_rt)
                    await asyncio.sleep(1.0)
                    if idle.vm.proc is not None:
                        p, r, a, g = _memory_kib(idle.vm.proc.pid, MEMORY_MIB)
                        pss.append(p)
                        rss.append(r)
                        anon.append(a)
                        touched.append(g)
                    bare.append(await _bare(assets, disk.path, root, i))
                    cold.append(await _job(cold_rt, root, i))
                    warm.append(await _job(warm_rt, root, 100 + i))
                await warm_rt.stop()
                cold_rt.disks.release(found["Id"])
        finally:
            unmount_all(vms)
            shutil.rmtree(vms, ignore_errors=True)
            await docker.aclose()
        b, c, w = median(bare), median(cold), median(warm)
        cold_row = "cold job s (dequeue -> first output) vs bare boot s"
        t.add(Row(cold_row, c, b, target="<= 1.3x", ok=c <= 1.3 * b))
        t.add(
            Row(
                "warm job s (dequeue -> first output) vs cold job s",
                w,
                c,
                target="<= 0.3 s and >= 5x faster",
                ok=w <= 0.3 and c >= 5 * w,
            )
        )
        overhead = (median(anon) - median(touched)) / 1024 if anon else float("nan")
        mem_row = "idle warm VM: qemu anonymous memory - guest RAM touched, MiB"
        t.add(Row(mem_row, overhead, None, target="< 64", ok=overhead < 64))
        pss_row = "idle warm VM: qemu PSS - guest RAM touched, MiB (incl. the kernel file, shared)"
        t.add(Row(pss_row, (median(pss) - median(touched)) / 1024 if pss else float("nan"), None))
        if rss:
            rss_row = f"idle warm VM: qemu RSS MiB vs guest RAM touched MiB ({MEMORY_MIB} MiB guest)"
            t.add(Row(rss_row, median(rss) / 1024, median(touched) / 1024))
        t.add(Row(f"first conversion of {IMAGE} to a disk s", convert, None))
        return t

    return asyncio.run(main())
