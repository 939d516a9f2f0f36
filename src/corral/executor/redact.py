"""Remove secrets, and their common encodings, from job output before it is logged or uploaded.

A job comes with secrets (Sourcegraph's `redactedValues`: secret -> replacement) and the executor adds
its own (its token, ...). Output of untrusted steps passes through a `Redactor` before it reaches any
log, so every form of a secret below is replaced, in one-shot (`Redactor.redact`, `redact_text`) and
in streaming (`Redactor.stream()` -> `StreamRedactor`) use alike.

Patterns
    For each secret `s` (a str; matched as its UTF-8 bytes) the redactor builds a set of byte patterns,
    all mapped to the secret's replacement:

    * the literal `s` (always, whatever its length; empty values are ignored);
    * only if `len(s) >= MIN_SECRET` (shorter values are too common to chase their encodings):
      - base64, standard and URL-safe alphabets, in all three alignments: `s` may start at byte
        offset 0, 1 or 2 (mod 3) inside a larger encoded blob (`echo "$TOKEN" | base64`,
        `Authorization: Basic base64(user:token)`). For each offset the characters that also depend on
        neighbouring bytes (the first one or two, the last one, and any `=` padding) are dropped: what
        remains is the run of characters that encode only bytes of `s` and appears whatever surrounds
        it. At most 4 bits of `s` survive on each side of a match;
      - URL percent-encoding: `quote(s, safe="")`, `quote(s)` (keeps "/"), `quote_plus(s)`, each also
        with lower-case `%xx` escapes;
      - JSON string escaping: `json.dumps(s)[1:-1]`, the `ensure_ascii=False` form, and both with "/"
        escaped as "\\/";
      - hex of the UTF-8 bytes, lower and upper case;
    * for a multi-line secret (a PEM key, a JSON service-account file): the secret with CRLF line ends
      (a pseudo-terminal turns "\\n" into "\\r\\n"), and each line, stripped, of at least `MIN_PART`
      characters (literally: a line printed on its own; the encodings above cover the whole secret).

    Derived (encoded) forms shorter than `MIN_ENCODED` bytes are dropped: they would match ordinary
    output and destroy it while hiding almost nothing. When two secrets yield the same pattern the
    literal secrets win, in the order given, so an explicit replacement is never overridden by a
    derived form.

Matching
    Patterns of up to `LONG_PATTERN` bytes are compiled into one bytes regex shaped as a trie (common
    prefixes shared, the children of a node start with distinct bytes, a node that ends a pattern makes
    its children optional and greedy), so at any position the engine follows one path and returns the
    longest pattern starting there, and its first-byte filter skips positions where none can start.
    The few longer patterns (long secrets, say a PEM key, and their encodings) are found with `bytes.find`.
    Matching is leftmost-longest: scanning left to right, at the leftmost position where any pattern
    matches, the longest pattern is replaced, so a secret that is a prefix of a longer one never lets
    the longer one leak. In addition, a match that starts inside an earlier match and extends past its
    end (two secrets overlapping, "abcXYZ" + "XYZdef") extends that redaction instead of leaving its tail
    visible: the whole overlapping run becomes the first match's replacement. So every byte of every
    occurrence of every pattern is replaced. Cost: one regex pass in C plus a little Python per match
    (a run of many overlapping occurrences, like "aaaa…" for the secret "aaaa", costs Python per byte).

Streaming
    `StreamRedactor.feed(chunk)` appends the chunk to a buffer and returns only what is final. With L
    the length of the longest pattern, a match starting at index i < cut = len(buffer) - (L - 1) fits in
    the buffer entirely, so the longest match at every such position is known. Better still, only the
    longest tail of the buffer that is a proper prefix of some pattern is undecided; `cut` is where that
    tail starts (so output that cannot begin a secret is never delayed). Matches starting before
    `cut` are processed, and everything up to `cut` (or up to the end of the last replaced match, if it
    reaches further) is emitted. At most L - 1 bytes are held back; `flush()` processes and returns the
    rest. The scan is a left-to-right state machine (position, end of the redacted run) whose decisions
    depend only on bytes that were available, so the concatenated output of `feed`s and `flush` equals
    `redact()` of the concatenated input, for any chunking (a secret split across many chunks included).
    A redactor without secrets passes chunks through unchanged, holding nothing back.

Not covered: encodings of encodings, base64 wrapped across lines (`base64` wraps at 76 columns),
compression, and anything the job computes from a secret; redaction is a safety net, not a sandbox.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from itertools import groupby
from urllib.parse import quote, quote_plus

__all__ = [
    "DEFAULT_REPLACEMENT",
    "LONG_PATTERN",
    "MIN_ENCODED",
    "MIN_PART",
    "MIN_SECRET",
    "Redactor",
    "StreamRedactor",
]

DEFAULT_REPLACEMENT = "******"  # replacement for `extra` values (the executor's own token, ...)
MIN_SECRET = 4  # characters: shorter secrets are redacted literally only, not in encoded forms
MIN_ENCODED = 6  # bytes: derived patterns (encodings, lines) shorter than this are dropped
MIN_PART = 6  # characters: shortest line of a multi-line secret that is redacted on its own
LONG_PATTERN = 256  # bytes: longer patterns are searched with bytes.find, not the regex (Redactor._scan)

_NEVER = sys.maxsize  # "no match": a start position beyond any buffer
_HEAD = 8  # bytes: StreamRedactor's undecided-tail check looks tails this long or longer up by their head
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _utf8(s: str) -> bytes:
    # surrogatepass: a lone surrogate (possible in values decoded from JSON) must not crash redaction
    return s.encode("utf-8", "surrogatepass")


def _base64_forms(data: bytes) -> Iterator[bytes]:
    """The base64 characters that encode only bytes of `data` when it starts at offset 0, 1 or 2 (mod 3)
    inside a larger blob, in the standard and URL-safe alphabets."""
    n = len(data)
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data)
        first = (8 * k + 5) // 6  # first character whose 6 bits all come from `data`
        end = (8 * (k + n)) // 6  # one past the last such character (drops padding, mixed tail)
        core = encoded[first:end]
        yield core
        yield core.translate(_URLSAFE)


def _text_forms(s: str) -> Iterator[str]:
    """URL and JSON encodings of `s`."""
    utf8 = {"encoding": "utf-8", "errors": "surrogatepass"}
    for url in (quote(s, safe="", **utf8), quote(s, **utf8), quote_plus(s, **utf8)):
        yield url
        yield _PERCENT_ESCAPE.sub(lambda m: m.group().lower(), url)
    for js in (json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1]):
        yield js
        yield js.replace("/", "\\/")


def _derived_forms(s: str) -> Iterator[bytes]:
    """Every encoded form of secret `s` (not the literal itself); callers drop the short ones."""
    if len(s) < MIN_SECRET:
        return
    raw = _utf8(s)
    yield from _base64_forms(raw)
    for form in _text_forms(s):
        yield _utf8(form)
    yield raw.hex().encode("ascii")
    yield raw.hex().upper().encode("ascii")


def _trie_source(group: list[bytes], depth: int) -> bytes:
    """Regex source for the suffixes from `depth` of `group` (sorted, distinct, sharing `depth` bytes).

    The shape is a trie: the common prefix as a literal, then one branch per distinct next byte (so
    the engine follows at most one), optional and greedy if a pattern ends at the prefix: the longest
    pattern matching at a position wins.
    """
    first, last = group[0], group[-1]  # sorted: they bound the common prefix of the whole group
    common = depth
    while common < len(first) and first[common] == last[common]:
        common += 1
    head = re.escape(first[depth:common])
    ends_here = len(first) == common  # a prefix sorts first
    rest = group[1:] if ends_here else group
    if not rest:
        return head
    branches = [_trie_source(list(sub), common) for _, sub in groupby(rest, key=lambda p: p[common])]
    body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
    return head + (b"(?:" + body + b")?" if ends_here else body)


def _compile(patterns: Iterable[bytes]) -> re.Pattern[bytes]:
    """One regex matching exactly `patterns`, the longest one at any position."""
    ordered = sorted(set(patterns))
    try:
        return re.compile(_trie_source(ordered, 0))
    except RecursionError:  # hundreds of nested prefixes: a flat alternation, longest first
        return re.compile(b"|".join(re.escape(p) for p in sorted(ordered, key=len, reverse=True)))


class Redactor:
    """Replaces secrets and their encodings (see the module docstring) in bytes or text.

    `values` maps secret -> replacement; `extra` secrets get `default` as replacement. Empty secrets
    are ignored. Immutable and thread-safe; `stream()` makes a stateful per-stream redactor.
    """

    def __init__(
        self,
        values: Mapping[str, str] | None = None,
        extra: Iterable[str] = (),
        *,
        default: str = DEFAULT_REPLACEMENT,
    ) -> None:
        secrets: list[tuple[str, bytes]] = [(s, _utf8(r)) for s, r in (values or {}).items() if s]
        secrets += [(s, _utf8(default)) for s in extra if s]
        table: dict[bytes, bytes] = {}
        for secret, replacement in secrets:  # literals first: they win over any derived form
            table.setdefault(_utf8(secret), replacement)
        for secret, replacement in secrets:
            for form in self._forms(secret):
                if len(form) >= MIN_ENCODED:
                    table.setdefault(form, replacement)
        self._replacements = table
        self._max_len = max(map(len, table), default=0)
        short = [p for p in table if len(p) <= LONG_PATTERN]
        self._short = _compile(short) if short else None
        self._short_max = max(map(len, short), default=0)
        self._long = sorted((p for p in table if len(p) > LONG_PATTERN), key=len, reverse=True)
        # A stream holds back only a tail that could still grow into a pattern (see `undecided`):
        # proper prefixes shorter than _HEAD bytes in a set, longer ones start with a pattern's head.
        self._heads = frozenset(p[:k] for p in table for k in range(1, min(len(p), _HEAD)))
        self._sorted_short = sorted(short)
        heads = [p[:_HEAD] for p in short if len(p) > _HEAD]
        self._short_heads = _compile(heads) if heads else None

    def undecided(self, buf: bytes, keep: int) -> int:
        """Length of the longest tail of `buf` (at most `keep` bytes) that is a proper prefix of a
        pattern: only those bytes may still be part of a match that the next chunk completes.

        Cost: a regex scan of the last `short_max - 1` bytes for the first `_HEAD` bytes of a short
        pattern, a `bytes.find` per long pattern, and a few set look-ups: no quadratic slicing.
        """
        n = len(buf)
        best = n  # start of the longest undecided tail found so far
        if self._short_heads is not None:  # tails of _HEAD bytes or more, of short patterns
            pos = max(0, n - min(keep, self._short_max - 1))
            ordered = self._sorted_short
            while (m := self._short_heads.search(buf, pos)) is not None:
                tail = buf[m.start() :]
                i = bisect_right(ordered, tail)  # patterns extending `tail` sort right after it
                if i < len(ordered) and ordered[i].startswith(tail):
                    best = m.start()
                    break
                pos = m.start() + 1
        for p in self._long:  # few; each tail candidate starts with the pattern's head
            head, start = p[:_HEAD], max(0, n - min(keep, len(p) - 1))
            while (at := buf.find(head, start, min(n, best + _HEAD - 1))) != -1:  # only longer tails
                if p.startswith(buf[at:]):
                    best = at
                    break
                start = at + 1
        for k in range(min(keep, n, _HEAD - 1), n - best, -1):  # short tails
            if buf[n - k :] in self._heads:
                return k
        return n - best

    @staticmethod
    def _forms(secret: str) -> Iterator[bytes]:
        yield from _derived_forms(secret)
        if "\n" in secret or "\r" in secret:
            if "\n" in secret and "\r\n" not in secret:
                yield _utf8(secret.replace("\n", "\r\n"))
            for line in secret.splitlines():
                line = line.strip()
                if len(line) >= MIN_PART:
                    yield _utf8(line)

    def __repr__(self) -> str:  # never shows the secrets
        return f"<Redactor patterns={len(self._replacements)} longest={self._max_len}>"

    def __bool__(self) -> bool:
        """False when there is nothing to redact."""
        return bool(self._replacements)

    @property
    def max_pattern_len(self) -> int:
        """Length in bytes of the longest pattern; a stream holds back at most one byte less."""
        return self._max_len

    def redact(self, data: bytes) -> bytes:
        """`data` with every secret form replaced (leftmost-longest)."""
        if not self._replacements or not data:
            return data
        out: list[bytes] = []
        self._scan(data, 0, len(data), out)
        return b"".join(out)

    def redact_text(self, text: str) -> str:
        """`redact` for text (a command line, an argv element, an error message)."""
        if not self._replacements:
            return text
        return self.redact(_utf8(text)).decode("utf-8", "surrogatepass")

    def stream(self) -> StreamRedactor:
        """A new redactor for one output stream, fed in chunks."""
        return StreamRedactor(self)

    def _scan(self, buf: bytes, emitted: int, limit: int, out: list[bytes]) -> int:
        """Redact `buf`: decide every match starting before `limit`, append the output to `out`.

        `buf[:emitted]` is already accounted for (emitted, or covered by a replacement already
        emitted); every pattern starting before `limit` must fit in `buf`. Returns the new `emitted`,
        at least `limit`: everything before it is final and in `out`.

        The next match is the earlier of two candidates: the regex of short patterns, searched only as
        far as a short match starting before `limit` can reach (so a stream does not re-scan its whole
        hold-back with it), and the first occurrence of a long pattern (few, found with bytes.find;
        at the same position a long match is the longer one).
        """
        short, replacements = self._short, self._replacements
        short_end = min(len(buf), limit + self._short_max - 1)
        s_match = short.search(buf, 0, short_end) if short is not None else None
        s_start = s_match.start() if s_match is not None else _NEVER
        longs = self._long
        long_at = [buf.find(p) for p in longs]
        while True:
            l_start = l_stop = _NEVER
            for i, at in enumerate(long_at):  # longest first: ties keep the longest
                if 0 <= at < l_start:
                    l_start, l_stop = at, at + len(longs[i])
            if l_start <= s_start:
                if l_start == _NEVER:
                    break
                start, stop = l_start, l_stop
            else:
                start, stop = s_match.span()  # type: ignore[union-attr]
            if start >= limit:
                break
            if stop > emitted:  # a match inside the current redacted run changes nothing
                if start >= emitted:
                    if start > emitted:
                        out.append(buf[emitted:start])
                    out.append(replacements[buf[start:stop]])
                # else: it overlaps the run and reaches further: the run grows, hiding it all
                emitted = stop
            # the next candidate position is start + 1: a match may begin inside this one
            if s_start <= start:
                s_match = short.search(buf, start + 1, short_end)  # type: ignore[union-attr]
                s_start = s_match.start() if s_match is not None else _NEVER
            for i, at in enumerate(long_at):
                if 0 <= at <= start:
                    long_at[i] = buf.find(longs[i], start + 1)
        if limit > emitted:
            out.append(buf[emitted:limit])
            emitted = limit
        return emitted


class StreamRedactor:
    """Redacts a stream fed in chunks; `feed`s followed by `flush` give exactly `Redactor.redact` of
    the whole stream. Not thread-safe: one per stream."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._keep = max(redactor.max_pattern_len - 1, 0)  # bytes that may still start a match
        self._buf = b""  # not final yet: starts at the first position whose matches are undecided
        self._emitted = 0  # leading bytes of _buf already covered by an emitted replacement

    def __repr__(self) -> str:
        return f"<StreamRedactor pending={self.pending}>"

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned (at most `max_pattern_len - 1` after `feed`)."""
        return len(self._buf) - self._emitted

    def feed(self, chunk: bytes) -> bytes:
        """Add `chunk`; return the redacted output that is final now (possibly empty)."""
        if not self._keep and not self._buf:  # nothing to redact, or only 1-byte secrets
            return self._redactor.redact(chunk)
        buf = self._buf + chunk if self._buf else chunk
        # Everything before the undecided tail is final: no match can start there and end later
        # (so output that cannot be the start of a secret streams at once, not after more output).
        limit = len(buf) - self._redactor.undecided(buf, self._keep)
        if limit <= 0:  # too little to decide anything yet
            self._buf = buf
            return b""
        out: list[bytes] = []
        emitted = self._redactor._scan(buf, self._emitted, limit, out)
        self._buf = buf[limit:]
        self._emitted = emitted - limit
        return b"".join(out)

    def flush(self) -> bytes:
        """Return the rest of the stream, redacted; the redactor is then empty (and reusable)."""
        buf, emitted = self._buf, self._emitted
        self._buf, self._emitted = b"", 0
        if not buf:
            return b""
        out: list[bytes] = []
        self._redactor._scan(buf, emitted, len(buf), out)
        return b"".join(out)
