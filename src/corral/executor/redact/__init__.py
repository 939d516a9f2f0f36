"""Remove secrets, and the forms a careless step prints them in, from job output before it is logged
or uploaded.

A job comes with secrets (Sourcegraph's `redactedValues`: secret -> replacement) and the executor adds
its own (its token, the job token, registry credentials). Output of untrusted steps passes through a
`Redactor` before it reaches any log, in one-shot (`Redactor.redact`, `redact_text`) and streaming
(`Redactor.stream()` -> `StreamRedactor`) use alike. Sourcegraph's executor replaces the literal
values only (`newSecretRedactor`, a strings.Replacer, in cmd/executor/internal/worker/handler.go,
applied to each log entry's command and output in cmd/executor/internal/worker/cmdlogger/logger.go);
corral also catches the encodings below.

Views (views.py)
    Some forms of a secret are fixed byte patterns (its base64, its upper-cased text); others are a
    secret seen through noise that varies (base64 wrapped at any column, hex with any separators, any
    mix of %-escaped and plain characters). The second kind is matched in a normalised view of the
    output whose bytes are mapped back to the original ones they came from:
    * raw: the output itself, for the short literal forms (fewer than MIN_SQUEEZED bytes);
    * squeezed: whitespace deleted (runs of up to GAP bytes): wrapped base64 (76 columns for `base64`,
      64 for PEM and openssl, CRLF, indentation), a value printed one character per line, a multi-line
      secret with other line ends;
    * unescaped: %XX, \\uXXXX (surrogate pairs), \\xXX, \\NNN, \\n-style and backslash-punctuation escapes
      decoded, in any mix with plain characters (partial %-encoding, Go's \\u003c-escaped JSON,
      `printf %q`, `$'...'`); only matches containing a decoded escape count;
    * unescaped-squeezed: the escapes of whitespace and of base64's punctuation decoded (`\\n`, `\\t`,
      `\\u000a`, `%0A`, `\\/`, `\\u002B`, ...; a line end escaped twice, `\\\\n`, too), then whitespace
      deleted, matched with the squeezed view's patterns: base64 wrapped at 76 columns inside a JSON
      string (or a JSON document inside one), Python's repr or Go's %q; only matches containing a
      decoded escape count;
    * hex: hex digits lower-cased with separators dropped (spaces, `:`, `,`, `0x`, `\\x`, line breaks)
      and the offset and character columns of dump lines skipped (`xxd`, `hexdump -C`, `od -x`,
      `od -An -tx1`, C arrays); the character column of every dump line a match touches is hidden too.
    * visible (visible.py): what shows nothing on a terminal or in a browser removed, with whitespace:
      escape sequences (CSI, OSC such as OSC 8 hyperlinks, DCS/SOS/PM/APC, other ESC sequences, and
      their C1 forms encoded in UTF-8, each of bounded length), C0 controls (NUL, BEL, BS, ...), DEL,
      C1 controls, and the zero-width and format characters (U+200B..U+200F, U+2060..U+2064, U+FEFF,
      the soft hyphen U+00AD, bidi embeddings and isolates). `S3cr3t\\033[0mV4lue`, a NUL after every
      character, a zero-width space inside: matched, and the whole original span is replaced, the
      removed sequences with it. A run of removed bytes longer than RUN_MAX (corral.terminal), or
      with more than GAP whitespace, ends a match; corral.terminal.clean, which removes a subset of
      these bytes, shows such a run as a space, so `corral job logs` never joins what this view did
      not. Only matches holding a removed byte other than whitespace count (the others are the
      squeezed view's), so output without such a byte is not scanned in this view.
      UTF-16 (LE, BE, with or without a BOM) of a secret of ASCII characters is such a NUL-interleaved
      form and is redacted in every channel (log, diff, outputs); a secret with a non-ASCII character
      is not matched in UTF-16 (its code units are not NUL-padded bytes of its UTF-8);

Patterns (forms.py), for each secret `s` (a str, matched as UTF-8), all mapped to its replacement:
    * the literal `s` (always, whatever its length; empty values are ignored): squeezed when it has at
      least MIN_SQUEEZED bytes without whitespace, otherwise exactly (raw view);
    * only if `len(s) >= MIN_SECRET` (shorter values are too common to chase their encodings):
      - case changes (`s.upper()`, `s.lower()`), shell single-quoting (`'...'\\''...'`, `${x@Q}`,
        `shlex.quote`'s `'"'"'`), form encoding of spaces as `+`: like literals;
      - base64 in both alphabets, in all three alignments (`s` may start at offset 0, 1 or 2 mod 3 of
        a larger blob): the characters that depend on neighbouring bytes are dropped, so at most 4 bits
        of `s` survive on each side of a match; and base64 of those (base64 of base64, any inner
        alignment: a Kubernetes Secret holding a docker config's `auth`); squeezed view;
      - hex, plain and as 16-bit little-endian words (`od -x`, `hexdump`), both word alignments: hex
        view (contiguous lower and upper case in the squeezed view when under MIN_HEX digits);
      - the literal again in the unescaped view (any %, \\u, \\x, octal or backslash escaping of any of
        its characters; JSON and URL forms need no patterns of their own);
    * for a multi-line secret (a PEM key, a JSON service-account file): each line, split at real and
      at JSON-escaped (`\\n`) line ends, stripped, of at least MIN_PART characters, unless it is common
      (`common_line`: PEM armor such as `-----END PRIVATE KEY-----`, or fewer than MIN_PART letters
      and digits, such as `{`, `}`, `],`), which would mask ordinary output while hiding nothing.
    Derived forms shorter than MIN_ENCODED bytes (MIN_HEX digits in the hex view) are dropped. When two
    secrets yield the same pattern the literals win, in the order given, so an explicit replacement is
    never overridden by a derived form.

Matching (matcher.py, stream.py)
    Each view has one Aho-Corasick automaton over its patterns' first KEY_LEN bytes (cost per byte
    independent of the number of patterns). Matches of all views, mapped to the original bytes, are
    merged leftmost-longest: at the leftmost position where any match starts the longest is replaced
    (then the earlier view's), so a secret that is a prefix of a longer one never lets the longer one
    leak; a match that starts inside an earlier one and reaches further extends that redaction (two
    secrets overlapping, "abcXYZ" + "XYZdef"). A match in the squeezed view spans the whitespace inside
    it, a match in the hex view the separators, offsets and columns between its digits.

Streaming
    `StreamRedactor.feed(chunk)` returns only what is final. Each view reports how much of its input
    it has transformed for good (an escape may be incomplete, a line may still turn out to be a dump
    line, a `0` may start `0x`) and the longest tail of its view that is a proper prefix of one of its
    patterns: only the original bytes from there on are undecided. Everything before the earliest
    undecided byte of any view is emitted (so output that cannot begin a secret is not delayed); a view
    transforms again from a point where its transform restarts exactly (any byte for the squeezed view,
    the start of an escape, the start of a dump line). Each match is applied once, in the feed where
    the emitted position first passes its start, in order of start, so the concatenated output of
    `feed`s and `flush` equals `redact()` of the concatenated input for any chunking. The hold-back is
    bounded by `Redactor.max_hold` (the longest pattern spread out by at most GAP whitespace, HEX_GAP
    separators or one escape per view byte, plus a held dump line). A redactor without secrets passes
    chunks through unchanged, holding nothing back.

Limits (limits.py)
    The secrets come from the job, so their size is bounded before anything is built: at most
    MAX_VALUES redacted values and MAX_SECRET_BYTES of secret and replacement text (UTF-8) per job;
    past that `Redactor` raises RedactionLimitError (the executor fails the job: retrying would not
    help). Building costs about 20 patterns per secret and runs in a worker thread, never on the event
    loop (`JobHandler._redactor`), cached per job and secrets (`RedactorCache`) across attempts.
    CPU per byte is bounded: an automaton pass per view (the unescaped one only over output that holds
    an escape, the hex one over hex digits only), a little Python per escape (~1.5 us), per dump line
    (~5 us) and per match. Measured on 64 KiB chunks (bench/redact_throughput.py, against 14d64c2's
    redactor in the same run): build-log text and random base64 within 2x at 1,000 and 10,000 secrets;
    an xxd dump (every line a dump line) ~6x, text with an escape every 8 bytes ~10x (2026-12-04,
    with the unescaped-squeezed view). The visible
    view costs one `translate` over output without invisible bytes (text, base64: ~1.0x the views
    without it) and a little Python per run of them: a coloured build log (4 CSI sequences a line)
    ~11-15 ms per 64 KiB, 4-5x the views without it, 5-6x the baseline.

Out of scope: deliberate obfuscation and anything computed from a secret. Redaction is a safety net
for careless output, not a sandbox: a step that wants to leak a secret can always compute a form
nobody matches. Not covered, in particular:
    * compression, with or without base64 (`gzip | base64`, Helm's release secrets): deflate's output
      for the secret depends on everything before it in the stream (back-references up to 32 KiB,
      Huffman tables per block), so there is no pattern to match; catching it would mean inflating
      every base64 run a job prints (a decompression bomb's work, on job-controlled input, and an
      unbounded hold-back to map what is found back onto the encoded text);
    * encryption, hashing, reversing (`rev`), rot13, xor, splitting a secret into pieces printed
      apart, any other per-character transformation or interleaving (a character per line with a
      prefix, comma-separated characters, halves on two lines);
    * other dump formats: `od -c` (its offset column on the next line ends a match), `od -b` (octal),
      `od -tu1` (decimal), `od -tx4` / `-tx8` and `xxd -e` (32- and 64-bit little-endian words); base32; HTML
      character references (`&#83;`, `&#x53;`); a secret split by a removed run longer than RUN_MAX;
    * UTF-16 of a secret with non-ASCII characters, and any other text encoding (UTF-32, Latin-1 of
      a non-ASCII secret, EBCDIC);
    * secrets shorter than MIN_SECRET characters in any encoded form, and encoded forms shorter than
      MIN_ENCODED bytes;
    * mixed-case variants other than all upper and all lower case, and case changes of encodings.
    * a wrapped blob whose lines are split by more than line ends and GAP whitespace: a JSON array
      of its lines (quotes and commas between), a line end followed by more than GAP spaces.
"""

from __future__ import annotations

from corral.executor.redact.forms import (
    LONG_PATTERN,
    MIN_ENCODED,
    MIN_HEX,
    MIN_PART,
    MIN_SECRET,
    MIN_SQUEEZED,
    common_line,
)
from corral.executor.redact.limits import (
    CACHE_SIZE,
    MAX_SECRET_BYTES,
    MAX_VALUES,
    RedactionLimitError,
    RedactorCache,
    cache_key,
    check_limits,
)
from corral.executor.redact.matcher import KEY_LEN, Matcher
from corral.executor.redact.stream import DEFAULT_REPLACEMENT, Redactor, StreamRedactor
from corral.executor.redact.views import GAP, HEX_GAP, MAX_DUMP_LINE

__all__ = [
    "CACHE_SIZE",
    "DEFAULT_REPLACEMENT",
    "GAP",
    "HEX_GAP",
    "KEY_LEN",
    "LONG_PATTERN",
    "MAX_DUMP_LINE",
    "MAX_SECRET_BYTES",
    "MAX_VALUES",
    "MIN_ENCODED",
    "MIN_HEX",
    "MIN_PART",
    "MIN_SECRET",
    "MIN_SQUEEZED",
    "Matcher",
    "RedactionLimitError",
    "Redactor",
    "RedactorCache",
    "StreamRedactor",
    "cache_key",
    "check_limits",
    "common_line",
]
