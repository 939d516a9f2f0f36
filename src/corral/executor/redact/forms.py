"""The byte patterns of each secret, by the view they are matched in (see the package docstring)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from corral.executor.redact.limits import utf8
from corral.executor.redact.views import GAP, WHITESPACE

__all__ = [
    "LONG_PATTERN",
    "MIN_ENCODED",
    "MIN_HEX",
    "MIN_PART",
    "MIN_SECRET",
    "MIN_SQUEEZED",
    "Tables",
    "build_tables",
    "common_line",
]

MIN_SECRET = 4  # characters: shorter secrets are redacted literally only, not in encoded forms
MIN_ENCODED = 6  # bytes: derived patterns (encodings, variants, lines) shorter than this are dropped
MIN_PART = 6  # characters: shortest line of a multi-line secret that is redacted on its own
MIN_SQUEEZED = 8  # bytes: a literal form this long without whitespace is matched whitespace-blind;
# shorter ones ("1234", "ab cd") only exactly, or ordinary output ("12 34") would be masked
MIN_HEX = 12  # hex digits: shortest hex form matched separator-blind in the hex view; shorter hex
# (secrets of 4-5 bytes) is matched only contiguous
LONG_PATTERN = 256  # bytes: a "long" pattern (a PEM key, its encodings); matched like any other, by its
# key, and a stream holds back up to the longest pattern (tests build long secrets with it)

_URLSAFE = bytes.maketrans(b"+/", b"-_")
_LONG_WS = re.compile(rb"[ \t\n\v\f\r]{%d}" % (GAP + 1))
_LINES = re.compile(r"\r\n|\r|\n|\\r\\n|\\n")  # real line ends, and JSON's escaped ones
_ARMOR = re.compile(r"-{3,}\s*(BEGIN|END)\b[^\n]*?-{3,}")


@dataclass
class Tables:
    """pattern -> replacement for each view; earlier entries win (literals before derived forms)."""

    raw: dict[bytes, bytes] = field(default_factory=dict)
    squeezed: dict[bytes, bytes] = field(default_factory=dict)
    unescaped: dict[bytes, bytes] = field(default_factory=dict)
    hex: dict[bytes, bytes] = field(default_factory=dict)

    def literal(self, form: bytes, replacement: bytes, derived: bool = False) -> None:
        """A form of the secret's text: whitespace-blind when long enough, else exactly."""
        if derived and len(form) < MIN_ENCODED:
            return
        squeezed = form.translate(None, WHITESPACE)
        if len(squeezed) >= MIN_SQUEEZED:
            self.squeezed.setdefault(squeezed, replacement)
        if len(squeezed) < MIN_SQUEEZED or _LONG_WS.search(form):  # a long blank run ends a squeezed match
            self.raw.setdefault(form, replacement)

    def encoded(self, table: dict[bytes, bytes], form: bytes, replacement: bytes, minimum: int) -> None:
        if len(form) >= minimum:
            table.setdefault(form, replacement)


def common_line(line: str) -> bool:
    """A line of a multi-line secret too common to redact on its own: PEM armor
    (`-----END PRIVATE KEY-----`), or fewer than MIN_PART letters and digits (`}`, `],`, `{`)."""
    return bool(_ARMOR.fullmatch(line)) or sum(c.isalnum() for c in line) < MIN_PART


def parts(secret: str) -> Iterator[str]:
    """The lines of a multi-line secret (split at real and at JSON-escaped line ends) that are
    redacted on their own: stripped, at least MIN_PART characters, not common."""
    if not _LINES.search(secret):
        return
    for line in _LINES.split(secret):
        line = line.strip()
        if len(line) >= MIN_PART and not common_line(line):
            yield line


def base64_cores(data: bytes, urlsafe: bool = True) -> Iterator[bytes]:
    """The base64 characters that encode only bytes of `data` when it starts at offset 0, 1 or 2 (mod 3)
    inside a larger blob, in the standard (and URL-safe) alphabet."""
    n = len(data)
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data)
        first = (8 * k + 5) // 6  # first character whose 6 bits all come from `data`
        end = (8 * (k + n)) // 6  # one past the last such character (drops padding, mixed tail)
        core = encoded[first:end]
        yield core
        if urlsafe:
            yield core.translate(_URLSAFE)


def swapped_hex(data: bytes) -> bytes:
    """Hex of `data` as 16-bit little-endian words (`od -x`, `hexdump`): each byte pair swapped; a
    trailing odd byte shares its word with an unknown neighbour and is left out."""
    even = len(data) - len(data) % 2
    swapped = bytearray(even)
    swapped[0::2], swapped[1::2] = data[1:even:2], data[0:even:2]
    return swapped.hex().encode()


def variants(secret: str) -> Iterator[str]:
    """Text forms of the secret a careless step prints: case changes, shell quoting, form encoding."""
    yield secret.upper()
    yield secret.lower()
    if "'" in secret:
        yield secret.replace("'", "'\\''")  # '...'\''...' (sh, ${x@Q})
        yield secret.replace("'", "'\"'\"'")  # Python's shlex.quote
    if " " in secret:
        yield secret.replace(" ", "+")  # application/x-www-form-urlencoded without other escapes


def build_tables(secrets: Sequence[tuple[str, bytes]]) -> Tables:
    """The patterns of every (secret, replacement); the literals of all secrets come first."""
    t = Tables()
    for secret, replacement in secrets:
        t.literal(utf8(secret), replacement)
    for secret, replacement in secrets:
        if len(secret) < MIN_SECRET:
            continue
        raw = utf8(secret)
        for form in variants(secret):
            t.literal(utf8(form), replacement, derived=True)
        for line in parts(secret):
            t.literal(utf8(line), replacement, derived=True)
        t.unescaped.setdefault(raw, replacement)
        if " " in secret:
            t.unescaped.setdefault(raw.replace(b" ", b"+"), replacement)
        for core in base64_cores(raw):
            t.encoded(t.squeezed, core, replacement, MIN_ENCODED)
        for inner in base64_cores(raw, urlsafe=False):  # base64 of base64 (a k8s Secret of a docker config)
            for core in base64_cores(inner, urlsafe=False):
                t.encoded(t.squeezed, core, replacement, MIN_ENCODED)
        hexed = raw.hex().encode()
        if len(hexed) >= MIN_HEX:
            t.encoded(t.hex, hexed, replacement, MIN_HEX)
            t.encoded(t.hex, swapped_hex(raw), replacement, MIN_HEX)
            t.encoded(t.hex, swapped_hex(raw[1:]), replacement, MIN_HEX)
        else:
            t.encoded(t.squeezed, hexed, replacement, MIN_ENCODED)
            t.encoded(t.squeezed, hexed.upper(), replacement, MIN_ENCODED)
    return t
