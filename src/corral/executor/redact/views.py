"""Normalised views of an output stream, each mapped back to the original bytes.

A view turns output into a byte string in which the forms of a secret that a careless step prints
become fixed patterns again; a match in the view is mapped back (`Layout.span`) to the original bytes
it came from, which are then replaced. Three views:

`Squeeze`: whitespace deleted: base64 wrapped at any width (`base64` at 76 columns, PEM and openssl at
    64, CRLF line ends, indentation), a value printed one character per line (`fold -w1`), a PEM key
    printed with other line ends. A run of more than `GAP` whitespace bytes is kept (patterns never
    contain whitespace, so it ends any match): a secret split by long blank space is not joined, and the
    bytes a stream must hold back stay bounded.
`Unescape`: escapes decoded: `%XX` (any case, any mix with plain characters), JSON and JavaScript
    `\\uXXXX` (surrogate pairs too) and `\\n`-style escapes, `\\xXX`, octal `\\NNN`, and a backslash before
    any other punctuation or space (`printf %q`, `$'...'`, JSON's `\\/` and `\\"`). Only matches that
    contain at least one decoded escape count (the others are the squeezed view's), so output without
    `%` or `\\` is not scanned in this view at all.
`Hex`: the hex digits of the output, lower-cased, with separators dropped (spaces, `:`, `,`, `0x` and
    `\\x` prefixes, line breaks) and, on hex-dump lines (`xxd`, `hexdump -C`, `od -x`, `od -tx1`, any
    line that starts with an offset column followed by hex groups), the offset and the character column
    skipped. The character column of every dump line a match touches is redacted too. More than
    `HEX_GAP` separator bytes in a row end any match (and bound the hold-back).

Every transform is streaming-exact: `transform(data, line_start, final)` reports in `done` how much of
`data` it has turned into view bytes that more input cannot change (the rest is pending: an escape that
may be incomplete, a line that may still become a dump line, a `0` that may start `0x`), and `restart`
names a position from which transforming again gives the same view as transforming from the start.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import compress
from typing import Protocol

__all__ = [
    "GAP",
    "HEX_GAP",
    "MAX_DUMP_LINE",
    "TOKEN_MAX",
    "WHITESPACE",
    "Hex",
    "Layout",
    "Squeeze",
    "Transformed",
    "Unescape",
    "UnescapeSqueeze",
]

WHITESPACE = b" \t\n\v\f\r"
GAP = 16  # bytes: a whitespace run the squeezed view deletes; a longer one is kept and ends any match
HEX_GAP = 16  # bytes: separators between two hex digits the hex view joins; more end any match
MAX_DUMP_LINE = 200  # bytes: the longest line read as a hex-dump line (xxd -c 32 prints ~150)
TOKEN_MAX = 12  # bytes: the longest escape the unescaped view decodes (a \uXXXX\uXXXX surrogate pair)
SENTINEL = b"-"  # the hex view's mark for a gap: no hex pattern contains it

_COPY, _PICK, _SPAN = 0, 1, 2
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NOT_WS_MASK = bytes(0 if b in WHITESPACE else 1 for b in range(256))
_HEX_MASK = bytes(1 if b in _HEX_DIGITS else 0 for b in range(256))
_WS_MARKS = bytes(0x20 if b in WHITESPACE else 0x78 for b in range(256))  # whitespace " ", other "x"
_HEX_MARKS = bytes(0x68 if b in _HEX_DIGITS else 0x2E for b in range(256))  # hex digit "h", other "."
_NON_HEX = bytes(b for b in range(256) if b not in _HEX_DIGITS)
_LOWER_HEX = bytes.maketrans(b"ABCDEF", b"abcdef")
_LONG_WS = b" " * (GAP + 1)
_LONG_SEP = b"." * (HEX_GAP + 1)


class Layout:
    """Where each byte of a view comes from in the original `data`: a list of segments, each copied
    (one original byte per view byte), picked (the original bytes a mask keeps, in order) or a span
    (every view byte stands for the whole original span: a decoded escape, a gap mark)."""

    def __init__(self, data: bytes, mask: bytes = _NOT_WS_MASK, gap: int = 0) -> None:
        self.data, self.mask, self.gap = data, mask, gap
        self.vstart: list[int] = []
        self.ostart: list[int] = []
        self.oend: list[int] = []
        self.kind: list[int] = []
        self.length = 0  # view bytes so far
        self._picked: dict[int, list[int]] = {}

    def add(self, kind: int, ostart: int, oend: int, vlen: int) -> None:
        if vlen <= 0:
            return
        self.vstart.append(self.length)
        self.ostart.append(ostart)
        self.oend.append(oend)
        self.kind.append(kind)
        self.length += vlen

    def copy(self, ostart: int, oend: int) -> None:
        self.add(_COPY, ostart, oend, oend - ostart)

    def pick(self, ostart: int, oend: int, vlen: int) -> None:
        self.add(_PICK, ostart, oend, vlen)

    def span_of(self, ostart: int, oend: int, vlen: int) -> None:
        self.add(_SPAN, ostart, oend, vlen)

    def span(self, v: int) -> tuple[int, int]:
        """(start, end) in the original of view byte `v`."""
        j = bisect_right(self.vstart, v) - 1
        kind, off = self.kind[j], v - self.vstart[j]
        if kind == _COPY:
            s = self.ostart[j] + off
            return s, s + 1
        if kind == _SPAN:
            return self.ostart[j], self.oend[j]
        s = self._pick(j, off)
        return s, s + 1

    def _pick(self, j: int, off: int) -> int:
        ostart, oend = self.ostart[j], self.oend[j]
        vlen = (self.vstart[j + 1] if j + 1 < len(self.vstart) else self.length) - self.vstart[j]
        picked = self._picked.get(j)
        if picked is None:
            back = vlen - off
            # Near the end of a long segment (the undecided tail of a stream) only its last bytes
            # are looked at: within a segment at most `gap` bytes are dropped before each kept one.
            lo = oend - back * (self.gap + 1) - self.gap
            if lo > ostart + 64:
                tail = list(compress(range(lo, oend), self.data[lo:oend].translate(self.mask)))
                return tail[len(tail) - back]
            picked = list(compress(range(ostart, oend), self.data[ostart:oend].translate(self.mask)))
            self._picked[j] = picked
        return picked[off]


class Origin(Protocol):
    def span(self, v: int) -> tuple[int, int]:
        """(start, end) in the original of view byte `v`."""
        ...


class Transformed:
    """One view of `data`: its bytes, where they come from, and how much of `data` it covers for good."""

    def __init__(
        self,
        text: bytes,
        done: int,
        layout: Origin,
        *,
        escapes: list[int] | None = None,
        lines: list[tuple[int, int, int, int, int, int]] | None = None,
    ) -> None:
        self.text = text
        self.done = done  # data[:done] is transformed for good; data[done:] waits for more input
        # unescape: the original spans of the decoded escapes, flat (start, end, start, end, ...)
        self.escapes = escapes or []
        # hex: dump lines as (view start, view end, line start, line end, column start, column end)
        self.lines = lines or []
        # visible: the original spans of the removed tokens of more than one byte, flat
        self.tokens: list[int] = []
        self.layout = layout


def _long_runs(marks: bytes, needle: bytes, other: bytes, lo: int = 0, hi: int | None = None) -> list[int]:
    """Start and end of every run in `marks[lo:hi]` that contains `needle` (a run of one mark)."""
    hi = len(marks) if hi is None else hi
    out: list[int] = []
    i = marks.find(needle, lo, hi)
    while i >= 0:
        j = marks.find(other, i, hi)
        j = hi if j < 0 else j
        out += (i, j)
        i = marks.find(needle, j, hi)
    return out


class Squeeze:
    """Whitespace deleted (runs of at most GAP bytes)."""

    name = "squeezed"

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed:
        layout = Layout(data, _NOT_WS_MASK, GAP)
        runs = _long_runs(data.translate(_WS_MARKS), _LONG_WS, b"x")
        if not runs:
            text = data.translate(None, WHITESPACE)
            layout.pick(0, len(data), len(text))
            return Transformed(text, len(data), layout)
        parts: list[bytes] = []
        pos = 0
        for k in range(0, len(runs), 2):
            i, j = runs[k], runs[k + 1]
            piece = data[pos:i].translate(None, WHITESPACE)
            layout.pick(pos, i, len(piece))
            layout.copy(i, j)
            parts += (piece, data[i:j])
            pos = j
        piece = data[pos:].translate(None, WHITESPACE)
        layout.pick(pos, len(data), len(piece))
        parts.append(piece)
        return Transformed(b"".join(parts), len(data), layout)

    @staticmethod
    def restart(data: bytes, tr: Transformed, pos: int, line_start: bool) -> tuple[int, bool]:
        return pos, False  # any position: a run cut short only ever separates less


_TOKEN = re.compile(
    rb"%[0-9A-Fa-f]{2}"
    rb"|\\u[dD][89abAB][0-9A-Fa-f]{2}\\u[dD][c-fC-F][0-9A-Fa-f]{2}"
    rb"|\\u[0-9A-Fa-f]{4}"
    rb"|\\x[0-9A-Fa-f]{2}"
    rb"|\\[0-7]{3}"
    rb"|\\[abefnrtv]"
    rb"|\\[^0-9A-Za-z]"
)


def _simple_escapes() -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    digits = "0123456789abcdefABCDEF"
    for a in digits:
        for b in digits:
            value = bytes([int(a + b, 16)])
            table[f"%{a}{b}".encode()] = value
            table[f"\\x{a}{b}".encode()] = value
    for n in range(512):
        table[b"\\" + f"{n:03o}".encode()] = bytes([n & 0xFF])
    for c, v in zip(b"abefnrtv", b"\x07\x08\x1b\x0c\n\r\t\x0b", strict=True):
        table[bytes([0x5C, c])] = bytes([v])
    for c in range(256):
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122):
            table[bytes([0x5C, c])] = bytes([c])
    return table


_SIMPLE = _simple_escapes()


def _decode(token: bytes) -> bytes:
    value = _SIMPLE.get(token)
    if value is not None:
        return value
    if len(token) == TOKEN_MAX:  # a surrogate pair
        hi, lo = int(token[2:6], 16), int(token[8:12], 16)
        return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).encode("utf-8")
    return chr(int(token[2:6], 16)).encode("utf-8", "surrogatepass")


class _Escapes:
    """Where each byte of the unescaped view comes from: the decoded escapes (original and view
    spans); every other byte is copied."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.vstarts: list[int] = []
        self.vends: list[int] = []

    def span(self, v: int) -> tuple[int, int]:
        k = bisect_right(self.vstarts, v) - 1
        if k < 0:
            return v, v + 1
        if v < self.vends[k]:
            return self.starts[k], self.ends[k]
        s = self.ends[k] + v - self.vends[k]
        return s, s + 1


class Unescape:
    """%XX, \\uXXXX, \\xXX, \\NNN, \\n-style and backslash-punctuation escapes decoded."""

    name = "unescaped"
    token = _TOKEN  # the escapes this view decodes,
    table = _SIMPLE  # their values (the rest: _decode)

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed:
        n = len(data)
        if b"%" not in data and b"\\" not in data:
            layout = Layout(data)
            layout.copy(0, n)
            return Transformed(data, n, layout)
        origin = _Escapes()
        starts, ends, vstarts, vends = origin.starts, origin.ends, origin.vstarts, origin.vends
        shrink = [0]  # original bytes minus view bytes so far

        lookup = self.table.get

        def decode(m: re.Match[bytes]) -> bytes:
            token = m.group()
            value = lookup(token) or _decode(token)
            s, e = m.span()
            vs = s - shrink[0]
            starts.append(s)
            ends.append(e)
            vstarts.append(vs)
            vends.append(vs + len(value))
            shrink[0] += e - s - len(value)
            return value

        text = self.token.sub(decode, data)
        done = n
        if not final:  # an escape starting near the end may still grow (or begin at all)
            horizon = n - TOKEN_MAX
            recent = list(zip(starts[-TOKEN_MAX:], ends[-TOKEN_MAX:], strict=True))
            for p in range(max(horizon + 1, 0), n):
                if data[p] in b"%\\" and not any(s < p < e for s, e in recent):
                    done = p
                    break
            if done < n:
                k = bisect_left(starts, done)
                for column in (starts, ends, vstarts, vends):
                    del column[k:]
                text = text[: done - (ends[-1] - vends[-1] if k else 0)]
        escapes = [x for pair in zip(starts, ends, strict=True) for x in pair]
        return Transformed(text, done, origin, escapes=escapes)

    @staticmethod
    def restart(data: bytes, tr: Transformed, pos: int, line_start: bool) -> tuple[int, bool]:
        i = bisect_right(tr.escapes, pos) - 1  # the escape boundary at or before pos
        if i >= 0 and i % 2 == 0 and tr.escapes[i] < pos:
            return tr.escapes[i], False  # inside an escape: from its start
        return pos, False

    @staticmethod
    def has_escape(tr: Transformed, start: int, end: int) -> bool:
        """Whether data[start:end] holds a whole escape this view decoded (a bisect of the escapes'
        spans: a regex search of every match's span cost time quadratic in overlapping matches)."""
        i = bisect_left(tr.escapes, start)
        i += i % 2  # (an escape's end equal to start: the next escape's start)
        return i + 1 < len(tr.escapes) and tr.escapes[i + 1] <= end


class _Composed:
    """Where each byte of a view of a view comes from: `outer` maps into `inner`'s text, `inner`
    into the original."""

    def __init__(self, outer: Origin, inner: Origin) -> None:
        self.outer, self.inner = outer, inner

    def span(self, v: int) -> tuple[int, int]:
        s, e = self.outer.span(v)
        return self.inner.span(s)[0], self.inner.span(e - 1)[1]


def _squeeze_escapes() -> dict[bytes, bytes]:
    """The escapes that matter to a squeezed pattern seen through escaping: whitespace (a wrapped
    blob's line ends and indentation) and base64's punctuation (JSON's `\\/`, .NET's `\\u002B`, a
    URL-encoded blob's %2F), in every escape syntax the unescaped view knows, and a line end escaped
    twice (`\\\\n`: JSON inside a JSON string, docker's json-file logs of a JSON line)."""
    table: dict[bytes, bytes] = {}
    for c in b" \t\n\v\f\r+/=":
        for form in (f"%{c:02x}", f"%{c:02X}", f"\\x{c:02x}", f"\\x{c:02X}", f"\\u{c:04x}", f"\\u{c:04X}"):
            table[form.encode()] = bytes([c])
        table[f"\\{c:03o}".encode()] = bytes([c])
    for c, v in zip(b"tnvfr", b"\t\n\v\f\r", strict=True):
        table[bytes([0x5C, c])] = bytes([v])
        table[bytes([0x5C, 0x5C, c])] = bytes([v])
    table[b"\\/"] = b"/"
    return table


_SQUEEZE_VALUES = _squeeze_escapes()
_SQUEEZE_TOKEN = re.compile(  # (exactly the keys of _SQUEEZE_VALUES; a test compares them)
    rb"\\{1,2}[tnvfr]|\\/"
    rb"|(?:%|\\x|\\u00)(?:0[9a-dA-D]|20|2[bBfF]|3[dD])"
    rb"|\\0(?:1[1-5]|40|53|57|75)"
)


class UnescapeSqueeze(Unescape):
    """Escapes decoded, then whitespace deleted: base64 wrapped at 76 columns inside a JSON string,
    Python's repr or Go's %q, whose line breaks are the two characters `\\n` (neither view alone
    joins its lines). Only the escapes of whitespace and of base64's punctuation are decoded
    (`_squeeze_escapes`): the literal forms with other escapes are the unescaped view's, and output
    dense with `\\"` or `\\\\` costs this view a regex scan, not a decode per escape. Like the
    unescaped view, only matches holding a decoded escape count."""

    name = "unescaped-squeezed"
    token = _SQUEEZE_TOKEN
    table = _SQUEEZE_VALUES  # (every token's value: _decode is never reached)

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed:
        tr = super().transform(data, line_start, final)
        # (squeezed even without an escape: a line of base64 held here may meet its `\\n` later)
        sq = Squeeze().transform(tr.text, True, True)
        return Transformed(sq.text, tr.done, _Composed(sq.layout, tr.layout), escapes=tr.escapes)


# A dump line: an offset column (xxd's with a colon; od's and hexdump's 6 or 7 digits and a space,
# hexdump -C's 8 and two spaces), hex groups of one width (bytes or 16-bit words; 32- and 64-bit
# words only after xxd's colon; the last group may be shorter, and after the colon the only one:
# `xxd -g4`'s last line "00000010: e282ac"), then maybe a character column after two or more
# spaces. So a hex string grouped by `bytes.hex(" ", n)` is no dump: its first group (which may
# be shorter, 6 digits) is no offset. One width per line keeps a
# character column that happens to be hex (a secret's "9e8b7a6f5e4d3c2b") out of the hex groups.
_DUMP_LINE = re.compile(
    rb"^(?P<off>[0-9A-Fa-f]{6,16}(?P<colon>:)|[0-9A-Fa-f]{6,7}(?= )|[0-9A-Fa-f]{8}(?=  ))"
    rb"(?P<hex>(?: {1,2}[0-9A-Fa-f]{2})+"
    rb"|(?: [0-9A-Fa-f]{4})+(?: [0-9A-Fa-f]{2})?"
    rb"|(?(colon)(?: [0-9A-Fa-f]{8})+(?: [0-9A-Fa-f]{2,6})?|(?!))"
    rb"|(?(colon)(?: [0-9A-Fa-f]{16})+(?: [0-9A-Fa-f]{2,14})?|(?!))"
    rb"|(?(colon) (?:[0-9A-Fa-f]{2}){1,7}|(?!)))"
    rb"(?: {2,}(?P<col>\S[^\n]*?)| *)\r?$",
    re.MULTILINE,
)
_DUMP_HINT = re.compile(rb"\n[0-9A-Fa-f]{6}")  # (a literal first byte: scanned fast)
_DUMP_FIRST = re.compile(rb"[0-9A-Fa-f]{6}")
# a partial line that may still become a dump line
_DUMP_START = re.compile(rb"[0-9A-Fa-f]{0,16}\Z|[0-9A-Fa-f]{6,16}:\Z|[0-9A-Fa-f]{6,16}:? ")
_ZERO_X = re.compile(rb"0[xX]")


class Hex:
    """Hex digits, lower-cased, separators, dump offsets and dump character columns dropped."""

    name = "hex"

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed:
        n = done = len(data)
        if not final:
            last = data.rfind(b"\n") + 1
            if (last or line_start) and n - last <= MAX_DUMP_LINE and _DUMP_START.match(data, last):
                done = last  # may still become a dump line: wait for its end
            elif data.endswith(b"0"):
                done = n - 1  # may start "0x"
        layout = Layout(data, _HEX_MASK, HEX_GAP)
        parts: list[bytes] = []
        lines: list[tuple[int, int, int, int, int, int]] = []
        pos = 0
        if _DUMP_HINT.search(data, 0, done) or _DUMP_FIRST.match(data, 0, done):
            for m in _DUMP_LINE.finditer(data, 0, done):
                s, e = m.span()
                if (s == 0 and not line_start) or e - s > MAX_DUMP_LINE:
                    continue
                if s > pos:
                    _plain(data, pos, s, layout, parts)
                hs, he = m.span("hex")
                cs, ce = m.span("col") if m.group("col") else (he, he)
                digits = data[hs:he].translate(_LOWER_HEX, _NON_HEX)
                lines.append((layout.length, layout.length + len(digits), s, e, cs, ce))
                layout.pick(hs, he, len(digits))
                parts.append(digits)
                pos = e
        _plain(data, pos, done, layout, parts)
        return Transformed(b"".join(parts), done, layout, lines=lines)

    @staticmethod
    def restart(data: bytes, tr: Transformed, pos: int, line_start: bool) -> tuple[int, bool]:
        # (pos is at most tr.done: a line held back because it may become a dump line starts there)
        i = bisect_right(tr.lines, pos, key=lambda line: line[2]) - 1
        if i >= 0 and tr.lines[i][2] <= pos < tr.lines[i][3]:
            start = tr.lines[i][2]
            return start, start > 0 or line_start  # within a dump line: from its start
        return pos, (pos == 0 and line_start) or (pos > 0 and data[pos - 1] == 0x0A)

    @staticmethod
    def columns(tr: Transformed, vs: int, ve: int) -> list[tuple[int, int]]:
        """The character columns of the dump lines whose hex view [vs, ve) touches."""
        out = []
        i = max(bisect_right(tr.lines, vs, key=lambda line: line[0]) - 1, 0)
        for lvs, lve, _s, _e, cs, ce in tr.lines[i:]:
            if lvs >= ve:
                break
            if vs < lve and ce > cs:
                out.append((cs, ce))
        return out


def _plain(data: bytes, lo: int, hi: int, layout: Layout, parts: list[bytes]) -> None:
    """The hex view of data[lo:hi], text that is not a dump line: its hex digits, except the 0 of each
    0x; a run of more than HEX_GAP other bytes becomes a gap mark."""
    if hi <= lo or (hi - lo <= HEX_GAP and not data[lo:hi].translate(None, _NON_HEX)):
        return  # nothing for the view (the line break between two dump lines)
    zeros = [m.start() for m in _ZERO_X.finditer(data, lo, hi)]
    marks = data[lo:hi].translate(_HEX_MARKS)
    if zeros:
        work = bytearray(marks)
        for z in zeros:
            work[z - lo] = 0x2E  # the 0 of 0x separates
        marks = bytes(work)
    gaps = _long_runs(marks, _LONG_SEP, b"h")
    if not zeros and not gaps:
        digits = data[lo:hi].translate(_LOWER_HEX, _NON_HEX)
        layout.pick(lo, hi, len(digits))
        parts.append(digits)
        return
    events = [(z, z + 1, False) for z in zeros] + [
        (lo + gaps[k], lo + gaps[k + 1], True) for k in range(0, len(gaps), 2)
    ]
    events.sort(key=lambda ev: (ev[0], -ev[1]))  # a gap before a 0 of 0x at its start
    pos = lo
    for s, e, is_gap in events:
        if s < pos:  # a 0 of 0x inside a gap
            continue
        digits = data[pos:s].translate(_LOWER_HEX, _NON_HEX)
        layout.pick(pos, s, len(digits))
        parts.append(digits)
        if is_gap:
            layout.span_of(s, e, 1)
            parts.append(SENTINEL)
        pos = e
    digits = data[pos:hi].translate(_LOWER_HEX, _NON_HEX)
    layout.pick(pos, hi, len(digits))
    parts.append(digits)
