"""Printing job logs and tables in a terminal (`corral job logs`, `corral batch`, the demo, lists).

Everything a job wrote passes `corral.terminal.clean` first: no escape sequence of a job reaches the
operator's terminal (OSC 52 clipboard writes, titles, cursor moves). `LogPrinter` turns a job's log
events into whole lines: output arrives in chunks that end anywhere, so a line is printed when its
end arrives (or its entry ends); a carriage return overwrites the line as a terminal would (a
progress meter shows its last state once, not one line per update); an entry of a new attempt of
the job is announced ("attempt 1 lost; attempt 2", or "attempt 1 failed (setup.git.fetch exit 128);
attempt 2" when it errored and was retried).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

import typer

from corral.protocol import EntryEvent, ExitEvent, LogEvent, OutputEvent, StateEvent
from corral.terminal import clean

__all__ = ["MAX_LINE", "LogPrinter", "local_time", "table"]

MAX_LINE = 64 * 1024  # characters of a line held back waiting for its end; longer ones are cut
COMMAND_WIDTH = 100  # characters of an entry's command shown in its header


class LogPrinter:
    """Prints one job's log events as lines, each after `prefix`.

    raw: print output exactly (control sequences included, no line handling).
    quiet_setup: `setup.*` entries (the clone: git's chatter) make one summary line when they
    succeed ("✓ setup: git init, fetch, checkout (120 ms)"); a failing one is printed whole.
    """

    def __init__(
        self, prefix: str = "", *, raw: bool = False, quiet_setup: bool = False, out: TextIO | None = None
    ) -> None:
        self.prefix, self.raw, self.quiet_setup = prefix, raw, quiet_setup
        self.out = out
        self.keys: dict[int, str] = {}
        self.pending: dict[int, str] = {}  # entry -> the start of a line whose end has not come yet
        self.held: dict[int, list[str]] = {}  # entry -> lines of a quiet setup entry
        self.setup_done: list[tuple[str, int]] = []  # quiet setup entries that succeeded, and their ms
        self.attempt: int | None = None
        self.raw_open = False  # raw output written last did not end its line
        self.last: tuple[str, int | None] | None = None  # the latest entry and its exit code

    # -- events -------------------------------------------------------------------------------------
    def event(self, ev: LogEvent) -> None:
        if isinstance(ev, EntryEvent):
            self._entry(ev)
        elif isinstance(ev, OutputEvent):
            self._output(ev.entry_id, ev.data)
        elif isinstance(ev, ExitEvent):
            self._exit(ev)
        elif isinstance(ev, StateEvent):
            self.close()
            self._setup_summary()
            ok = ev.state == "completed"
            err = f": {clean(ev.error)}" if ev.error and ev.error != ev.state else ""
            self._say(f"● job {ev.state}{err}", typer.colors.GREEN if ok else typer.colors.RED, bold=True)

    def close(self) -> None:
        """Print what is still held (lines without their end)."""
        for eid in list(self.pending):
            self._flush(eid)

    def _entry(self, ev: EntryEvent) -> None:
        key = self._text(ev.key)
        if ev.attempt is not None:
            if self.attempt is not None and ev.attempt > self.attempt:
                self._say(f"↻ {self._how_it_ended()}; attempt {ev.attempt}", typer.colors.YELLOW, bold=True)
            self.attempt = ev.attempt if self.attempt is None else max(self.attempt, ev.attempt)
        self.last = (key, None)
        self.keys[ev.entry_id] = key
        cmd = self._text(" ".join(ev.command or []))
        if len(cmd) > COMMAND_WIDTH:
            cmd = cmd[: COMMAND_WIDTH - 1] + "…"
        head = f"▶ {key}" + (f"  $ {cmd}" if cmd else "")
        if self._quiet(key):
            self.held[ev.entry_id] = [head]
            return
        self._setup_summary()
        self._say(head, typer.colors.CYAN)

    def _output(self, eid: int, data: str) -> None:
        if self.raw:
            self._write(data)
            return
        text = self.pending.pop(eid, "") + data
        *lines, rest = text.split("\n")
        for line in lines:
            self._line(eid, line)
        while len(rest) > MAX_LINE:
            self._line(eid, rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self.pending[eid] = rest

    def _exit(self, ev: ExitEvent) -> None:
        self._flush(ev.entry_id)
        key = self.keys.get(ev.entry_id, "")
        if self.last is not None and self.last[0] == key:
            self.last = (key, ev.exit_code)
        held = self.held.pop(ev.entry_id, [])
        if self._quiet(key):
            if ev.exit_code == 0:
                self.setup_done.append((key, ev.duration_ms or 0))
                return
            self._setup_summary()
            if held:  # a quiet entry that failed: now its output matters
                self._say(held[0], typer.colors.CYAN)
            for line in held[1:]:
                self._say(f"  {line}")
        if ev.exit_code is None:
            self._say("  ⏹ ended without an exit code", typer.colors.YELLOW)
            return
        color = typer.colors.GREEN if ev.exit_code == 0 else typer.colors.RED
        self._say(f"  ⏹ exit {ev.exit_code} ({ev.duration_ms or 0} ms)", color)

    def _flush(self, eid: int) -> None:
        rest = self.pending.pop(eid, "")
        if rest:
            self._line(eid, rest)

    def _line(self, eid: int, line: str) -> None:
        line = self._text(overwritten(line))
        if self._quiet(self.keys.get(eid, "")):
            self.held.setdefault(eid, []).append(line)
            return
        self._say(f"  {line}")

    def _how_it_ended(self) -> str:
        """How the previous attempt ended, as its last entry tells: cut off (no exit code: the
        executor went away) or failed (a non-zero exit: errored, and retried)."""
        if self.last is not None and self.last[1] not in (None, 0):
            return f"attempt {self.attempt} failed ({self.last[0]} exit {self.last[1]})"
        return f"attempt {self.attempt} lost"

    def _quiet(self, key: str) -> bool:
        return self.quiet_setup and key.startswith("setup.")

    def _setup_summary(self) -> None:
        if not self.setup_done:
            return
        steps, group = [], None
        for key, _ms in self.setup_done:  # setup.git.init, setup.git.fetch -> git init, fetch
            head, _, rest = key.removeprefix("setup.").partition(".")
            steps.append(rest if head == group and rest else f"{head} {rest}".strip())
            group = head
        ms = sum(ms for _k, ms in self.setup_done)
        self.setup_done = []
        self._say(f"✓ setup: {', '.join(steps)} ({ms} ms)", typer.colors.CYAN)

    # -- output ----------------------------------------------------------------------------------
    def _text(self, text: str) -> str:
        return text if self.raw else clean(text)

    def _say(self, text: str, color: str | None = None, *, bold: bool = False) -> None:
        if self.raw_open:
            self._write("\n")
        line = typer.style(self.prefix, fg=typer.colors.MAGENTA) + typer.style(text, fg=color, bold=bold)
        typer.echo(line, file=self.out)

    def _write(self, data: str) -> None:
        out = self.out or sys.stdout
        out.write(data)  # exactly as the job wrote it (click's echo would strip colour codes)
        out.flush()
        if data:
            self.raw_open = not data.endswith("\n")


def overwritten(line: str) -> str:
    """What a terminal shows of a line with carriage returns: the text after the last one (a
    trailing one, from a CRLF line end, is just removed), without the trailing blanks a progress
    meter pads its updates with (invisible on a terminal anyway)."""
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1].rstrip(" \t")


def local_time(iso: str | None) -> str:
    """An API timestamp (RFC 3339, UTC) in local time, to the second; "-" for none."""
    if not iso:
        return "-"
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return clean(iso)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, out: TextIO | None = None) -> None:
    """Columns as wide as their widest cell; the last one is not padded."""
    cells = [list(header), *[[clean(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        text = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)) + "  " + r[-1]
        typer.secho(text.rstrip(), bold=n == 0, file=out)
