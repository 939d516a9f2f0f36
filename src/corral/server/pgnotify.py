"""Wake-ups across server replicas on PostgreSQL: LISTEN/NOTIFY feeding the in-process Notifier.

Every replica listens on one channel. An enqueue (or a cancel, or a requeue) on any replica sends
`NOTIFY corral_wake, '<key>'`; each replica then wakes its own long-polls for that key, so a job
submitted on replica A starts at once on an executor long-polling replica B. Without it, other
replicas would see the job at their next recheck (1 s).
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from sqlalchemy import Engine, text

from corral.server.notify import Notifier

log = logging.getLogger("corral.server")
CHANNEL = "corral_wake"
RECONNECT_MAX = 10.0  # seconds between reconnects at most


def publish(engine: Engine, key: str) -> None:
    """Tell every replica (this one too) to wake the waiters on `key`."""
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_notify(:channel, :key)"), {"channel": CHANNEL, "key": key})


async def listen(engine: Engine, notifier: Notifier, ready: asyncio.Event | None = None) -> None:
    """Relay notifications to `notifier` until cancelled; reconnects after errors."""
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    backoff = 0.5
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                backoff = 0.5
                if ready is not None:
                    ready.set()
                async for n in conn.notifies():
                    # One job wakes one waiter; a cancel wakes its executor's watch.
                    notifier.notify(n.payload, wake=None if n.payload.startswith("cancel:") else 1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("LISTEN %s lost (%s); reconnecting in %.1fs", CHANNEL, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)
