"""The image disk cache is shared by every executor of the host (review R2): a disk one executor
holds, or a VM's directory links, is never evicted by another, and an executor's held links go
when it releases them or, once it is gone, with the janitor. No Docker: the cache is made by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from corral.executor.runtimes.firecracker.images import ImageDisks

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _cached(cache: Path, image_id: str, size: int = 4096) -> Path:
    cache.mkdir(exist_ok=True)
    key = image_id.removeprefix("sha256:")
    disk = cache / f"{key}.ext4"
    disk.write_bytes(b"\1" * size)
    (cache / f"{key}.json").write_text(json.dumps({"env": ["PATH=/bin"]}))
    return disk


def _disks(cache: Path, max_bytes: int = 1) -> ImageDisks:
    return ImageDisks(None, cache, max_bytes=max_bytes)  # type: ignore[arg-type]  # no export: cached disks


async def test_a_disk_another_executor_holds_is_not_evicted(tmp_path: Path) -> None:
    cache = tmp_path / "images"
    disk_a = _cached(cache, A)
    _cached(cache, B)
    one, other = _disks(cache, 1 << 30), _disks(cache)
    held = await one.disk(A, {})  # executor one hands A to a job (its VM boots meanwhile)
    assert held.env == ("PATH=/bin",) and held.path.read_bytes() == disk_a.read_bytes()
    # executor two, over the bound, evicts what is not held: B, never the disk executor one holds
    assert other._evict() == [B.removeprefix("sha256:")]
    assert disk_a.exists() and held.path.exists()
    # ... nor a disk a VM's directory links (the job is running; executor one released nothing yet)
    vm_link = tmp_path / "vm-img0.ext4"
    os.link(held.path, vm_link)
    one.release(A)
    assert not held.path.exists() and other._evict() == []
    vm_link.unlink()  # the VM is gone: now it may go
    assert other._evict() == [A.removeprefix("sha256:")] and not disk_a.exists()


async def test_held_links_go_with_the_last_release_and_with_a_dead_executor(tmp_path: Path) -> None:
    cache = tmp_path / "images"
    _cached(cache, A)
    disks = _disks(cache)
    first, second = await disks.disk(A, {}), await disks.disk(A, {})
    assert first.path == second.path and first.path.parent.name == ".held"
    disks.release(A)
    assert first.path.exists()  # one job still holds it
    disks.release(A)
    assert not first.path.exists()
    # an executor killed while it held a disk leaves its link: the janitor of any executor clears it
    argv = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(argv, capture_output=True, text=True, check=True)
    left = cache / ".held" / f"{dead.stdout.strip()}-{'a' * 64}"
    os.link(cache / f"{'a' * 64}.ext4", left)
    mine = await disks.disk(A, {})
    disks.clear_leftovers()
    assert not left.exists() and mine.path.exists()  # this live process's hold stays


async def test_two_caches_of_one_process_keep_their_holds_apart(tmp_path: Path) -> None:
    # e.g. two runtimes in one process (the benchmark's cold and warm ones): one's janitor or
    # release never takes the other's hold
    cache = tmp_path / "images"
    _cached(cache, A)
    one, two = _disks(cache), _disks(cache)
    held_one, held_two = await one.disk(A, {}), await two.disk(A, {})
    assert held_one.path != held_two.path
    two.release(A)
    two.clear_leftovers()
    assert held_one.path.exists() and not held_two.path.exists()
    one.clear_leftovers()
    assert held_one.path.exists()
    one.release(A)
    assert not held_one.path.exists()
