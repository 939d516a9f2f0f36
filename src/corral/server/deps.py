"""What every route needs: the server's state (settings, store, notifier, metrics) and ApiError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, Request

from corral.server.metrics import Metrics
from corral.server.notify import Notifier
from corral.server.settings import ServerSettings
from corral.server.store.store import Store


class ApiError(Exception):
    """An HTTP error with a message for the caller: rendered as {"error": message} (+ extra fields)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    notifier: Notifier = field(default_factory=Notifier)
    metrics: Metrics = field(default_factory=Metrics)
    known_queues: set[str] = field(default_factory=set)  # queues are never deleted: cache the yeses

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store call. Embedded SQLite answers in well under a millisecond and takes one writer
        at a time anyway, so it runs inline (no thread hop per request); a networked database runs in
        a worker thread so that the event loop never waits on the network."""
        if self.store.sqlite:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def wake(self, key: str, *, wake: int | None = None) -> None:
        """Wake long-polls waiting on `key` (a queue, or cancel:<executor>): here, and on PostgreSQL
        in every replica (through NOTIFY; this replica hears it too)."""
        if self.store.sqlite:
            self.notifier.notify(key, wake=wake)
            return
        from corral.server import pgnotify

        await asyncio.to_thread(pgnotify.publish, self.store.engine, key)

    async def require_queue(self, queue: str) -> None:
        if queue in self.known_queues:
            return
        if not await self.db(self.store.queue_exists, queue):
            raise ApiError(404, f"unknown queue {queue!r}")
        self.known_queues.add(queue)


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.corral
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
