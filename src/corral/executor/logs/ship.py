"""Shipping one command's output to the server as a log entry.

What is shipped is the entry's `Capture` (capture.py: redacted, decoded, capped, held only until the
server has it); it is sent about every FLUSH_INTERVAL while output flows:
- with the server's `logappend` extension: only new bytes, at a byte offset, at most MAX_SEND per
  request; when the server answers 409 with its own offset, we go on from there (nothing is ever
  sent twice otherwise); bytes the server acknowledged are dropped from memory;
- against a plain Sourcegraph server: the whole output so far with updateExecutionLogEntry.
Sending never blocks the step: `write()` is synchronous and cheap; a background task ships data.

Resuming an entry the server already has (`resume`, after an executor restart: the kubernetes
runtime's reattach; `logappend` only): either the command's output is given again from its start
(`replay`: the kubelet keeps a container's log) and the first `offset` bytes of the redacted stream,
which the server has, are not sent again, or what is written goes after them (the executor's own
notes).

One send at a time, and a send is never cut short: when the step ends while a send is on the wire,
`finish` waits for its answer before it sends the rest (cancelling it would leave the executor not
knowing whether the server applied it, and the same bytes went out again, to be refused with 409).

The cap: the entry never exceeds the smaller of EXECUTOR_LOG_MAX_BYTES and the server's own cap,
which a corral server announces in the X-Corral-Log-Max-Bytes header of its answers
(`QueueClient.log_max_bytes`); the capture keeps head and tail within it and marks the cut. Should
the server still refuse the output as too large (413, e.g. its cap was lowered meanwhile), the rest
of the output is dropped, the entry still gets its exit code, and the job goes on: a big log never
fails a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from corral.errors import CorralError, ServerError, StaleAttempt
from corral.executor.client import QueueClient
from corral.executor.logs.capture import Capture
from corral.executor.redact import Redactor
from corral.protocol import Job, now_rfc3339

FLUSH_INTERVAL = 0.25  # seconds between sends while output flows
MAX_SEND = 1024 * 1024  # bytes of output per request at most
TOO_LARGE = 413  # the server's status for output over its cap

log = logging.getLogger("corral.executor")


def server_cap(client: QueueClient) -> int | None:
    """The server's cap on one entry's output, when it announced one (corral's server does)."""
    cap = getattr(client, "log_max_bytes", None)
    return cap if isinstance(cap, int) and cap > 0 else None


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
        self.append = client.has("logappend")
        self.max_bytes = max_bytes
        self.capture = Capture(redactor, max_bytes=self._cap(), echo=echo, on_data=self._wake.set)
        self.sent = 0  # bytes of the entry the server has
        self.entry_id = 0
        self.start_time = now_rfc3339()
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()  # one send at a time: the pump's or finish's
        self._closed = False
        self.exit_code: int | None = None
        self.on_lost = on_lost  # called when the server says this attempt is no longer live
        self.lost = False  # the server fenced this attempt off: nothing more is sent for it
        self.refused = False  # the server refused more output (413): only the exit code is sent
        self.shift = 0  # the server's offset of the capture's first byte (a resumed entry's)
        self.replay_to: int | None = None  # replay: the capture's bytes before this the server has
        self.resumed = False

    def resume(self, entry_id: int, offset: int, *, replay: bool) -> LogEntry:
        """Continue the server's entry `entry_id`, which holds `offset` bytes, instead of adding one
        (call before entering). replay: what is written is the whole output again, from its start
        (its first `offset` bytes after redaction are not sent again); else it goes after them."""
        self.entry_id, self.sent, self.resumed = entry_id, offset, True
        if replay:
            self.replay_to = offset
        else:
            self.shift = offset
        return self

    def _cap(self) -> int:
        theirs = server_cap(self.client)
        return min(self.max_bytes, theirs) if theirs is not None else self.max_bytes

    async def __aenter__(self) -> LogEntry:
        if not self.resumed:
            self.entry_id = await self.client.add_log_entry(self.job, self.key, self.command, self.start_time)
        self.capture.set_max_bytes(self._cap())  # the add's answer may be the first to name the cap
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
        while not self._closed and not self.lost:
            await self._wake.wait()
            self._wake.clear()
            try:
                async with self._sending:
                    if self._closed or self.lost:
                        return
                    await self._send()
            except StaleAttempt as exc:  # not a resync: this attempt is no longer the job's live one
                log.warning("job %s: the server refused our log (%s); stopping the job", self.job.id, exc)
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost()
                return
            except CorralError as exc:  # the server is away: keep the bytes, try again next round
                log.warning("job %s: log %s not sent yet: %s", self.job.id, self.key, exc)
                self._wake.set()
            await asyncio.sleep(FLUSH_INTERVAL)

    async def _send(self, exit_code: int | None = None, duration_ms: int | None = None) -> None:
        if self.append:
            await self._append(exit_code, duration_ms)
        else:
            await self._update(exit_code, duration_ms)

    async def _append(self, exit_code: int | None, duration_ms: int | None) -> None:
        if self.replay_to is not None:  # a replayed output: skip what the server has once it is here
            if self.capture.end < self.replay_to and not self.capture.finished:
                return
            end = min(self.replay_to, self.capture.end)
            self.capture.ack(end)
            self.shift, self.replay_to = self.replay_to - end, None  # the server had more: go on after it
        while True:
            chunk = b"" if self.refused else self.capture.peek(MAX_SEND)
            last = self.refused or len(chunk) >= self.capture.remaining
            if not chunk and exit_code is None:
                return
            try:
                offset = await self.client.append_log(
                    self.job,
                    self.entry_id,
                    self.sent,
                    chunk.decode("utf-8", "replace"),  # whole characters: cut only between them
                    exit_code if last else None,
                    duration_ms if last else None,
                )
            except StaleAttempt as exc:
                if exc.offset is None or not self.capture.ack(exc.offset - self.shift):
                    raise
                self.sent = exc.offset  # resync: the server tells us what it has
                continue
            except ServerError as exc:
                if exc.status != TOO_LARGE or self.refused:
                    raise
                self._refuse(exc)
                continue
            if not self.capture.ack(offset - self.shift):
                raise StaleAttempt(f"the server's log offset {offset} is not one of ours", offset=None)
            self.sent = offset
            if last:
                return

    async def _update(self, exit_code: int | None, duration_ms: int | None) -> None:
        if exit_code is None and (self.refused or self.sent >= self.capture.end):
            return
        text = self.capture.text()
        shown = text[: self.sent] if self.refused else text
        try:
            await self.client.update_log_entry(
                self.job,
                self.entry_id,
                self.key,
                self.command,
                self.start_time,
                shown.decode("utf-8", "replace"),
                exit_code,
                duration_ms,
            )
        except ServerError as exc:
            if exc.status != TOO_LARGE or self.refused:
                raise
            self._refuse(exc)
            await self._update(exit_code, duration_ms)
            return
        self.sent = len(shown)

    def _refuse(self, exc: ServerError) -> None:
        log.warning(
            "job %s: the server refused more output of log %s (%s); the rest of it is dropped",
            self.job.id,
            self.key,
            exc.message,
        )
        self.refused = True

    async def finish(self, exit_code: int) -> None:
        """Flush everything (with the cut marker and the tail when capped) and set the exit code."""
        self._closed = True
        self.exit_code = exit_code
        try:
            if self._task is not None:
                try:
                    async with self._sending:  # a send on the wire is answered first, never cut short
                        self._task.cancel()
                finally:
                    self._task.cancel()
                    await asyncio.wait({self._task})
            self.capture.finish()
            if self.lost:  # the server refused this attempt: it would refuse the rest too
                return
            duration = int((time.monotonic() - self.started) * 1000)
            async with self._sending:
                await self._send(exit_code, duration)
        finally:
            self.capture.close()
