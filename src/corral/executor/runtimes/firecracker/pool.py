"""The warm pool: microVMs booted before their jobs are known, each given to one job, never back.

`WarmPool` keeps `size` VMs (EXECUTOR_FIRECRACKER_WARM_POOL, default 1; 0 = off) booted ahead, within
one bound: at most `capacity` VMs (EXECUTOR_MAXIMUM_NUM_JOBS) at once, counting the warm ones, the
one booting, and every running job's (warm-taken or booted cold). So with one job at a time the pool
boots the next VM when the job's VM is gone, never beside it.

- A job calls `acquire(take=True)`: it holds one of the `capacity` slots until `release()` and gets
  a ready VM, or, when none is ready but one is booting, claims that one (it is ready sooner than a
  cold boot would be, and a cold boot beside it would pass the bound), or None (the caller boots a
  cold VM in its slot). `acquire(take=False)` only takes the slot (a networked job: its VM is cold).
- The pool boots one VM at a time in the background (a boot is CPU-bound under TCG; the host's
  cores belong to running jobs first), after `start()`, each time a slot frees or a VM is taken
  or found dead. A failed boot is retried after a growing pause.
- A warm VM that exits is discarded and replaced; the pool never gets a VM back: a VM serves one job.
- `drain()` (executor shutdown) stops booting and discards every VM it holds; VMs given to jobs
  are their jobs' to discard.

The pool knows nothing of qemu: `boot()` makes a VM (and on failure or cancellation cleans up what
it made), `discard(vm)` removes one, `exited(vm)` completes when it has stopped (`alive(vm)` says so
at once); unit tests drive it with fakes (tests/unit/test_firecracker_pool.py), the runtime with real VMs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["PoolStats", "WarmPool"]

log = logging.getLogger("corral.executor.runtimes.firecracker")

RETRY_FIRST_S = 2.0  # seconds before the first retry of a failed boot; doubles up to RETRY_MAX_S
RETRY_MAX_S = 300.0

T = TypeVar("T")


@dataclass
class PoolStats:
    booted: int = 0  # VMs the pool booted
    warm: int = 0  # jobs given a VM that was ready
    claimed: int = 0  # jobs given a VM that was still booting
    missed: int = 0  # jobs that found the pool empty (their VM was booted cold)
    died: int = 0  # warm VMs found stopped (discarded, replaced)
    failed: int = 0  # boots that failed


class WarmPool(Generic[T]):
    def __init__(
        self,
        *,
        size: int,
        capacity: int,
        boot: Callable[[], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
        exited: Callable[[T], Awaitable[object]],
        alive: Callable[[T], bool] = lambda _vm: True,
    ) -> None:
        self.size, self.capacity = max(0, size), max(1, capacity)
        self._boot, self._discard, self._exited, self._alive = boot, discard, exited, alive
        self.running = 0  # slots held by jobs
        self.stats = PoolStats()
        self._ready: collections.deque[tuple[T, float]] = collections.deque()  # (vm, when it was ready)
        self._booting: list[asyncio.Task[T]] = []
        self._claimed: set[asyncio.Task[T]] = set()
        self._watch: dict[int, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._fill_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- what the pool holds --------------------------------------------------------------------

    @property
    def ready(self) -> list[T]:
        return [vm for vm, _ in self._ready]

    @property
    def booting(self) -> int:
        """Boots under way that no job has claimed."""
        return sum(1 for t in self._booting if t not in self._claimed)

    @property
    def total(self) -> int:
        """VMs counted against `capacity`: ready, booting for the pool, and the jobs' slots."""
        return len(self._ready) + self.booting + self.running

    def _wanted(self) -> bool:
        return (
            not self._closed
            and len(self._ready) + self.booting < self.size
            and self.total < self.capacity
        )

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin filling (idempotent; a pool of size 0 never boots)."""
        if self._fill_task is None and self.size > 0 and not self._closed:
            self._fill_task = asyncio.create_task(self._fill())

    async def drain(self) -> None:
        """Stop booting and discard every VM the pool holds (not those given to jobs)."""
        self._closed = True
        if self._fill_task is not None:
            self._fill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fill_task
        mine = [t for t in self._booting if t not in self._claimed]
        for t in mine:
            t.cancel()  # boot() removes what it made
        if mine:
            await asyncio.wait(mine)
        self._booting = [t for t in self._booting if t not in mine]
        for t in mine:
            if not t.cancelled() and t.exception() is None:
                await self._discard(t.result())
        while self._ready:
            vm, _ = self._ready.popleft()
            self._unwatch(vm)
            await self._discard(vm)
        if self._background:
            await asyncio.wait(self._background)

    # --- jobs ---------------------------------------------------------------------------------------

    async def acquire(self, *, take: bool = True) -> T | None:
        """Take a slot for a job (until `release`), and with `take` a warm VM when there is one."""
        self.running += 1
        if not take or self.size == 0:
            return None
        try:
            return await self._take()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """A job's VM is gone: its slot frees (the pool may boot the next)."""
        self.running = max(0, self.running - 1)
        self._changed.set()

    async def _take(self) -> T | None:
        while self._ready:
            vm, ready_at = self._ready.popleft()
            watcher = self._unwatch(vm)
            self._changed.set()
            if (watcher is not None and watcher.done()) or not self._alive(vm):
                self.stats.died += 1
                self._spawn(self._discard(vm))
                continue
            self.stats.warm += 1
            waited = time.monotonic() - ready_at
            log.info("firecracker: a job takes warm VM %s (ready for %.1f s)", vm, waited)
            return vm
        for task in self._booting:
            if task in self._claimed:
                continue
            self._claimed.add(task)
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                if task in self._booting:  # the pool's again: it goes to the next job
                    self._claimed.discard(task)
                elif task.done() and not task.cancelled() and task.exception() is None:
                    self._spawn(self._discard(task.result()))
                raise
            if task.cancelled() or task.exception() is not None:
                break
            self.stats.claimed += 1
            log.info("firecracker: a job takes VM %s as soon as it booted", task.result())
            return task.result()
        self.stats.missed += 1
        return None

    # --- filling ------------------------------------------------------------------------------------

    async def _fill(self) -> None:
        failures = 0
        while True:
            self._changed.clear()
            if not self._wanted():
                await self._changed.wait()
                continue
            started = time.monotonic()
            task = asyncio.ensure_future(self._boot())
            self._booting.append(task)
            try:
                await asyncio.wait({task})
            finally:
                if task.done():
                    self._booting.remove(task)
            claimed = task in self._claimed
            self._claimed.discard(task)
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                failures += 1
                self.stats.failed += 1
                pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (failures - 1))
                log.warning("firecracker: a warm VM did not boot (%s); next try in %.0f s", exc, pause)
                await asyncio.sleep(pause)
                continue
            failures = 0
            self.stats.booted += 1
            vm = task.result()
            if claimed:
                continue  # its job has it
            if self._closed:
                await self._discard(vm)
                continue
            self._ready.append((vm, time.monotonic()))
            self._watch[id(vm)] = asyncio.create_task(self._on_exit(vm))
            log.info(
                "firecracker: warm VM %s ready in %.1f s (%d warm, %d running, at most %d VMs)",
                vm,
                time.monotonic() - started,
                len(self._ready),
                self.running,
                self.capacity,
            )

    async def _on_exit(self, vm: T) -> None:
        await self._exited(vm)
        for i, (held, _) in enumerate(self._ready):
            if held is vm:
                del self._ready[i]
                self._watch.pop(id(vm), None)
                self.stats.died += 1
                log.warning("firecracker: warm VM %s stopped while waiting for a job: replaced", vm)
                self._spawn(self._discard(vm))
                self._changed.set()
                return

    def _unwatch(self, vm: T) -> asyncio.Task[None] | None:
        watcher = self._watch.pop(id(vm), None)
        if watcher is not None and not watcher.done():
            watcher.cancel()
            return None
        return watcher

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("firecracker: discarding a VM failed")

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
