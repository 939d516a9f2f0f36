"""Capturing one command's output for its log entry: redact, decode, cap. No I/O.

Bytes from the runtime are redacted (streaming, so a secret split across two reads is still caught),
decoded as UTF-8 incrementally (a character split across reads is kept whole), and capped: the head
(max_bytes / 2) is kept as it comes, then a bounded tail; at the end the cut is marked and the tail
appended. `text` grows only at its end, so a shipper sends it by offset.
"""

from __future__ import annotations

import codecs
import contextlib
from collections import deque
from collections.abc import Callable

from corral.executor.redact import Redactor

__all__ = ["Capture", "char_boundary"]


class Capture:
    def __init__(
        self,
        redactor: Redactor,
        *,
        max_bytes: int,
        echo: bool = False,
        on_data: Callable[[], None] | None = None,
    ) -> None:
        self.redact = redactor.stream()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.head_cap = max_bytes // 2
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.omitted = 0
        self.text = bytearray()  # everything produced so far (redacted, capped, UTF-8)
        self.echo = echo
        self.on_data = on_data  # called when text (or the tail) grew

    def write(self, data: bytes) -> None:
        """Raw output bytes from the runtime."""
        self._add(self.redact.feed(data))

    def _add(self, raw: bytes, final: bool = False) -> None:
        text = self.decoder.decode(raw, final=final).encode()
        if not text:
            return
        shown = text
        room = self.head_cap - len(self.text) if not self.omitted and not self.tail else 0
        if room > 0:
            cut = char_boundary(text, min(room, len(text)))
            self.text += text[:cut]
            text = text[cut:]
        if text:  # past the head: keep a bounded tail, trimmed at character boundaries
            self.tail.append(text)
            self.tail_len += len(text)
            while self.tail_len > self.head_cap:
                first = self.tail[0]
                drop = char_boundary(first, min(len(first), self.tail_len - self.head_cap))
                if drop == 0:  # a single character straddles the cap: keep it
                    break
                self.tail[0] = first[drop:]
                if not self.tail[0]:
                    self.tail.popleft()
                self.tail_len -= drop
                self.omitted += drop
        if self.echo:
            with contextlib.suppress(Exception):
                print(shown.decode("utf-8", "replace"), end="", flush=True)
        if self.on_data is not None:
            self.on_data()

    def finish(self) -> None:
        """The end of the output: flush the redactor and the decoder, mark the cut, append the tail."""
        self._add(self.redact.flush(), final=True)
        if self.omitted:
            self.text += f"\n[corral] ... {self.omitted} bytes of output omitted ...\n".encode()
        while self.tail:
            self.text += self.tail.popleft()


def char_boundary(data: bytes | bytearray, cut: int) -> int:
    """`cut` moved back so that it does not split a UTF-8 character (valid UTF-8 assumed)."""
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut
