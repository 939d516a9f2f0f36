"""The visible view: output as a terminal or a browser shows it, without the bytes that show nothing.

A step can print a secret with invisible bytes between its characters (`S3cr3t\\033[0mV4lue`, a NUL
after every character, an OSC 8 hyperlink, BEL, DEL, a zero-width space): no other view matches it,
and a terminal, `corral job logs` (corral.terminal.clean) or a log viewer that renders ANSI shows the
secret whole. This view removes what shows nothing:
    * escape sequences in the grammar of corral.terminal (CSI, OSC/DCS/SOS/PM/APC strings ended by BEL
      or ST, other ESC sequences, each also in its C1 form, the C1 character encoded in UTF-8), with
      the same length bounds: an unterminated or overlong one is no sequence (its ESC is removed alone);
    * every C0 control but whitespace, DEL, and the C1 controls U+0080..U+009F (in UTF-8); a raw byte
      0x80..0x9f is not taken as a C1 control (in UTF-8 text it is part of a character, and the log
      decodes a stray one as U+FFFD, which shows);
    * characters that display as nothing: zero-width space, joiners and marks U+200B..U+200F, the word
      joiner and invisible operators U+2060..U+2064, bidi embeddings U+202A..U+202E and isolates
      U+2066..U+2069, U+180E, U+FEFF, and the soft hyphen U+00AD;
    * whitespace, as the squeezed view does.
Removed bytes form runs; a run with more than GAP whitespace bytes or more than RUN_MAX bytes in all
is kept as one gap byte (a space, which no pattern of this view contains) that ends any match, so the
hold-back stays bounded; corral.terminal.clean shows such a run as a space too, so it never joins what
this view keeps apart. This view's patterns are the squeezed view's; only matches whose original span
holds a removed byte that is not whitespace count (the others are the squeezed view's, which sees the
same text wherever there is nothing but whitespace to remove), so output without any such byte is not
scanned at all.

A secret encoded in UTF-16 (LE or BE, with or without a BOM) is ASCII with a NUL before or after each
character: this view matches it for secrets of ASCII characters. A non-ASCII character's UTF-16 code
unit has a second byte that is not NUL, so a secret with non-ASCII characters is not matched in UTF-16.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

from corral import terminal
from corral.executor.redact.views import _LONG_WS, _WS_MARKS, GAP, WHITESPACE, Layout, Transformed, _long_runs

__all__ = ["RUN_MAX", "TOKEN_MAX", "Visible"]

RUN_MAX = terminal.RUN_MAX  # bytes of removed output in a row that are removed; a longer run is a gap
assert terminal.GAP == GAP  # (the terminal's long-run rule mirrors this view's)

_P, _I, _S = terminal.SEQ_PARAMS, terminal.SEQ_INTERMEDIATES, terminal.SEQ_STRING
_STRING_START = rb"(?:\x1b[\]PX^_]|\xc2[\x90\x98\x9d\x9e\x9f])"
_ST = rb"(?:\x07|\x1b\\|\xc2\x9c)"
# a run of C0 controls/DEL is one token (bounded: a longer run is a gap anyway; a job printing nothing
# but NULs cost a Python step per byte), except ESC: it may start a sequence, so it is a token alone
_CONTROL = (
    rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]{1,%d}|\x1b|\xc2[\x80-\x9f\xad]" % (RUN_MAX + 1)
    + rb"|\xe2\x80[\x8b-\x8f\xaa-\xae]|\xe2\x81[\xa0-\xa4\xa6-\xa9]|\xe1\xa0\x8e|\xef\xbb\xbf"
)
_TOKEN = re.compile(
    _STRING_START + rb"[\x20-\x7e]{0,%d}" % _S + _ST
    + rb"|(?:\x1b\[|\xc2\x9b)[\x30-\x3f]{0,%d}[\x20-\x2f]{0,%d}[\x40-\x7e]" % (_P, _I)
    + rb"|\x1b[\x20-\x2f]{0,%d}[\x30-\x7e]" % _I
    + rb"|" + _CONTROL
)  # fmt: skip
# a byte that starts a token other than whitespace (the fast path: output without one is not scanned)
_INVISIBLE = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]|\xc2[\x80-\x9f\xad]|[\xe1\xe2\xef]")
_INTRODUCERS = b"\x1b\xc2\xe1\xe2\xef"  # bytes a token of more bytes starts with
# every byte but those a token other than whitespace starts with (deleted: a fast first check)
_NOT_INTRODUCING = bytes(
    b for b in range(256) if not (b <= 0x08 or 0x0E <= b <= 0x1F or b == 0x7F) and b not in _INTRODUCERS
)
TOKEN_MAX = 2 + _S + 2  # bytes of the longest token (a C1 string with a C1 ST)


class Visible:
    """Invisible bytes and whitespace removed (runs of at most RUN_MAX bytes, GAP of whitespace)."""

    name = "visible"

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed:
        n = len(data)
        pending_c1 = not final and data.endswith(b"\xc2")  # may become a C1 control
        if not pending_c1 and (not data.translate(None, _NOT_INTRODUCING) or not _INVISIBLE.search(data)):
            # nothing but whitespace to remove: no match would count, and the squeezed view holds back
            # the same undecided tail (its text is this view's wherever nothing else is removed)
            return Transformed(b"", n, Layout(data))
        # (with a pending C1 byte the squeezed view's tail ends in it: this view's text up to the byte
        # is built below, so that its own undecided tail is held back)
        found = [m.span() for m in _TOKEN.finditer(data)]
        cut = n
        if not final:  # a token starting near the end may still grow (or begin at all)
            inside = [(s, e) for s, e in found[-TOKEN_MAX:] if e - s > 1]
            for p in range(max(n - TOKEN_MAX, 0), n):
                if data[p] in _INTRODUCERS and not any(s < p < e for s, e in inside):
                    cut = p
                    break
        layout = Layout(data, gap=GAP)
        marks = data.translate(_WS_MARKS)
        long_ws = _long_runs(marks, _LONG_WS, b"x", 0, cut)
        parts: list[bytes] = []
        shown: list[int] = []  # original starts of the removed tokens (whitespace is not a token here)
        tokens: list[int] = []  # start, end of each removed token of more than one byte
        spans = [(s, e) for s, e in found if s < cut]
        pos = 0  # the view is built up to here
        i, count = 0, len(spans)
        while i < count:
            # a run: tokens with only whitespace between them, and the whitespace around them
            s, e = spans[i]
            rs = s
            while rs > pos and marks[rs - 1] == 0x20:
                rs -= 1
            removed = 0
            while True:
                shown.append(s)
                if e - s > 1:
                    tokens += (s, e)
                removed += e - s
                i += 1
                k = e
                while k < cut and marks[k] == 0x20:
                    k += 1
                if i < count and spans[i][0] == k:
                    s, e = spans[i]
                    continue
                break
            _squeeze(data, long_ws, pos, rs, layout, parts)
            if (k - rs) - removed > GAP or k - rs > RUN_MAX:
                layout.span_of(rs, k, 1)  # a long run: a gap
                parts.append(b" ")
            pos = k
        _squeeze(data, long_ws, pos, cut, layout, parts)
        tr = Transformed(b"".join(parts), cut, layout, escapes=shown)
        tr.tokens = tokens
        return tr

    @staticmethod
    def restart(data: bytes, tr: Transformed, pos: int, line_start: bool) -> tuple[int, bool]:
        # Any position outside a token: removed bytes before a view's first byte change nothing.
        # Inside a token: from its start.
        i = bisect_right(tr.tokens, pos) - 1
        if i >= 0 and i % 2 == 0 and tr.tokens[i] < pos:
            return tr.tokens[i], False
        return pos, False

    @staticmethod
    def has_invisible(tr: Transformed, start: int, end: int) -> bool:
        """Whether data[start:end] holds a removed token that is not whitespace."""
        i = bisect_left(tr.escapes, start)
        return i < len(tr.escapes) and tr.escapes[i] < end


def _squeeze(data: bytes, runs: list[int], lo: int, hi: int, layout: Layout, parts: list[bytes]) -> None:
    """data[lo:hi] (no token in it) as the squeezed view has it: whitespace deleted, long runs (`runs`:
    of the whole data, flat start, end) kept."""
    if hi <= lo:
        return
    k = bisect_right(runs, lo)
    k -= k % 2  # the first run ending after lo
    p = lo
    while k < len(runs) and runs[k] < hi:
        i, j = max(runs[k], lo), min(runs[k + 1], hi)
        if j - i > GAP:
            piece = data[p:i].translate(None, WHITESPACE)
            layout.pick(p, i, len(piece))
            layout.copy(i, j)
            parts += (piece, data[i:j])
            p = j
        k += 2
    piece = data[p:hi].translate(None, WHITESPACE)
    layout.pick(p, hi, len(piece))
    parts.append(piece)
