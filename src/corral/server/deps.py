"""What every route needs: the server's state (settings, store, notifier, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request

from corral.errors import NotFound
from corral.protocol import QUEUE_NAME_RE
from corral.server.metrics import Metrics
from corral.server.notify import Notifier
from corral.server.secretbox import Keyring
from corral.server.settings import ServerSettings
from corral.server.store import Store, log_key

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    notifier: Notifier = field(default_factory=Notifier)
    metrics: Metrics = field(default_factory=Metrics)
    known_queues: set[str] = field(default_factory=set)  # queues are never deleted: cache the yeses
    keyring: Keyring | None = None  # the executor secrets' keys (corral.server.secretbox)

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store call: inline when the store answers without network I/O in well under a
        millisecond (embedded SQLite, one writer at a time anyway: no thread hop per request), else
        in a worker thread so that the event loop never waits on the network."""
        if self.store.inline:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def wake(self, key: str, *, wake: int | None = None) -> None:
        """Wake long-polls waiting on `key` (a queue, cancel:<executor>, log:<job>): here, and when
        replicas share the store in every one of them (through the store; this replica hears it too)."""
        if self.store.shared:
            await asyncio.to_thread(self.store.publish, key)
            return
        self.notifier.notify(key, wake=wake)

    def log_written(self, job_id: int) -> None:
        """Wake the followers of a job's log after a write. A shared store announced the write to
        every replica (this one too) in the write's own transaction; otherwise wake them here."""
        if not self.store.shared:
            self.notifier.notify(log_key(job_id))

    def heard(self, key: str) -> None:
        """A wake-up from another replica (or this one, through the store): one job wakes one
        dequeue; a cancel or a log write wakes everyone watching."""
        self.notifier.notify(key, wake=None if ":" in key else 1)

    async def require_queue(self, queue: str) -> None:
        if queue in self.known_queues:
            return
        # An executor may wait on a queue before anything was submitted to it (queues are made by
        # their first job): a well-formed name is served (empty until then), a malformed one refused.
        if not QUEUE_NAME_RE.match(queue):
            raise NotFound(f"unknown queue {queue!r}: queue names are 1-64 characters of [a-z0-9_-]")
        if await self.db(self.store.queue_exists, queue):  # cache only real ones: the set stays bounded
            self.known_queues.add(queue)


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.corral
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
