"""The forms a careless step prints a secret in, written the way the real tools write them, and a leak
check that looks for any piece of a secret in every normalisation of an output (for the redaction
tests: tests/unit/test_redact_forms.py and test_redact_properties.py)."""

from __future__ import annotations

import base64
import re
import textwrap
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from corral.executor.redact import Redactor

WINDOW = 8  # characters: a piece of a secret this long must not survive (in any normalisation)
REPLACEMENT = "<#>"  # no base64, hex or word characters: it cannot complete a piece of a secret


def stream_all(redactor: Redactor, data: bytes, cuts: list[int]) -> bytes:
    """`data` fed in the chunks `cuts` (positions, any order) make, then flushed."""
    stream = redactor.stream()
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(stream.feed(data[last:p]))
        assert stream.pending <= redactor.max_hold
        last = p
    out.append(stream.flush())
    return b"".join(out)


# --- hex dumps, as xxd, hexdump and od print them ------------------------------------------------------


def _printable(b: int) -> str:
    return chr(b) if 32 <= b < 127 else "."


def xxd(data: bytes, cols: int = 16, group: int = 2) -> bytes:
    """`xxd -c cols -g group`."""
    lines = []
    width = cols * 2 + (cols + group - 1) // group - 1  # hex digits plus the spaces between groups
    for off in range(0, len(data), cols):
        row = data[off : off + cols]
        groups = " ".join(row[i : i + group].hex() for i in range(0, len(row), group))
        lines.append(f"{off:08x}: {groups:<{width}}  {''.join(map(_printable, row))}\n")
    return "".join(lines).encode()


def hexdump_c(data: bytes) -> bytes:
    """`hexdump -C`."""
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        left = " ".join(f"{b:02x}" for b in row[:8])
        right = " ".join(f"{b:02x}" for b in row[8:])
        lines.append(f"{off:08x}  {left:<23}  {right:<23}  |{''.join(map(_printable, row))}|\n")
    lines.append(f"{len(data):08x}\n")
    return "".join(lines).encode()


def od_x(data: bytes) -> bytes:
    """`od -x`: octal offsets, 16-bit little-endian words."""
    padded = data + b"\0" * (len(data) % 2)
    lines = []
    for off in range(0, len(padded), 16):
        row = padded[off : off + 16]
        words = " ".join(f"{row[i + 1]:02x}{row[i]:02x}" for i in range(0, len(row), 2))
        lines.append(f"{off:07o} {words}\n")
    lines.append(f"{len(data):07o}\n")
    return "".join(lines).encode()


def od_tx1(data: bytes, offsets: bool = False) -> bytes:
    """`od -An -tx1` (or `od -tx1` with offsets)."""
    lines = []
    for off in range(0, len(data), 16):
        row = " ".join(f"{b:02x}" for b in data[off : off + 16])
        lines.append(f"{off:07o} {row}\n" if offsets else f" {row}\n")
    return "".join(lines).encode()


def c_array(data: bytes) -> bytes:
    """`xxd -i`: 0x.. bytes, 12 a line."""
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 12]) for i in range(0, len(data), 12)]
    return ("  " + ",\n  ".join(rows) + "\n").encode()


def plain_hex(data: bytes, sep: str = "", upper: bool = False, width: int = 0) -> bytes:
    """Hex with a separator between bytes (":" as in fingerprints, "\\x" as printf escapes, ...)."""
    text = sep.join(f"{b:02X}" if upper else f"{b:02x}" for b in data)
    if sep == "\\x":
        text = "\\x" + text
    if width:
        text = "\n".join(textwrap.wrap(text, width))
    return text.encode()


# --- base64, escapes, shell quoting ----------------------------------------------------------------------


def wrapped(blob: bytes, width: int, eol: str = "\n", indent: str = "") -> bytes:
    text = blob.decode()
    return eol.join(indent + text[i : i + width] for i in range(0, len(text), width)).encode()


def b64(data: bytes, urlsafe: bool = False) -> bytes:
    return base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)


def percent_mix(secret: str, encode: Callable[[int], bool], upper: bool = True) -> bytes:
    """Each UTF-8 byte of `secret` as %XX where encode(index) says so, else as it is."""
    out = []
    for i, b in enumerate(secret.encode()):
        if encode(i) or b >= 0x80 or b == 0x25:
            out.append(f"%{b:02X}" if upper else f"%{b:02x}")
        else:
            out.append(chr(b))
    return "".join(out).encode()


def u_escape_mix(secret: str, encode: Callable[[int], bool], upper: bool = False) -> bytes:
    """Each character as \\uXXXX (surrogate pairs above U+FFFF) where encode(index) says so."""
    out = []
    for i, ch in enumerate(secret):
        if encode(i) or ord(ch) >= 0x80 or ch in '"\\':
            units = ch.encode("utf-16-be")
            for k in range(0, len(units), 2):
                code = f"{int.from_bytes(units[k : k + 2], 'big'):04x}"
                out.append("\\u" + (code.upper() if upper else code))
        else:
            out.append(ch)
    return "".join(out).encode()


_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,-]")


def printf_q(secret: str) -> bytes:
    """bash's `printf %q` of a printable string: a backslash before each special character."""
    return "".join(ch if _SHELL_SAFE.fullmatch(ch) else "\\" + ch for ch in secret).encode()


def single_quoted(secret: str) -> bytes:
    """`'...'` with `'\\''` for each quote (sh, `${x@Q}`)."""
    return ("'" + secret.replace("'", "'\\''") + "'").encode()


def one_per_line(secret: str, eol: str = "\n") -> bytes:
    return "".join(ch + eol for ch in secret).encode()


# --- the leak check ---------------------------------------------------------------------------------------

_JSON_ESCAPE = re.compile(rb"\\u([0-9A-Fa-f]{4})|\\(.)", re.DOTALL)
_HEX = re.compile(rb"[0-9a-fA-F]")


def _unescape(data: bytes) -> bytes:
    def one(m: re.Match[bytes]) -> bytes:
        if m.group(1):
            return chr(int(m.group(1), 16)).encode("utf-8", "surrogatepass")
        return m.group(2)

    return _JSON_ESCAPE.sub(one, data)


def _windows(data: bytes, size: int) -> set[bytes]:
    if len(data) <= size:
        return {data} if data else set()
    return {data[i : i + size] for i in range(len(data) - size + 1)}


def _b64_cores(data: bytes) -> list[bytes]:
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        core = enc[(8 * k + 5) // 6 : (8 * (k + len(data))) // 6]
        out += [core, core.translate(bytes.maketrans(b"+/", b"-_"))]
    return out


def leaks(secret: str, out: bytes) -> list[str]:
    """The normalisations of `out` in which a WINDOW-character piece of `secret` (or of its base64 or hex)
    still shows; empty when nothing leaks."""
    raw = secret.encode()
    squeezed = re.sub(rb"\s+", b"", out)
    plain_views = {
        "as printed": out,
        "whitespace removed": squeezed,
        "%-decoded": unquote_to_bytes(out),
        "\\-unescaped": _unescape(out),
        "shell-unquoted": out.replace(b"'\\''", b"'"),
    }
    found = []
    pieces = _windows(raw.lower(), WINDOW)
    for name, view in plain_views.items():
        if any(p in view.lower() for p in pieces):
            found.append(name)
    cores = _b64_cores(raw)
    nested = [c for core in cores[::2] for c in _b64_cores(core)[::2]]  # base64 of base64
    # (base64 wrapped with escaped line ends, as a JSON string holds it: unescaped, then squeezed)
    unescaped_squeezed = re.sub(rb"\s+", b"", plain_views["\\-unescaped"])
    for label, view in (("", squeezed), (", \\-unescaped", unescaped_squeezed)):
        if any(w in view for core in cores for w in _windows(core, WINDOW + 2)):
            found.append(f"base64 (whitespace removed{label})")
        if any(w in view for core in nested for w in _windows(core, WINDOW + 4)):
            found.append(f"base64 of base64 (whitespace removed{label})")
    digits = b"".join(_HEX.findall(out.replace(b"0x", b"x"))).lower()
    forms = [raw.hex().encode(), _swapped(raw), _swapped(raw[1:])]  # plain, and od -x words
    if any(w in digits for form in forms for w in _windows(form, 2 * WINDOW)):
        found.append("hex digits")
    return found


def _swapped(data: bytes) -> bytes:
    return b"".join(
        data[i + 1 : i + 2].hex().encode() + data[i : i + 1].hex().encode()
        for i in range(0, len(data) - 1, 2)
    )
