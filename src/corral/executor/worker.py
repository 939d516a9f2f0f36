"""The executor's main loop: dequeue into free slots, heartbeat, relay cancels, shut down cleanly.

- Slots: at most EXECUTOR_MAXIMUM_NUM_JOBS jobs run at once; a dequeue is only sent for a free slot.
- Pickup: long-poll dequeue when the server offers it (a job starts as soon as it is enqueued),
  else Sourcegraph's short poll every EXECUTOR_QUEUE_POLL_INTERVAL; server errors back off.
- Running jobs are keyed `<id>-<queue>` (client.job_key), as Sourcegraph's worker keys them: job 7
  of `batches` and job 7 of `codeintel` are two jobs, in the running set, heartbeats and cancels.
- Heartbeat every heartbeat_interval with all running jobs; jobs missing from knownIds are dropped
  (see `drop`), keys the server names in cancelIds are canceled.
- Cancel watch (extension): a held request that returns the moment a job is canceled.
- Reattach (extension, a runtime that is a `Reattacher`: kubernetes): at start, before the janitor
  and the first dequeue, the sandboxes a previous process of this executor left are offered back
  to the server one by one; those whose attempt the server still leases to this executor's name
  run again (in slots, heartbeated like any job), the rest are left to the janitor, which deletes
  them. They are taken back within the server's stall window only if the executor restarts in it.
- Shutdown: the first SIGTERM/SIGINT stops dequeuing and lets running jobs finish (at most
  shutdown_grace); the second cancels them. EXECUTOR_NUM_TOTAL_JOBS / EXECUTOR_MAX_ACTIVE_TIME end
  the loop the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from corral.errors import CorralError, ServerError, VersionSkew
from corral.executor.client import QueueClient, job_key
from corral.executor.handler import JobHandler, src_cli_path
from corral.executor.janitor import sweep_once
from corral.executor.runtimes.base import Lifecycle, Reattacher, Runtime
from corral.executor.settings import ExecutorSettings
from corral.executor.telemetry import executor_telemetry, prometheus_metrics, src_cli_version, tool_version
from corral.protocol import Job, KnownLogEntry

__all__ = ["Worker", "tool_version"]

log = logging.getLogger("corral.executor")
BACKOFF_MAX = 30.0  # seconds between dequeues (or start-up pings) while the server fails
PING_INTERVAL = 1.0  # seconds before the second start-up ping; doubled per failure up to BACKOFF_MAX
REMIND_EVERY = 60.0  # seconds: an unchanged failure is logged again at most this often


class FailureLog:
    """Log a repeating failure once, then only when its message changes or every REMIND_EVERY
    seconds (with the count of tries in between), so a server that is down for an hour costs a
    screenful, not 3,600 lines."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.clock = what, clock
        self.last_msg: str | None = None
        self.last_at = 0.0
        self.quiet = 0  # failures since the last logged one

    def failed(self, exc: BaseException, retry_in: float) -> None:
        msg, now = str(exc), self.clock()
        if msg != self.last_msg or now - self.last_at >= REMIND_EVERY:
            again = f" ({self.quiet} more tries since the last message)" if self.quiet else ""
            log.warning("%s: %s; retrying in %.1fs%s", self.what, msg, retry_in, again)
            self.last_msg, self.last_at, self.quiet = msg, now, 0
        else:
            self.quiet += 1

    def recovered(self) -> None:
        if self.last_msg is not None:
            log.info("%s: recovered", self.what)
        self.last_msg, self.quiet = None, 0


CANCEL_WATCH_WAIT = 20.0  # seconds one cancel-watch request is held


class Worker:
    def __init__(
        self,
        settings: ExecutorSettings,
        client: QueueClient,
        runtime: Runtime,
        cli_runtime: Runtime | None = None,
        *,
        echo: bool = False,
        handler: JobHandler | None = None,  # injected (tests); by default built from the arguments
    ) -> None:
        self.settings, self.client, self.runtime = settings, client, runtime
        self.handler = handler or JobHandler(settings, client, runtime, cli_runtime, echo=echo)
        # by job_key: the jobs whose leases this executor holds (sent in heartbeats)
        self.running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        # jobs the server no longer considers ours that still stop and clean up here (see drop)
        self.dropped: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self.slots = asyncio.Semaphore(settings.maximum_num_jobs)
        self.stopping = asyncio.Event()
        self.jobs_changed = asyncio.Event()
        self.dequeued = 0
        self.started = time.monotonic()
        self._telemetry = executor_telemetry(
            settings.cli_path, (r.telemetry() for r in self.handler.runtimes.distinct())
        )
        self._src_cli_version = src_cli_version(src_cli_path(settings))

    @property
    def telemetry(self) -> dict[str, str]:
        """The heartbeat's telemetry. srcCliVersion names the CLI that runs this server's CLI steps:
        corral's against corral's server, src-cli's against Sourcegraph's (JobHandler.cli_path)."""
        t = dict(self._telemetry)
        if not self.client.server_is_corral:
            t["srcCliVersion"] = self._src_cli_version
        try:
            t["prometheusMetrics"] = prometheus_metrics()
        except Exception:  # metrics must never stop a heartbeat (Sourcegraph: "Continue")
            log.exception("could not gather the executor's metrics for the heartbeat")
        return t

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self, *, install_signals: bool = True) -> None:
        if install_signals:
            self._install_signals()
        # runtimes with work of their own (the firecracker warm pool boots while we connect)
        started = [r for r in self.handler.runtimes.distinct() if isinstance(r, Lifecycle)]
        bg: list[asyncio.Task[None]] = []
        try:
            for r in started:
                await r.start()
            await self._wait_for_server()
            await self._reattach()  # before the janitor, which would delete what it takes back
            bg += [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._janitor_loop())]
            if self.client.has("cancelwatch"):
                bg.append(asyncio.create_task(self._cancel_watch_loop()))
            await self._dequeue_loop()
            await self._drain()
        finally:
            for t in bg:
                t.cancel()
            for t in bg:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for r in started:
                try:
                    await r.stop()
                except Exception:
                    log.exception("runtime %s did not stop cleanly", r.name)
            if bg:
                with contextlib.suppress(Exception):
                    await self.client.heartbeat([], self.telemetry)

    def stop(self) -> None:
        """First call: stop taking jobs. Second call: cancel the running ones."""
        if self.stopping.is_set():
            log.warning("second stop signal: stopping %d running job(s)", len(self.running))
            for key, (_job, task) in list(self.running.items()):
                self._stop_locally(key, task)
        else:
            log.info("stopping: no new jobs; waiting for %d running job(s)", len(self.running))
            self.stopping.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)

    async def _wait_for_server(self) -> None:
        failures, delay = FailureLog("server not ready"), PING_INTERVAL
        while not self.stopping.is_set():
            try:
                await self.client.heartbeat([], self.telemetry)
                log.info(
                    "connected to %s as %s (queues %s, runtime %s, extensions %s)",
                    self.settings.frontend_url,
                    self.settings.name,
                    ",".join(self.settings.queues),
                    self.runtime.name,
                    ",".join(sorted(self.client.extensions)) or "none",
                )
                return
            except CorralError as exc:
                if isinstance(exc, VersionSkew) or (
                    isinstance(exc, ServerError) and exc.status in (400, 401, 403)
                ):
                    raise
                failures.failed(exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def _done_taking(self) -> bool:
        s = self.settings
        if s.num_total_jobs and self.dequeued >= s.num_total_jobs:
            return True
        return bool(s.max_active_time and time.monotonic() - self.started >= s.max_active_time)

    async def _dequeue_loop(self) -> None:
        backoff, failures = 0.0, FailureLog("dequeue failed")
        while not self.stopping.is_set() and not self._done_taking():
            if not await self._free_slot():
                break
            wait = self.settings.long_poll
            try:
                job = await self._interruptible(self.client.dequeue(wait))
                backoff = 0.0
                failures.recovered()
            except CorralError as exc:
                self.slots.release()
                if isinstance(exc, VersionSkew) or (isinstance(exc, ServerError) and exc.status == 400):
                    log.error("the server refuses this executor: %s", exc)
                    raise
                backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                failures.failed(exc, backoff)
                await self._sleep(backoff)
                continue
            except Exception:  # a bug (or an answer the client failed to map) must not end the executor
                self.slots.release()
                log.exception("dequeue failed unexpectedly; trying again")
                backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                await self._sleep(backoff)
                continue
            except asyncio.CancelledError:  # interrupted by stop()
                self.slots.release()
                break
            if job is None:
                self.slots.release()
                if not self.client.has("longpoll") or wait <= 0:
                    await self._sleep(self.settings.queue_poll_interval)
                continue
            self.dequeued += 1
            self._start(job)

    async def _free_slot(self) -> bool:
        """Take a slot; False (holding none) once stop() is called, also while every slot is busy, so
        that the shutdown grace starts at the first stop and not when some job happens to end."""
        if self.stopping.is_set():
            return False
        acquire = asyncio.ensure_future(self.slots.acquire())
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
        if acquire.done() and not acquire.cancelled():
            if not self.stopping.is_set():
                return True
            self.slots.release()
        return False

    async def _interruptible(self, coro: Awaitable[Job | None]) -> Job | None:
        """Await a dequeue, abandoning it when stop() is called (a job it got back is requeued by
        the server's resetter, since we never heartbeat it)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise asyncio.CancelledError

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _reattach(self) -> None:
        """Take back from the server what a previous process of this executor left running (see
        the module docstring); at most as many as there are slots. Never raises: what is not taken
        back is the janitor's."""
        runtime = self.runtime
        if not isinstance(runtime, Reattacher) or not self.client.has("reattach"):
            return
        try:
            found = await runtime.orphans()
        except Exception as exc:
            log.warning("reattach: cannot list what a previous executor left: %s", exc)
            return
        for orphan in found:
            if self.slots.locked():
                log.warning("reattach: no slot free for job %s (%s); it goes", orphan.job_id, orphan.name)
                continue
            try:
                got = await self.client.reattach(orphan.queue, orphan.job_id, orphan.attempt)
            except CorralError as exc:
                log.warning("reattach of job %s (%s) failed: %s; it goes", orphan.job_id, orphan.name, exc)
                continue
            if got is None:
                log.info("reattach: the server no longer gives job %s attempt %s to us: %s goes",
                         orphan.job_id, orphan.attempt, orphan.name)  # fmt: skip
                continue
            job, entries = got
            runtime.claim(orphan)
            await self.slots.acquire()  # free: checked above, nothing else takes slots yet
            log.info("job %s (attempt %s): reattached to %s", job.id, job.attempt, orphan.name)
            self._start(job, entries)

    def _start(self, job: Job, resume: list[KnownLogEntry] | None = None) -> None:
        key = job_key(job)
        log.info("job %s (queue %s, attempt %s): starting", job.id, job.queue, job.attempt)
        stale = self.running.get(key) or self.dropped.get(key)
        task = asyncio.create_task(self._guarded(job, stale[1] if stale else None, resume))
        self.running[key] = (job, task)
        self.jobs_changed.set()

    async def _guarded(
        self, job: Job, stale: asyncio.Task[None] | None, resume: list[KnownLogEntry] | None = None
    ) -> None:
        try:
            if stale is not None and not stale.done():
                # The server gave this job back to us as a new attempt while an old one still runs
                # here: stop the old one (and let its cleanup finish) before the new one starts.
                log.warning("job %s: a stale attempt still runs here; stopping it first", job.id)
                stale.cancel()
                await asyncio.wait({stale})
            await (self.handler.handle(job, resume) if resume is not None else self.handler.handle(job))
        except asyncio.CancelledError:
            log.info("job %s: canceled", job.id)
        except Exception:
            log.exception("job %s: handler crashed", job.id)
        finally:
            key = job_key(job)
            for table in (self.running, self.dropped):
                current = table.get(key)
                if current is not None and current[1] is asyncio.current_task():
                    del table[key]
            self.jobs_changed.set()
            self.slots.release()

    async def _drain(self) -> None:
        tasks = [t for _j, t in (*self.running.values(), *self.dropped.values())]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        if pending:
            log.warning("shutdown grace over: stopping %d job(s)", len(pending))
            for key, (_job, task) in list(self.running.items()):
                if task in pending:
                    self._stop_locally(key, task)
            await asyncio.wait(pending)

    def _stop_locally(self, key: str, task: asyncio.Task[None]) -> None:
        """Stop a job because this executor shuts down: it is reported errored, so the server hands
        it to another executor (a rolling restart must not fail jobs for good)."""
        self.handler.stopped_locally[key] = True
        task.cancel("the executor is shutting down")  # the message goes to the log (stopping.py)

    def cancel(self, key: str, why: str) -> None:
        """Cancel the running job `key` (`<id>-<queue>`): its step is stopped and it is reported
        canceled. Only that job: job 7 of another queue is another job."""
        entry = self.running.get(key)
        # Cancel once: every cancel-watch answer and heartbeat repeats the server's cancel, and a second
        # CancelledError during the step's kill grace would cut the grace short.
        if entry is not None and not entry[1].done() and not entry[1].cancelling():
            log.info("job %s: canceling (%s)", key, why)
            entry[1].cancel(f"canceling: {why}")  # the message goes to the job's log (stopping.py)

    def drop(self, key: str) -> None:
        """The server no longer considers the job ours (it is missing from knownIds).

        Sourcegraph's worker removes the id from its running set (workerutil/worker.go, the
        heartbeat loop) and IDSet.Remove calls the job's context cancel func, so its steps stop;
        the job is then no longer "canceled" in its eyes (isJobCanceled needs it in the set) and its
        final mark goes to a server that answers it with 404. corral does the same with the work:
        the job leaves the running set at once (it is never heartbeated again, so its lease is not
        renewed for an attempt the server gave up or gave to another executor), its step is stopped
        and its resources are cleaned up, since its results could no longer be reported. Unlike
        Sourcegraph it sends no mark at all: the server disowned the attempt, and a mark could land
        on a newer attempt of the same job that this executor dequeued meanwhile under the same
        name. Until its cleanup is done it stays in `dropped`, so the janitor leaves it alone."""
        entry = self.running.pop(key, None)
        if entry is None:
            return
        log.warning("job %s: the server no longer considers it ours; dropping it", key)
        self.dropped[key] = entry
        self.handler.disown(key)
        if not entry[1].done() and not entry[1].cancelling():
            entry[1].cancel("the server no longer considers the job this executor's")
        self.jobs_changed.set()

    # -- background loops ---------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            sent = dict(self.running)
            try:
                known, cancel = await self.client.heartbeat([j for j, _t in sent.values()], self.telemetry)
            except CorralError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            except Exception:  # a bug must not stop heartbeats for good (every lease would expire)
                log.exception("heartbeat failed unexpectedly; trying again next interval")
                continue
            # As Sourcegraph's heartbeat loop: first drop what the server does not know, then cancel
            # (a cancel of a dropped job finds nothing to cancel).
            for key, entry in sent.items():
                if key not in known and self.running.get(key) is entry:
                    self.drop(key)
            for key in cancel:
                self.cancel(key, "the server asked")

    async def _cancel_watch_loop(self) -> None:
        while True:
            # cancelWatch is corral's extension; corral's job ids are unique across queues.
            ids = sorted({j.id for j, _t in self.running.values()})
            if not ids:
                self.jobs_changed.clear()
                await self.jobs_changed.wait()
                continue
            self.jobs_changed.clear()
            watch = asyncio.create_task(self.client.cancel_watch(ids, CANCEL_WATCH_WAIT))
            changed = asyncio.create_task(self.jobs_changed.wait())
            done, _ = await asyncio.wait({watch, changed}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                changed.cancel()
                try:
                    canceled = watch.result()
                    for key, (job, _t) in list(self.running.items()):
                        if job.id in canceled:
                            self.cancel(key, "the server asked")
                except CorralError as exc:
                    log.warning("cancel watch failed: %s", exc)
                    await asyncio.sleep(1.0)
                except Exception:  # a bug must not end cancel delivery for good
                    log.exception("cancel watch failed unexpectedly; trying again")
                    await asyncio.sleep(1.0)
            else:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch

    def _live_labels(self) -> set[str]:
        return {f"{j.queue}-{j.id}" for j, _t in (*self.running.values(), *self.dropped.values())}

    async def _janitor_loop(self) -> None:
        while True:
            s = self.settings
            await sweep_once(
                self.handler.runtimes.distinct(),  # e.g. also the CLI steps' cgroups of a docker executor
                self._live_labels,
                workspace_root=s.workspace_root,
                owner=s.vm_prefix,
                keep_workspaces=s.keep_workspaces,
            )
            await asyncio.sleep(self.settings.cleanup_task_interval)
