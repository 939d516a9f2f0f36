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
    Every pattern is indexed by its first `KEY_LEN` bytes (its "key"; a shorter pattern is its own
    key) in one Aho-Corasick automaton (pyahocorasick, in C: cost per input byte independent of the
    number of patterns; built in about a second for `MAX_VALUES` secrets). At each occurrence of a key
    the longest pattern of that key present at that position is found among the key's patterns, kept
    sorted (a bisection in the usual case, a few more when they share longer prefixes).
    Matching is leftmost-longest: scanning left to right, at the leftmost position where any pattern
    matches, the longest pattern is replaced, so a secret that is a prefix of a longer one never lets
    the longer one leak. In addition, a match that starts inside an earlier match and extends past its
    end (two secrets overlapping, "abcXYZ" + "XYZdef") extends that redaction instead of leaving its tail
    visible: the whole overlapping run becomes the first match's replacement. So every byte of every
    occurrence of every pattern is replaced. Cost: one automaton pass in C plus a little Python per key
    occurrence (a run of many overlapping occurrences, like "aaaa…" for the secret "aaaa", costs Python
    per byte).

Limits
    The secrets come from the job, so their size is bounded before anything is built: at most
    `MAX_VALUES` redacted values and `MAX_SECRET_BYTES` of secret and replacement text (UTF-8) per job;
    past that `Redactor` raises `RedactionLimitError` (the executor fails the job: retrying would not
    help). Building costs about 20 patterns per secret and runs in a worker thread, never on the event
    loop (`JobHandler._redactor`), cached per job and secrets (`RedactorCache`) across attempts.

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
import hashlib
import json
import re
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from urllib.parse import quote, quote_plus

import ahocorasick  # type: ignore[import-not-found]  # C extension without stubs

__all__ = [
    "CACHE_SIZE",
    "DEFAULT_REPLACEMENT",
    "KEY_LEN",
    "LONG_PATTERN",
    "MAX_SECRET_BYTES",
    "MAX_VALUES",
    "MIN_ENCODED",
    "MIN_PART",
    "MIN_SECRET",
    "RedactionLimitError",
    "Redactor",
    "RedactorCache",
    "StreamRedactor",
    "cache_key",
    "check_limits",
]

DEFAULT_REPLACEMENT = "******"  # replacement for `extra` values (the executor's own token, ...)
MIN_SECRET = 4  # characters: shorter secrets are redacted literally only, not in encoded forms
MIN_ENCODED = 6  # bytes: derived patterns (encodings, lines) shorter than this are dropped
MIN_PART = 6  # characters: shortest line of a multi-line secret that is redacted on its own
KEY_LEN = 8  # bytes: the automaton's key is a pattern's first KEY_LEN bytes; longer patterns are
# checked whole where their key occurs. Measured (80,000 random 20-40 character secrets): keys of 8
# bytes give 2.2 M automaton nodes and a 2.6 s build, 16 bytes 6.5 M nodes and 6.4 s, whole patterns
# 22 M nodes, 17.6 s and 1.1 GiB.
LONG_PATTERN = 256  # bytes: a "long" pattern (a PEM key, its encodings); matched like any other, by its
# key, and the stream holds back up to the longest pattern's length (tests build long secrets with it)
# Limits on what a job may ask to redact, enforced before anything is built (`check_limits`). A secret
# becomes about 10-20 patterns (~11x its bytes). Measured at the value limit, 10,000 random 20-40
# character secrets build in ~0.6 s (in a worker thread) into ~45 MiB, and feeding a 64 KiB chunk costs
# ~2.5 ms (text) to ~7 ms (random base64); 80,000 would take ~5 s and ~335 MiB.
MAX_VALUES = 10_000  # redacted values per job
MAX_SECRET_BYTES = 1024 * 1024  # bytes (UTF-8) of secrets plus replacements per job: 1 MiB
CACHE_SIZE = 4  # redactors: an executor keeps the last ones built (RedactorCache), for retries

_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


class RedactionLimitError(ValueError):
    """A job asks to redact more than this executor does (`MAX_VALUES`, `MAX_SECRET_BYTES`)."""


def check_limits(
    values: Mapping[str, str] | None,
    *,
    max_values: int = MAX_VALUES,
    max_bytes: int = MAX_SECRET_BYTES,
) -> None:
    """Raise RedactionLimitError if `values` (a job's secret -> replacement) are over the limits.

    Cheap: the count first, then the length in characters (a lower bound of the UTF-8 length) before
    any encoding, so an oversized job costs nothing but this check.
    """
    if not values:
        return
    if len(values) > max_values:
        raise RedactionLimitError(
            f"the job has {len(values)} redacted values; this executor redacts at most {max_values}"
        )
    chars = sum(len(k) + len(v) for k, v in values.items())
    size = chars if chars > max_bytes else sum(len(_utf8(k)) + len(_utf8(v)) for k, v in values.items())
    if size > max_bytes:
        raise RedactionLimitError(
            f"the job's redacted values hold {size} bytes of text; this executor redacts at most "
            f"{max_bytes} bytes ({max_bytes // 1024} KiB)"
        )


def cache_key(job_id: object, values: Mapping[str, str] | None, extra: Iterable[str]) -> str:
    """A digest of everything a redactor is built from (for `RedactorCache`; never shows a secret)."""
    blob = json.dumps([str(job_id), sorted((values or {}).items()), list(extra)])
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class RedactorCache:
    """The last `size` redactors built, by `cache_key` (least recently used dropped first), so that
    a job's next attempt on the same executor does not build its redactor again. Event-loop use only
    (not locked)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, Redactor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Redactor | None:
        redactor = self._items.get(key)
        if redactor is not None:
            self._items.move_to_end(key)
        return redactor

    def put(self, key: str, redactor: Redactor) -> None:
        self._items[key] = redactor
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


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


def _latin1(data: bytes) -> str:
    # the automaton works on str: latin-1 maps each byte to the code point of the same value
    return data.decode("latin-1")


def _longest_at(buf: bytes, start: int, klen: int, patterns: list[bytes], longest: int) -> int:
    """End of the longest of `patterns` (sorted, all starting with the same `klen`-byte key, which
    `buf` has at `start`) that occurs at `buf[start:]`; -1 if none does."""
    if len(patterns) == 1:
        p = patterns[0]
        return start + len(p) if buf.startswith(p, start) else -1
    q = buf[start : start + longest]
    while True:
        # the greatest pattern <= q: if it is a prefix of q it is the longest one; otherwise no
        # pattern longer than the common prefix of the two is a prefix of q (it would sort between)
        i = bisect_right(patterns, q) - 1
        if i < 0:
            return -1
        c = patterns[i]
        if q.startswith(c):
            return start + len(c)
        lo, hi = klen, min(len(c), len(q)) - 1  # c[:lo] == q[:lo]; they differ before min length
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if c[:mid] == q[:mid]:
                lo = mid
            else:
                hi = mid - 1
        q = q[:lo]


class Redactor:
    """Replaces secrets and their encodings (see the module docstring) in bytes or text.

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
        groups: dict[bytes, list[bytes]] = {}
        for p in table:
            groups.setdefault(p[:KEY_LEN], []).append(p)
        self._key_max = max(map(len, groups), default=0)
        self._auto: ahocorasick.Automaton | None = None
        if groups:
            auto = ahocorasick.Automaton()
            for key, patterns in groups.items():
                patterns.sort()
                auto.add_word(_latin1(key), (len(key), patterns, max(map(len, patterns))))
            auto.make_automaton()
            self._auto = auto

    def _proper_prefix(self, tail: bytes) -> bool:
        """Whether `tail` (at most `KEY_LEN` bytes) is a proper prefix of some pattern."""
        auto, text = self._auto, _latin1(tail)
        if auto is None or not auto.match(text):  # not even a prefix of a key
            return False
        entry = auto.get(text, None)
        if entry is None:  # a proper prefix of a key
            return True
        if entry[2] > len(tail):  # the key of a longer pattern
            return True
        return next(islice(auto.keys(text), 1, None), None) is not None  # a prefix of another key

    def undecided(self, buf: bytes, keep: int) -> int:
        """Length of the longest tail of `buf` (at most `keep` bytes) that is a proper prefix of a
        pattern: only those bytes may still be part of a match that the next chunk completes.

        Cost: an automaton pass over the last `keep` bytes (tails longer than a key start with a whole
        key) and at most `KEY_LEN` look-ups of short tails: no quadratic slicing.
        """
        n, auto = len(buf), self._auto
        if auto is None or keep <= 0 or n == 0:
            return 0
        lo = max(0, n - keep)
        if n - lo > KEY_LEN and self._max_len > KEY_LEN + 1:
            for last, (klen, patterns, longest) in auto.iter(_latin1(buf[lo:])):
                if klen < KEY_LEN:
                    continue
                start: int = lo + last - klen + 1  # whole keys of one length: in increasing order of start
                size = n - start
                if size <= KEY_LEN:
                    break
                if longest > size:
                    tail = buf[start:]
                    i = bisect_right(patterns, tail)  # patterns extending `tail` sort right after it
                    if i < len(patterns) and patterns[i].startswith(tail):
                        return size
        for k in range(min(keep, n, self._key_max), 0, -1):
            if self._proper_prefix(buf[n - k :]):
                return k
        return 0

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

        The automaton is run only as far as a key starting before `limit` can reach (so a stream does
        not re-scan its whole hold-back with it); at each key found, the longest pattern there.
        """
        auto, replacements = self._auto, self._replacements
        stops: dict[int, int] = {}  # start -> end of the longest match starting there
        if auto is not None:
            end = min(len(buf), limit + self._key_max - 1)
            for last, (klen, patterns, longest) in auto.iter(_latin1(buf[:end])):
                start = last - klen + 1
                if start >= limit:
                    continue
                stop = _longest_at(buf, start, klen, patterns, longest)
                if stop > stops.get(start, -1):
                    stops[start] = stop
        for start in sorted(stops) if len(stops) > 1 else stops:
            stop = stops[start]
            if stop > emitted:  # a match inside the current redacted run changes nothing
                if start >= emitted:
                    if start > emitted:
                        out.append(buf[emitted:start])
                    out.append(replacements[buf[start:stop]])
                # else: it overlaps the run and reaches further: the run grows, hiding it all
                emitted = stop
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
