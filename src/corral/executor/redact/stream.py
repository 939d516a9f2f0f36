"""The redactor: every view's matches, merged leftmost-longest, one-shot and streaming alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from corral.executor.redact.forms import Tables, build_tables
from corral.executor.redact.limits import MAX_SECRET_BYTES, MAX_VALUES, check_limits, utf8
from corral.executor.redact.matcher import HEX_KEY_LEN, Matcher
from corral.executor.redact.views import (
    GAP,
    HEX_GAP,
    MAX_DUMP_LINE,
    TOKEN_MAX,
    Hex,
    Squeeze,
    Transformed,
    Unescape,
    UnescapeSqueeze,
)
from corral.executor.redact.visible import RUN_MAX, Visible
from corral.executor.redact.visible import TOKEN_MAX as VISIBLE_TOKEN_MAX

__all__ = ["DEFAULT_REPLACEMENT", "Redactor", "StreamRedactor"]

DEFAULT_REPLACEMENT = "******"  # replacement for `extra` values (the executor's own token, ...)

# A match in original coordinates: start, stop, replacement, and further spans it hides (the character
# columns of the hex-dump lines it touches), each after `start`.
Match = tuple[int, int, bytes, list[tuple[int, int]]]


class View(Protocol):
    name: str

    def transform(self, data: bytes, line_start: bool = True, final: bool = False) -> Transformed: ...

    @staticmethod
    def restart(data: bytes, tr: Transformed, pos: int, line_start: bool) -> tuple[int, bool]: ...


@dataclass
class _Scan:
    limit: int  # every match starting before it (in data) is among `matches`; later ones are not final
    matches: list[Match]
    transformed: Transformed | None


class Channel:
    """One view of the output and the patterns matched in it."""

    def __init__(self, matcher: Matcher, view: View | None, hold_ratio: int, hold_extra: int) -> None:
        self.matcher, self.view = matcher, view
        self.name = view.name if view is not None else "raw"
        # bound on the original bytes a stream holds back for this view
        self.max_hold = max(matcher.max_len - 1, 0) * hold_ratio + hold_extra

    def scan(self, data: bytes, line_start: bool, final: bool) -> _Scan:
        m, view = self.matcher, self.view
        if view is None:
            u = len(data) if final else len(data) - m.undecided(data)
            stops = m.stops(data, u)
            return _Scan(u, [(s, e, m.table[data[s:e]], []) for s, e in stops.items()], None)
        tr = view.transform(data, line_start, final)
        text, layout = tr.text, tr.layout
        u = len(text) if final else len(text) - m.undecided(text)
        limit = layout.span(u)[0] if u < len(text) else tr.done
        unescaped, visible = isinstance(view, Unescape), isinstance(view, Visible)
        stops = m.stops(text, u) if tr.escapes or not (unescaped or visible) else {}
        matches: list[Match] = []
        for vs, ve in sorted(stops.items()):
            s, e = layout.span(vs)[0], layout.span(ve - 1)[1]
            if unescaped and not Unescape.has_escape(tr, s, e):
                continue  # the squeezed or raw view's match already
            if visible and not Visible.has_invisible(tr, s, e):
                continue  # the squeezed view's match already
            extra = Hex.columns(tr, vs, ve) if tr.lines else []
            matches.append((s, e, m.table[text[vs:ve]], extra))
        return _Scan(limit, matches, tr)

    def restart(self, data: bytes, scan: _Scan, pos: int, line_start: bool) -> tuple[int, bool]:
        if self.view is None or scan.transformed is None:
            return pos, False
        return self.view.restart(data, scan.transformed, pos, line_start)


class Redactor:
    """Replaces secrets and their encodings (see the package docstring) in bytes or text.

    `values` maps secret -> replacement; `extra` secrets get `default` as replacement. Empty secrets
    are ignored. `values` over `max_values` / `max_bytes` raise RedactionLimitError before anything is
    built. Immutable and thread-safe; `stream()` makes a stateful per-stream redactor. Building costs
    up to about a second at the limits: do it in a worker thread, not on an event loop.
    """

    def __init__(
        self,
        values: Mapping[str, str] | None = None,
        extra: Iterable[str] = (),
        *,
        default: str = DEFAULT_REPLACEMENT,
        max_values: int = MAX_VALUES,
        max_bytes: int = MAX_SECRET_BYTES,
    ) -> None:
        check_limits(values, max_values=max_values, max_bytes=max_bytes)
        secrets: list[tuple[str, bytes]] = [(s, utf8(r)) for s, r in (values or {}).items() if s]
        secrets += [(s, utf8(default)) for s in extra if s]
        self.tables: Tables = build_tables(secrets)
        t = self.tables
        squeezed = Matcher(t.squeezed)  # (one automaton for both views of these patterns)
        candidates = [
            # view, patterns, original bytes per view byte at most, and bytes a view may keep pending
            Channel(Matcher(t.raw), None, 1, 0),
            Channel(squeezed, Squeeze(), GAP + 1, GAP),
            Channel(Matcher(t.unescaped), Unescape(), 6, TOKEN_MAX),
            # (the squeezed view's patterns again, in the unescaped view with whitespace deleted:
            # each view byte and each of up to GAP whitespace bytes before it may be a 6-byte escape)
            Channel(squeezed, UnescapeSqueeze(), 6 * (GAP + 1), TOKEN_MAX + 6 * GAP),
            Channel(Matcher(t.hex, HEX_KEY_LEN), Hex(), HEX_GAP + 1 + MAX_DUMP_LINE, MAX_DUMP_LINE),
            # (the squeezed view's patterns, seen through invisible bytes: visible.py)
            Channel(squeezed, Visible(), RUN_MAX + 1, RUN_MAX + VISIBLE_TOKEN_MAX),
        ]
        self.channels = [c for c in candidates if c.matcher]
        self._max_len = max((c.matcher.max_len for c in self.channels), default=0)
        self._max_hold = max((c.max_hold for c in self.channels), default=0)

    def __repr__(self) -> str:  # never shows the secrets
        counts = " ".join(f"{c.name}={len(c.matcher)}" for c in self.channels)
        return f"<Redactor patterns {counts or 'none'} longest={self._max_len}>"

    def __bool__(self) -> bool:
        """False when there is nothing to redact."""
        return bool(self.channels)

    @property
    def max_pattern_len(self) -> int:
        """Length in bytes of the longest pattern of any view."""
        return self._max_len

    @property
    def max_hold(self) -> int:
        """Bytes a stream holds back at most after `feed` (the longest pattern, spread out by the
        separators, gaps and escapes a view may skip, plus the bytes a view keeps pending)."""
        return self._max_hold

    def redact(self, data: bytes) -> bytes:
        """`data` with every secret form replaced (leftmost-longest)."""
        if not self.channels or not data:
            return data
        return StreamRedactor(self)._step(data, final=True)

    def spans(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Where `redact(data)` replaces: (start, stop, replacement) in `data`, in order and disjoint,
        so that splicing them in gives exactly `redact(data)` (for callers that must keep a structure
        around the redacted bytes, such as the lines of a diff)."""
        if not self.channels or not data:
            return []
        found: list[tuple[int, int, bytes]] = []
        StreamRedactor(self)._step(data, final=True, spans=found)
        return found

    def redact_text(self, text: str) -> str:
        """`redact` for text (a command line, an argv element, an error message)."""
        if not self.channels:
            return text
        return self.redact(utf8(text)).decode("utf-8", "surrogatepass")

    def stream(self) -> StreamRedactor:
        """A new redactor for one output stream, fed in chunks."""
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a stream fed in chunks; `feed`s followed by `flush` give exactly `Redactor.redact` of
    the whole stream, for any chunking. Not thread-safe: one per stream.

    Positions are absolute (bytes since the start of the stream). `_buf` holds the stream from
    `_base` on: every view restarts there or later, and nothing before `_emitted` is output again.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._base = 0  # absolute position of _buf[0]
        self._emitted = 0  # absolute: everything before is output (or hidden by an output replacement)
        self._done = 0  # absolute: every match starting before it has been applied
        n = len(self._redactor.channels)
        self._restart = [0] * n  # absolute position each view transforms from next time
        self._line_start = [True] * n  # whether that position starts a line
        # spans a match hides further on (start, stop, view, replacement), applied once `_done` passes
        self._later: list[tuple[int, int, int, bytes]] = []

    def __repr__(self) -> str:
        return f"<StreamRedactor pending={self.pending}>"

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned (at most `Redactor.max_hold` after `feed`)."""
        return self._base + len(self._buf) - self._emitted

    def feed(self, chunk: bytes) -> bytes:
        """Add `chunk`; return the redacted output that is final now (possibly empty)."""
        if not self._redactor.channels:
            return chunk
        return self._step(chunk, final=False)

    def flush(self) -> bytes:
        """Return the rest of the stream, redacted; the redactor is then empty (and reusable)."""
        if not self._redactor.channels:
            return b""
        out = self._step(b"", final=True) if self.pending else b""
        self._reset()
        return out

    def _step(self, chunk: bytes, final: bool, spans: list[tuple[int, int, bytes]] | None = None) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        base = self._base
        end = base + len(buf)
        channels = self._redactor.channels
        scans = []
        limit = end
        for i, channel in enumerate(channels):
            r = self._restart[i]
            scan = channel.scan(buf[r - base :], self._line_start[i], final)
            scans.append(scan)
            limit = min(limit, r + scan.limit)
        # Matches starting in [_done, limit) are applied now, in order of start; at each start the
        # longest wins (then the earlier view). Spans a match hides further on wait in `_later`.
        best: dict[int, tuple[int, int, bytes]] = {}

        def offer(s: int, e: int, prio: int, replacement: bytes) -> None:
            have = best.get(s)
            if have is None or e > have[0] or (e == have[0] and prio < have[1]):
                best[s] = (e, prio, replacement)

        done = self._done
        later: list[tuple[int, int, int, bytes]] = []
        for s, e, prio, replacement in self._later:
            if s < limit:
                offer(s, e, prio, replacement)
            else:
                later.append((s, e, prio, replacement))
        for prio, (scan, r) in enumerate(zip(scans, self._restart, strict=True)):
            for s, e, replacement, extra in scan.matches:
                s, e = s + r, e + r
                if s < done or s >= limit:
                    continue  # applied before, or found again (and decided) later
                offer(s, e, prio, replacement)
                for xs, xe in extra:
                    if xs + r < limit:
                        offer(xs + r, xe + r, prio, replacement)
                    else:
                        later.append((xs + r, xe + r, prio, replacement))
        out: list[bytes] = []
        pos = self._emitted
        for s in sorted(best) if len(best) > 1 else best:
            e, _prio, replacement = best[s]
            if e > pos:  # a match inside the current replaced run changes nothing
                if s >= pos:
                    if s > pos:
                        out.append(buf[pos - base : s - base])
                    out.append(replacement)
                    if spans is not None:
                        spans.append((s, e, replacement))
                elif spans is not None and spans:  # it overlaps the run and reaches further: the run
                    spans[-1] = (spans[-1][0], e, spans[-1][2])  # grows, hiding it all
                pos = e
        if limit > pos:
            out.append(buf[pos - base : limit - base])
            pos = limit
        self._emitted, self._done, self._later = pos, limit, later
        for i, (channel, scan) in enumerate(zip(channels, scans, strict=True)):
            r = self._restart[i]
            at, line = channel.restart(buf[r - base :], scan, limit - r, self._line_start[i])
            self._restart[i], self._line_start[i] = r + at, line
        new_base = min(self._restart, default=limit)
        self._buf = buf[new_base - base :]
        self._base = new_base
        return b"".join(out)
