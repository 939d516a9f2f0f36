"""In-process wake-ups for long-polls: enqueue wakes dequeue waiters, cancel wakes cancel watchers.

Waiters register *before* they look at the store, so a notification between the look and the wait
is never lost. (Several server replicas on PostgreSQL would add LISTEN/NOTIFY behind this class.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.closed = False  # the server is stopping: long-polls answer at once

    def waiting(self) -> int:
        """How many requests are parked (each counted once, whatever keys it waits on)."""
        return len({id(f) for futs in self._waiters.values() for f in futs if not f.done()})

    def close(self) -> None:
        """Wake every waiter for good (server shutdown): held requests end instead of being cut."""
        self.closed = True
        for key in list(self._waiters):
            self.notify(key)

    def register(self, keys: Iterable[str]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_result(None)
            return fut
        for k in keys:
            self._waiters.setdefault(k, set()).add(fut)
        return fut

    def unregister(self, keys: Iterable[str], fut: asyncio.Future[None]) -> None:
        for k in keys:
            s = self._waiters.get(k)
            if s is not None:
                s.discard(fut)
                if not s:
                    del self._waiters[k]
        if not fut.done():
            fut.cancel()

    def notify(self, key: str, *, wake: int | None = None) -> None:
        """Wake the waiters on `key`: all of them, or at most `wake` (one job wakes one executor;
        the others would only run a dequeue that finds nothing)."""
        waiters = self._waiters.get(key)
        if not waiters:
            return
        woken = 0
        for fut in list(waiters):
            waiters.discard(fut)
            if not fut.done():
                fut.set_result(None)
                woken += 1
                if wake is not None and woken >= wake:
                    break
        if not waiters:
            self._waiters.pop(key, None)

    async def wait(self, fut: asyncio.Future[None], timeout: float) -> bool:
        """True when woken, False on timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
