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
      - for a multi-line secret (a PEM key, a JSON service-account file): the secret with CRLF line ends
        (a pseudo-terminal turns "\\n" into "\\r\\n"), and each line, stripped, of at least `MIN_PART`
        characters as a secret of its own (literal and the encodings above).

    Derived (encoded) forms shorter than `MIN_ENCODED` bytes are dropped: they would match ordinary
    output and destroy it while hiding almost nothing. When two secrets yield the same pattern the
    literal secrets win, in the order given, so an explicit replacement is never overridden by a
    derived form.

Matching
    All patterns are compiled into one bytes regex, shaped as a trie (common prefixes shared, children
    of a node all start with distinct bytes, a node that ends a pattern makes its children optional and
    greedy), so at any position the regex engine walks one path and returns the longest pattern that
    starts there; the engine's first-byte filter skips positions where no pattern can start.
    Matching is leftmost-longest: scanning left to right, at the leftmost position where any pattern
    matches, the longest pattern is replaced, so a secret that is a prefix of a longer one never lets
    the longer one leak. In addition, a match that starts inside an earlier match and extends past its
    end (two secrets overlapping, "abcXYZ" + "XYZdef") extends that redaction instead of leaving its tail
    visible: the whole overlapping run becomes the first match's replacement.

Streaming
    `StreamRedactor.feed(chunk)` appends the chunk to a buffer and returns only what is final. With L
    the length of the longest pattern, a match starting at index i < cut = len(buffer) - (L - 1) fits in
    the buffer entirely, so the longest match at every such position is known: matches starting before
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
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote, quote_plus

__all__ = [
    "DEFAULT_REPLACEMENT",
    "MIN_ENCODED",
    "MIN_PART",
    "MIN_SECRET",
    "Redactor",
    "StreamRedactor",
]

DEFAULT_REPLACEMENT = "******"  # replacement for `extra` values (the executor's own token, ...)
MIN_SECRET = 4  # characters: shorter secrets are redacted literally only, not in encoded forms
MIN_ENCODED = 6  # bytes: derived (encoded, per-line) patterns shorter than this are dropped
MIN_PART = 6  # characters: shortest line of a multi-line secret that is redacted on its own

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
    for url in (quote(s, safe=""), quote(s), quote_plus(s)):
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


def _trie_regex(patterns: Iterable[bytes]) -> bytes:
    """A regex source matching exactly `patterns` (non-empty), preferring the longest at any position."""
    end = -1  # key marking "a pattern ends here" in a trie node (real keys are bytes 0..255)
    root: dict[int, dict] = {}
    for pattern in patterns:
        node = root
        for byte in pattern:
            node = node.setdefault(byte, {})
        node[end] = {}

    # Iterative post-order walk (no recursion limit for long patterns): a regex per node, built from
    # its children's. Children start with distinct bytes, so the engine follows at most one of them.
    regex: dict[int, bytes] = {}
    stack: list[tuple[dict[int, dict], bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for key, child in node.items() if key != end)
            continue
        alternatives = [
            re.escape(bytes([key])) + regex.pop(id(node[key])) for key in sorted(node) if key != end
        ]
        if len(alternatives) == 1:
            source = alternatives[0]
        else:  # none (a leaf: empty) or several
            source = b"(?:" + b"|".join(alternatives) + b")" if alternatives else b""
        if end in node and source:
            source = b"(?:" + source + b")?"  # greedy: the longer patterns first, else the one ending here
        regex[id(node)] = source
    return regex[id(root)]


def _scan(
    pattern: re.Pattern[bytes],
    replacements: Mapping[bytes, bytes],
    buf: bytes,
    emitted: int,
    limit: int,
    out: list[bytes],
) -> int:
    """Redact `buf`: process every match starting before `limit`, append output to `out`.

    `buf[:emitted]` is already accounted for (emitted, or covered by a replacement already emitted).
    Returns the new `emitted`, which is at least `limit`: everything before it is final.
    """
    search = pattern.search
    pos = 0
    while True:
        match = search(buf, pos)
        if match is None:
            break
        start, stop = match.span()
        if start >= limit:
            break
        if stop > emitted:  # a match entirely inside the redacted run changes nothing
            if start >= emitted:
                if start > emitted:
                    out.append(buf[emitted:start])
                out.append(replacements[match.group()])
            # else: overlaps the previous match and reaches further: extend that redaction
            emitted = stop
        pos = start + 1
    if limit > emitted:
        out.append(buf[emitted:limit])
        emitted = limit
    return emitted


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
        self._pattern: re.Pattern[bytes] | None = re.compile(_trie_regex(table)) if table else None

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
                    yield from _derived_forms(line)

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
        if self._pattern is None or not data:
            return data
        out: list[bytes] = []
        _scan(self._pattern, self._replacements, data, 0, len(data), out)
        return b"".join(out)

    def redact_text(self, text: str) -> str:
        """`redact` for text (a command line, an argv element, an error message)."""
        if self._pattern is None:
            return text
        return self.redact(_utf8(text)).decode("utf-8", "surrogatepass")

    def stream(self) -> StreamRedactor:
        """A new redactor for one output stream, fed in chunks."""
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a stream fed in chunks; `feed`s followed by `flush` give exactly `Redactor.redact` of
    the whole stream. Not thread-safe: one per stream."""

    def __init__(self, redactor: Redactor) -> None:
        self._pattern = redactor._pattern
        self._replacements = redactor._replacements
        self._keep = max(redactor.max_pattern_len - 1, 0)  # bytes that may still start a match
        self._buf = b""  # not yet final: starts at the first position whose matches are unprocessed
        self._emitted = 0  # leading bytes of _buf already covered by an emitted replacement

    def __repr__(self) -> str:
        return f"<StreamRedactor pending={self.pending}>"

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned (at most `max_pattern_len - 1` after `feed`)."""
        return len(self._buf) - self._emitted

    def feed(self, chunk: bytes) -> bytes:
        """Add `chunk`; return the redacted output that is final now (possibly empty)."""
        if self._pattern is None:
            return chunk
        buf = self._buf + chunk if self._buf else chunk
        limit = len(buf) - self._keep
        if limit <= 0:  # too little to decide anything yet
            self._buf = buf
            return b""
        out: list[bytes] = []
        emitted = _scan(self._pattern, self._replacements, buf, self._emitted, limit, out)
        self._buf = buf[limit:]
        self._emitted = emitted - limit
        return b"".join(out)

    def flush(self) -> bytes:
        """Return the rest of the stream, redacted; the redactor is then empty (and reusable)."""
        buf, emitted = self._buf, self._emitted
        self._buf, self._emitted = b"", 0
        if self._pattern is None or not buf:
            return buf
        out: list[bytes] = []
        _scan(self._pattern, self._replacements, buf, emitted, len(buf), out)
        return b"".join(out)
