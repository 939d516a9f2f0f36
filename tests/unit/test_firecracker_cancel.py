"""A job cancelled while its VM is being staged (review R2): staging runs in a thread (links, bind
mounts), and a cancel that returned at once let cleanup remove the VM's directory beside it:
rmtree, after its check for mounts, walked into a workspace bound the moment later, and the bind
outlived the directory's removal. Now the cancel waits for the thread. Fakes for the VM and its
directory: the order of staging and removal is what is checked."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime, Guest


class FakeDir:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.staging = threading.Event()

    def stage(self, **_: Any) -> None:
        self.staging.set()
        time.sleep(0.5)  # the binds
        self.events.append("staged")

    def remove(self) -> None:
        self.events.append("removed")


class FakeVM:
    alive = False

    async def kill(self) -> None:
        pass


async def test_a_cancel_during_staging_waits_for_it_before_cleanup_removes_the_vm(tmp_path: Path) -> None:
    events: list[str] = []
    vmdir = FakeDir(events)
    docker = DockerRuntime(pull=False, owner="fccancel")
    rt = FirecrackerRuntime(docker, owner="fccancel", cache_dir=tmp_path / "images", vm_dir=tmp_path / "vms")
    space = JobSpace(1, "q", tmp_path / "job", tmp_path / "job" / "workspace")

    async def guest(space: JobSpace, job: Any) -> Guest:
        job.guest = Guest("vm", vmdir, FakeVM())  # type: ignore[arg-type]
        return job.guest  # type: ignore[no-any-return]

    async def no_images(*_: Any) -> dict[str, Any]:
        return {}

    async def no_docker(_: JobSpace) -> None:
        pass

    rt._guest, rt._image_disks, docker.cleanup = guest, no_images, no_docker  # type: ignore[method-assign]
    task = asyncio.create_task(rt.run_plan(space, JobPlan(1, "q", ()), None))  # type: ignore[arg-type]
    while not vmdir.staging.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await rt.cleanup(space)
    assert events == ["staged", "removed"]
    await docker.aclose()
