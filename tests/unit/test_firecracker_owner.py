"""One EXECUTOR_VM_PREFIX, one live executor per host (review R2): the firecracker janitor takes
every VM of its owner that its own process does not know for a killed executor's leftover, so a
second executor started with the same prefix removed the first one's running VMs (their qemu, the
workspaces bound into them). Now a started runtime holds a lock of its owner, and a second start
is refused naming the variable, before its janitor touches anything. No VM: warm pools of 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.executor.runtimes.docker import DockerRuntime
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime


def _runtime(tmp: Path, owner: str) -> FirecrackerRuntime:
    docker = DockerRuntime(pull=False, owner=owner)
    return FirecrackerRuntime(docker, owner=owner, cache_dir=tmp / "images", vm_dir=tmp / "vms" / owner)


async def test_a_second_executor_with_the_same_prefix_is_refused_before_its_janitor_runs(
    tmp_path: Path,
) -> None:
    first, second, other = (_runtime(tmp_path, o) for o in ("fcown", "fcown", "fcother"))
    await first.start()
    running = first.vm_dir / first._new_name()  # a VM of the first executor, booting or running
    first._known.add(running.name)
    running.mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        await second.start()
    assert "EXECUTOR_VM_PREFIX=fcown" in err.value.message
    assert running.is_dir()  # untouched
    await other.start()  # another prefix: its own lock
    await other.stop()
    # another process (a second executor) is refused too; once the first stops, it may start
    code = (
        "import asyncio, sys; from pathlib import Path; sys.path[:0] = [sys.argv[2]]\n"
        "from tests.unit.test_firecracker_owner import _runtime\n"
        "asyncio.run(_runtime(Path(sys.argv[1]), 'fcown').start())\n"
    )
    argv = [sys.executable, "-c", code, str(tmp_path), str(Path(__file__).parents[2])]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "EXECUTOR_VM_PREFIX=fcown" in refused.stderr
    await first.stop()
    await second.start()
    await second.stop()
