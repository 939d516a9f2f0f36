"""firecracker_boot: what a job microVM costs (qemu -M microvm; TCG unless KVM boots a guest here).

Side by side in one run, alternating, medians:
- bare boot: qemu start -> kernel -> init "ready" -> "done" -> qemu killed (as the runtime does), with
  the job's disks and shares attached but no step (the floor any job pays);
- cold job: the firecracker runtime's prepare + run_plan (one docker step `true` in corral/busybox:1,
  whose disk is cached after the first run) + cleanup, in this process;
- the image's first conversion to a disk (export, safe extraction, mkfs.ext4), once;
- qemu's peak RSS on the host (VmHWM) during a bare boot with 512 MiB of guest RAM.
No VM has a network device: nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import RUNTIME_OWNER, BenchError, Row, Table, median, tempdir
from bench.job_overhead import IMAGE, _space

NAME = "firecracker_boot"


class _Sink:
    def __init__(self) -> None:
        self.results: list[Any] = []

    async def started(self, step: Any) -> Any:
        return lambda _b: None

    async def finished(self, step: Any, result: Any) -> None:
        self.results.append(result)


async def _bare(assets: Any, root: Path, i: int) -> tuple[float, int]:
    from corral.executor.runtimes.firecracker.console import Control
    from corral.executor.runtimes.firecracker.guestjob import write_control
    from corral.executor.runtimes.firecracker.vm import VM, Disk, Share, VMConfig

    d = root / f"bare-{i}"
    for sub in ("ctl", "ws", "steps"):
        (d / sub).mkdir(parents=True)
    scratch = d / "scratch.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(scratch), "64M"], check=True, capture_output=True)
    vm = VM(
        VMConfig(
            name=f"corral-fc.{RUNTIME_OWNER}.bare-{i}",
            assets=assets,
            memory_mib=512,
            disks=[Disk("scratch", scratch, readonly=False)],
            shares=[
                Share("ctl", d / "ctl"),
                Share("ws", d / "ws", readonly=False),
                Share("steps", d / "steps"),
            ],
        )
    )
    write_control(d / "ctl", vm.nonce, [])
    t0 = time.perf_counter()
    await vm.start()
    hwm = 0
    try:
        async for ev in vm.events():
            if isinstance(ev, Control) and ev.event == "done" and vm.proc is not None:
                hwm = _hwm_kib(vm.proc.pid)
                break
    finally:
        await vm.kill()
    return time.perf_counter() - t0, hwm


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _cold(rt: Any, root: Path, i: int) -> float:
    from corral.executor.plan import JobPlan
    from corral.executor.runtimes.base import Step

    space = _space(root, 30_000 + i)
    space.scripts.mkdir()
    step = Step(key="step.docker.0", kind="docker", index=0, image=IMAGE, argv=("true",))
    sink = _Sink()
    t0 = time.perf_counter()
    try:
        await rt.prepare(space)
        await rt.run_plan(space, JobPlan(job_id=space.job_id, queue="bench", steps=(step,)), sink)
    finally:
        await rt.cleanup(space)
    took = time.perf_counter() - t0
    shutil.rmtree(space.root, ignore_errors=True)
    if not sink.results or sink.results[0].exit_code != 0:
        raise BenchError(f"firecracker: `true` did not succeed: {sink.results}")
    return took


def run(quick: bool = False, profile: bool = False) -> Table:
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.firecracker.assets import load_assets
    from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime
    from corral.executor.runtimes.firecracker.vm import accelerator

    n = 2 if quick else 5
    assets = load_assets()

    async def main() -> Table:
        accel = await accelerator(assets)
        t = Table(NAME, f"a job microVM ({accel}, {os.cpu_count()} host cores), medians of {n}")
        docker = DockerRuntime(pull=False, owner=RUNTIME_OWNER)
        with tempdir("fc-boot") as root:
            rt = FirecrackerRuntime(docker, owner=RUNTIME_OWNER, cache_dir=root / "images")
            found = await docker.api.image_inspect(IMAGE)
            if found is None:
                raise BenchError(f"image {IMAGE} is missing (scripts/build-images.sh)")
            t0 = time.perf_counter()
            await rt.disks.disk(found["Id"], found)
            rt.disks.release(found["Id"])
            convert = time.perf_counter() - t0
            bare: list[float] = []
            cold: list[float] = []
            hwm: list[int] = []
            for i in range(n):
                b, h = await _bare(assets, root, i)
                bare.append(b)
                hwm.append(h)
                cold.append(await _cold(rt, root, i))
            await docker.aclose()
        t.add(
            Row(
                "cold job s (prepare + boot + `true` + cleanup) vs bare boot s",
                median(cold),
                median(bare),
                target="<= 1.3x",
                ok=median(cold) <= 1.3 * median(bare),
            )
        )
        t.add(Row("warm job s (warm pool)", "not built yet", None))
        t.add(Row(f"first conversion of {IMAGE} to a disk s", convert, None))
        t.add(Row("qemu peak RSS MiB (512 MiB guest, bare boot)", median(hwm) / 1024, None))
        return t

    return asyncio.run(main())
