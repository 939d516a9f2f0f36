"""Why a running step is being stopped, said in the job's log; and the job deadline that says so.

A step is stopped by cancelling the task that runs it (runtimes/base.py, "Cancellation"). Whoever
cancels names the reason in the cancel message, `task.cancel(msg)`: the worker for a cancel from the
server ("canceling: the server asked") or for a shutdown, `deadline` for the job's time limit
("timeout after 5s"). The runtime that stops the step writes `note(exc, grace)` into the step's
output before it signals anything, so the log shows what happened and when SIGKILL follows:

    [corral] timeout after 5s: sending SIGTERM, then SIGKILL after 10s

`LineSink` wraps a step's output sink to know whether that note needs a newline in front of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.executor.runtimes.base import OutputSink
from corral.units import format_duration

__all__ = ["DEFAULT_REASON", "LineSink", "deadline", "note", "reason"]

DEFAULT_REASON = "canceling"  # a cancel that names no reason (e.g. a test, a library)
MAX_REASON = 300  # characters of a cancel message shown in the log


def reason(exc: BaseException) -> str:
    """The cancel message of `exc` (a CancelledError), one line, bounded; DEFAULT_REASON if none."""
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    msg = " ".join(msg.split())[:MAX_REASON]
    return msg or DEFAULT_REASON


def note(exc: BaseException, grace: float) -> str:
    """The log line a runtime writes when it starts stopping a step (without the "[corral] ")."""
    if grace <= 0:
        return f"{reason(exc)}: sending SIGKILL"
    return f"{reason(exc)}: sending SIGTERM, then SIGKILL after {format_duration(grace)}"


class LineSink:
    """An OutputSink that remembers whether the output so far ends a line, so that a note of
    corral's own (`say`) starts on a line of its own."""

    def __init__(self, output: OutputSink) -> None:
        self.output = output
        self.at_line_start = True

    def __call__(self, data: bytes) -> None:
        if data:
            self.at_line_start = data.endswith(b"\n")
        self.output(data)

    def say(self, text: str) -> None:
        self(("" if self.at_line_start else "\n").encode() + f"[corral] {text}\n".encode())


@asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Like `asyncio.timeout(seconds)` (TimeoutError at the end when the time ran out), but the
    cancel carries the message "timeout after <seconds>", which the runtime writes to the log."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside a task
        raise RuntimeError("deadline() must be used inside a task")
    base = task.cancelling()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel(f"timeout after {format_duration(seconds)}")

    handle = asyncio.get_running_loop().call_later(max(0.0, seconds), expire)
    try:
        yield
    except asyncio.CancelledError:
        # Ours (and nobody else's cancel pending): the time ran out. Otherwise someone else canceled.
        if fired and task.uncancel() <= base:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()
