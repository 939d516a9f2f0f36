"""Shipping one command's output to the server as a log entry.

What is shipped is the entry's `Capture` (capture.py: redacted, decoded, capped); it is sent about
every FLUSH_INTERVAL while output flows:
- with the server's `logappend` extension: only new bytes, at a byte offset; when the server answers
  409 with its own offset, we resend from there (nothing is ever sent twice otherwise);
- against a plain Sourcegraph server: the whole output so far with updateExecutionLogEntry.
Sending never blocks the step: `write()` is synchronous and cheap; a background task ships data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from corral.errors import CorralError, StaleAttempt
from corral.executor.client import QueueClient
from corral.executor.logs.capture import Capture, char_boundary
from corral.executor.redact import Redactor
from corral.protocol import Job, now_rfc3339

FLUSH_INTERVAL = 0.25  # seconds between sends while output flows
MAX_SEND = 1024 * 1024  # bytes of output per request at most

log = logging.getLogger("corral.executor")


class LogEntry:
    def __init__(
        self,
        client: QueueClient,
        job: Job,
        key: str,
        command: list[str],
        redactor: Redactor,
        *,
        max_bytes: int,
        echo: bool = False,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.client, self.job = client, job
        self.key = redactor.redact_text(key)  # a step key is the producer's text, like the command
        self.command = [redactor.redact_text(c) for c in command]
        self._wake = asyncio.Event()
        self.capture = Capture(redactor, max_bytes=max_bytes, echo=echo, on_data=self._wake.set)
        self.text = self.capture.text  # the same buffer: grows at its end only
        self.sent = 0  # bytes of self.text the server has
        self.entry_id = 0
        self.start_time = now_rfc3339()
        self.started = time.monotonic()
        self.append = client.has("logappend")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.exit_code: int | None = None
        self.on_lost = on_lost  # called when the server says this attempt is no longer live
        self.lost = False  # the server fenced this attempt off: nothing more is sent for it

    async def __aenter__(self) -> LogEntry:
        self.entry_id = await self.client.add_log_entry(self.job, self.key, self.command, self.start_time)
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A step that raised (canceled, runtime error) still gets its output shipped, with exit -1.
        if not self._closed:
            await self.finish(self.exit_code if self.exit_code is not None else -1)

    def write(self, data: bytes) -> None:
        """Called by the runtime with raw output bytes."""
        self.capture.write(data)

    def note(self, message: str) -> None:
        """A line of corral's own in this entry's output (e.g. why a step could not run)."""
        self.write(f"[corral] {message}\n".encode())

    async def _pump(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send()
            except StaleAttempt as exc:  # not a resync: this attempt is no longer the job's live one
                log.warning("job %s: the server refused our log (%s); stopping the job", self.job.id, exc)
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost()
                return
            except CorralError as exc:  # the server is away: keep the bytes, try again next round
                log.warning("job %s: log %s not sent yet: %s", self.job.id, self.key, exc)
            await asyncio.sleep(FLUSH_INTERVAL)

    async def _send(self, exit_code: int | None = None, duration_ms: int | None = None) -> None:
        if self.append:
            while True:
                end = self.sent + char_boundary(
                    self.text[self.sent :], min(MAX_SEND, len(self.text) - self.sent)
                )
                chunk = bytes(self.text[self.sent : end])
                last = self.sent + len(chunk) >= len(self.text)
                if not chunk and exit_code is None:
                    return
                try:
                    self.sent = await self.client.append_log(
                        self.job,
                        self.entry_id,
                        self.sent,
                        chunk.decode("utf-8", "replace"),
                        exit_code if last else None,
                        duration_ms if last else None,
                    )
                except StaleAttempt as exc:
                    if exc.offset is None or exc.offset > len(self.text):
                        raise
                    self.sent = exc.offset  # resync: the server tells us what it has
                    continue
                if last:
                    return
        elif exit_code is not None or self.sent < len(self.text):
            await self.client.update_log_entry(
                self.job,
                self.entry_id,
                self.key,
                self.command,
                self.start_time,
                self.text.decode("utf-8", "replace"),
                exit_code,
                duration_ms,
            )
            self.sent = len(self.text)

    async def finish(self, exit_code: int) -> None:
        """Flush everything (with the cut marker and the tail when capped) and set the exit code."""
        self._closed = True
        self.exit_code = exit_code
        if self._task is not None:
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.capture.finish()
        if self.lost:  # the server refused this attempt: it would refuse the rest too
            return
        duration = int((time.monotonic() - self.started) * 1000)
        await self._send(exit_code, duration)

    def output(self) -> str:
        return self.text.decode("utf-8", "replace")
