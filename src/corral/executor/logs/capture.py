"""Capturing one command's output for its log entry: redact, decode, cap, spool. No network I/O.

Bytes from the runtime are redacted (streaming, so a secret split across two reads is still caught)
and decoded as UTF-8 incrementally (a character split across reads is kept whole). The entry's
output is then one byte stream, never more than `max_bytes` in all (the marker included):

    head        the first `head_cap` bytes: available to send as they come
    marker      "[corral] ... N bytes of output omitted ..." on a line of its own, when something
                was cut (when the output fits, the tail is simply the rest, unmarked)
    tail        the last `tail_cap` bytes: available once the output ended (`finish`)

Nothing is cut inside a UTF-8 character.

Memory stays flat in the output's size: the head is appended to a spooled temporary file and the
tail is a ring of `tail_cap` bytes in another (each in memory up to SPOOL_IN_MEMORY bytes, then on
disk, unlinked, private to the executor), so a step printing 200 MiB costs the executor no more
memory than one printing 2 MiB, however fast it prints and however long the server is away.

The shipper reads the stream by offset: `peek(n)` gives the bytes at `base` (cut between
characters), `ack(offset)` moves `base` on once the server has them, `remaining` is what is left;
`text()` is all of it (for Sourcegraph's protocol, which resends the whole output each time).
"""

from __future__ import annotations

import codecs
import contextlib
import tempfile
from collections.abc import Callable

from corral.executor.redact import Redactor

__all__ = ["MARKER_RESERVE", "SPOOL_IN_MEMORY", "Capture", "caps", "char_boundary", "cut_marker"]

MARKER_RESERVE = 96  # bytes of the cap kept for the cut marker (which is about 50 bytes)
SPOOL_IN_MEMORY = 256 * 1024  # bytes of head (and of tail) kept in memory before spooling to disk
MAX_CHAR = 4  # bytes of the longest UTF-8 character


def cut_marker(omitted: int) -> bytes:
    """The line that marks the cut, between the head and the tail."""
    return f"\n[corral] ... {omitted} bytes of output omitted ...\n".encode()


def caps(max_bytes: int) -> tuple[int, int]:
    """(head_cap, tail_cap) of an entry of at most `max_bytes` bytes, the marker included."""
    room = max_bytes - MARKER_RESERVE if max_bytes >= 2 * MARKER_RESERVE else max_bytes // 2
    head = max(0, room) // 2
    return head, max(0, room) - head


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
        self.max_bytes = max_bytes
        self.head_cap, self.tail_cap = caps(max_bytes)
        self.echo = echo
        self.on_data = on_data  # called when there is more to send
        self.produced = 0  # bytes of output seen (after redaction and decoding)
        self.base = 0  # the stream's bytes before `base` are acknowledged (the server has them)
        self.finished = False
        self.omitted = 0
        self._head: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.head_len = 0
        self._head_open = True  # false once something went past the head
        self._ring: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.ring_written = 0  # bytes that went into the ring in all (the ring keeps tail_cap)
        self._marker = b""
        self._tail: list[tuple[int, int]] = []  # after finish: (ring position, length) in order

    def set_max_bytes(self, max_bytes: int) -> None:
        """Lower the cap (the server's may be lower than ours); only before any output was seen."""
        if self.produced == 0 and max_bytes < self.max_bytes:
            self.max_bytes = max_bytes
            self.head_cap, self.tail_cap = caps(max_bytes)

    # -- input -------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Raw output bytes from the runtime."""
        self._add(self.redact.feed(data))

    def _add(self, raw: bytes, final: bool = False) -> None:
        text = self.decoder.decode(raw, final=final).encode()
        if not text:
            return
        self.produced += len(text)
        rest = text
        if self._head_open:
            room = self.head_cap - self.head_len
            cut = char_boundary(text, min(room, len(text)))
            if cut:
                self._head = self._append(self._head, self.head_len, text[:cut])
                self.head_len += cut
                rest = text[cut:]
            if rest:
                self._head_open = False  # past the head (or a character did not fit): the tail starts
        if rest:
            self._to_ring(rest)
        if self.echo:
            with contextlib.suppress(Exception):
                print(text.decode("utf-8", "replace"), end="", flush=True)
        if self.on_data is not None and len(rest) < len(text):
            self.on_data()

    @staticmethod
    def _append(
        spool: tempfile.SpooledTemporaryFile[bytes] | None, at: int, data: bytes
    ) -> tempfile.SpooledTemporaryFile[bytes]:
        if spool is None:
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        spool.seek(at)
        spool.write(data)
        return spool

    def _to_ring(self, data: bytes) -> None:
        cap = self.tail_cap
        if cap <= 0:
            self.ring_written += len(data)
            return
        if len(data) > cap:  # only its last `cap` bytes can stay
            self.ring_written += len(data) - cap
            data = data[-cap:]
        pos = self.ring_written % cap
        first = min(len(data), cap - pos)
        self._ring = self._append(self._ring, pos, data[:first])
        if first < len(data):
            self._ring = self._append(self._ring, 0, data[first:])
        self.ring_written += len(data)

    def finish(self) -> None:
        """The end of the output: flush the redactor and the decoder; the marker (when something was
        cut) and the tail become part of the stream. Idempotent."""
        if self.finished:
            return
        self._add(self.redact.flush(), final=True)
        self.finished = True
        kept = min(self.ring_written, self.tail_cap)
        skip = 0
        if kept:
            start = (self.ring_written - kept) % self.tail_cap
            self._tail = [(start, min(kept, self.tail_cap - start))]
            if self._tail[0][1] < kept:
                self._tail.append((0, kept - self._tail[0][1]))
            if self.ring_written > self.tail_cap:
                # the oldest byte kept may continue a character whose start was overwritten
                skip = _continuation_bytes(self._read_ring(self._tail[0][0], min(MAX_CHAR, kept)))
                self._tail = _advance(self._tail, skip)
        self.omitted = self.ring_written - kept + skip
        if self.omitted:
            self._marker = cut_marker(self.omitted)
        if self.on_data is not None:
            self.on_data()

    # -- the stream, by offset ---------------------------------------------------------------------
    @property
    def end(self) -> int:
        """The offset just past the bytes available now."""
        if not self.finished:
            return self.head_len
        return self.head_len + len(self._marker) + sum(n for _, n in self._tail)

    @property
    def remaining(self) -> int:
        """Bytes from `base` to `end`: what is still to send."""
        return self.end - self.base

    def peek(self, n: int) -> bytes:
        """Up to `n` bytes at `base`, ending between two characters."""
        data = self._read(self.base, n + MAX_CHAR)  # the bytes after n show where a character starts
        return data[: char_boundary(data, min(n, len(data)))]

    def ack(self, offset: int) -> bool:
        """The server has every byte before `offset`. False (and nothing changes) when `offset` is
        before `base` (bytes it had acknowledged already) or past `end`."""
        if not self.base <= offset <= self.end:
            return False
        self.base = offset
        return True

    def text(self) -> bytes:
        """The whole stream so far, from offset 0 (at most `max_bytes`)."""
        return self._read(0, self.end)

    def close(self) -> None:
        """Drop the spools (idempotent); the stream cannot be read afterwards."""
        for spool in (self._head, self._ring):
            if spool is not None:
                spool.close()
        self._head = self._ring = None

    def _read(self, start: int, n: int) -> bytes:
        """Up to `n` bytes of the stream from `start` (head, marker, tail)."""
        out = bytearray()
        if start < self.head_len and self._head is not None:
            self._head.seek(start)
            out += self._head.read(min(n, self.head_len - start))
        if not self.finished or len(out) >= n:
            return bytes(out)
        pos = max(0, start - self.head_len)  # offset within marker + tail
        if pos < len(self._marker):
            out += self._marker[pos : pos + n - len(out)]
        pos = max(0, pos - len(self._marker))  # offset within the tail
        for ring_pos, length in self._tail:
            if len(out) >= n:
                break
            if pos >= length:
                pos -= length
                continue
            out += self._read_ring(ring_pos + pos, min(length - pos, n - len(out)))
            pos = 0
        return bytes(out)

    def _read_ring(self, pos: int, n: int) -> bytes:
        assert self._ring is not None
        self._ring.seek(pos)
        return self._ring.read(n)


def _continuation_bytes(data: bytes) -> int:
    """How many bytes at the start of `data` continue a character (10xxxxxx)."""
    n = 0
    while n < len(data) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def _advance(segments: list[tuple[int, int]], skip: int) -> list[tuple[int, int]]:
    """`segments` without their first `skip` bytes."""
    out = []
    for pos, length in segments:
        if skip >= length:
            skip -= length
            continue
        out.append((pos + skip, length - skip))
        skip = 0
    return out


def char_boundary(data: bytes | bytearray, cut: int) -> int:
    """`cut` moved back so that it does not split a UTF-8 character (valid UTF-8 assumed)."""
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut
