"""The VM's console stream: a step's output with init's control lines in it.

The guest writes everything to one virtio console (hvc0, kept in raw mode by init): the steps'
output (through a pipe, so a step never holds the tty) and init's control lines,
``\\x1ecorral-<nonce>:<event>\\n``. One stream keeps them in order: a step's last bytes always come
before its "end" line, which two channels could not promise. The nonce is new for each VM and known
to the host and to init only (see guest/init.sh), so output that imitates a control line is output.
Until its job is known a VM marks its lines with BOOT_NONCE (only init and the kernel run then); the
host's `go` line hands init the job's nonce, and the parser is `rekey`ed to it at the same moment.

`ConsoleParser.feed` splits the stream: bytes go out as soon as they cannot be the start of a
control line (a partial line is not held back), control lines come out as `Control` events.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

__all__ = ["BOOT_NONCE", "MAX_CONTROL_LINE", "ConsoleParser", "Control", "Output", "new_nonce"]

MAX_CONTROL_LINE = 4096  # bytes: a longer "control line" is not one (output, passed on)
BOOT_NONCE = "boot"  # init's marker before its job's `go` line (no step has run yet)


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Output:
    data: bytes


@dataclass(frozen=True)
class Control:
    event: str  # e.g. "ready", "start 0", "end 0 1 0", "error ...", "done"

    @property
    def words(self) -> list[str]:
        return self.event.split()


class ConsoleParser:
    def __init__(self, nonce: str) -> None:
        self.marker = b"\x1ecorral-" + nonce.encode() + b":"
        self._buf = b""

    def rekey(self, nonce: str) -> None:
        """Control lines carry `nonce` from now on (the boot marker's are output from here)."""
        self.marker = b"\x1ecorral-" + nonce.encode() + b":"

    def feed(self, data: bytes) -> list[Output | Control]:
        self._buf += data
        events: list[Output | Control] = []
        while True:
            at = self._buf.find(self.marker)
            if at == -1:
                keep = self._partial_marker_len()
                out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                if out:
                    events.append(Output(out))
                return events
            if at:
                events.append(Output(self._buf[:at]))
                self._buf = self._buf[at:]
            end = self._buf.find(b"\n", len(self.marker))
            if end == -1:
                if len(self._buf) > len(self.marker) + MAX_CONTROL_LINE:
                    events.append(Output(self._buf))  # not a control line after all
                    self._buf = b""
                return events
            line = self._buf[len(self.marker) : end]
            self._buf = self._buf[end + 1 :]
            events.append(Control(line.decode(errors="replace").strip()))

    def flush(self) -> list[Output | Control]:
        """What is left at the end of the stream (a partial marker is output)."""
        rest, self._buf = self._buf, b""
        return [Output(rest)] if rest else []

    def _partial_marker_len(self) -> int:
        """Length of the longest tail of the buffer that is a prefix of the marker."""
        for n in range(min(len(self.marker) - 1, len(self._buf)), 0, -1):
            if self._buf.endswith(self.marker[:n]):
                return n
        return 0
