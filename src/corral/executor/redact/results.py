"""Redacting what a job uploads besides its log: the repository's diff and the declared outputs.

Outputs are bytes: each file is redacted whole (`Redactor.redact`), binary or not.

The diff stays a diff. Its text is redacted as one stream in which every hunk line is seen without
its one-character prefix (' ', '-', '+'), so a secret wrapped over several added lines (base64 at 76
columns, a PEM key) is matched as it is in the file; each replacement is then put back on the first
line it touches, the rest of the match is removed from the lines it covers, and every line break is
kept. So the patch keeps its lines, hunk headers stay right, and:
* a redacted added line applies, and the file it makes holds the replacement instead of the secret;
* a redacted context or removed line, or a redacted header (a file name), no longer matches the
  repository: `git apply` of that hunk (or file) fails. The producer is told: the job's log gets an
  entry `results.redacted` naming what was redacted (`describe`).
Binary files in a `git diff --binary` patch (base85 of deflated data) are decoded, bounded by
MAX_BINARY bytes a hunk: a `literal` hunk whose content holds a secret is re-encoded with the
content redacted and the index line naming the new blob (it still applies); in a `delta` hunk the
bytes it inserts are masked with '*' of the same length (the delta stays well formed, but its result
is no longer the blob the index line names, which the executor cannot recompute without the base:
`git apply` refuses that file; only the inserted bytes are compared, so a secret spread over copied
and inserted bytes is not seen). A binary hunk that cannot be decoded or is larger than MAX_BINARY
is replaced by a `literal 0` (the file's content is dropped: it could not be checked).
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from corral.executor.redact.stream import Redactor

__all__ = ["MAX_BINARY", "RedactedResults", "describe", "redact_diff", "redact_files", "redact_results"]

MAX_BINARY = 64 * 1024 * 1024  # bytes of one binary hunk's inflated content checked at most

_HUNK = re.compile(rb"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_BINARY_HUNK = re.compile(rb"(literal|delta) (\d{1,12})\n")
_MASK = b"*"


@dataclass(frozen=True)
class RedactedResults:
    diff: str
    files: dict[str, str]  # path -> base64
    diff_places: int  # replacements made in the diff (text and binary hunks)
    redacted_files: tuple[str, ...]  # output paths whose content changed


def redact_results(redactor: Redactor, diff: str, files: Mapping[str, str]) -> RedactedResults:
    """The diff and the outputs (path -> base64) with every secret form replaced. CPU-bound: call it
    in a worker thread."""
    new_diff, places = redact_diff(redactor, diff)
    new_files, changed = redact_files(redactor, files)
    return RedactedResults(new_diff, new_files, places, changed)


def redact_files(redactor: Redactor, files: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Each output (path -> base64) redacted; and the paths that changed."""
    if not redactor:
        return dict(files), ()
    out: dict[str, str] = {}
    changed: list[str] = []
    for path, encoded in files.items():
        content = base64.b64decode(encoded)
        redacted = redactor.redact(content)
        if redacted != content:
            changed.append(path)
            encoded = base64.b64encode(redacted).decode()
        out[path] = encoded
    return out, tuple(changed)


def describe(result: RedactedResults) -> str:
    """The note for the job's log, saying what was redacted (empty when nothing was)."""
    parts = []
    if result.diff_places:
        parts.append(
            f"the diff ({result.diff_places} place(s); a hunk whose context or removed lines were "
            "redacted no longer applies, redacted added lines apply with the replacement)"
        )
    if result.redacted_files:
        parts.append(f"output(s) {', '.join(result.redacted_files)}")
    return f"secrets were redacted from the results before upload: {'; '.join(parts)}" if parts else ""


# -- the diff --------------------------------------------------------------------------------------------


def _lines(data: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def redact_diff(redactor: Redactor, diff: str) -> tuple[str, int]:
    """The diff with every secret form replaced, line structure kept (see the module docstring); and
    the number of replacements."""
    if not redactor or not diff:
        return diff, 0
    data = diff.encode("utf-8", "surrogatepass")
    lines = list(_lines(data))
    prefixes: list[int] = []  # bytes of each line kept out of the stream (a hunk line's prefix)
    old = new = 0  # lines the current hunk still has on each side
    for line in lines:
        mark = line[:1]
        if (old > 0 or new > 0) and mark in (b" ", b"-", b"+"):
            prefixes.append(1)
            old -= mark != b"+"
            new -= mark != b"-"
            continue
        prefixes.append(0)
        m = _HUNK.match(line)
        if m is not None:
            old = int(m[1]) if m[1] is not None else 1
            new = int(m[2]) if m[2] is not None else 1
        else:
            old = new = 0
    stream = b"".join(line[p:] for line, p in zip(lines, prefixes, strict=True))
    spans = redactor.spans(stream)
    places = len(spans)
    if spans:
        data = _splice(lines, prefixes, stream, spans)
    data, binary_places = _redact_binary(redactor, data)
    if not places and not binary_places:
        return diff, 0
    return data.decode("utf-8", "surrogatepass"), places + binary_places


def _splice(
    lines: list[bytes], prefixes: list[int], stream: bytes, spans: list[tuple[int, int, bytes]]
) -> bytes:
    """The lines with the stream's spans replaced: a replacement on the line where its span starts,
    the span's other bytes dropped, every line break kept."""
    out: list[bytes] = []
    a = 0  # the current line's start in the stream
    j = 0  # the first span that may touch the current line
    for line, p in zip(lines, prefixes, strict=True):
        b = a + len(line) - p
        out.append(line[:p])
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        pos = a
        k = j
        while k < len(spans) and spans[k][0] < b:
            s, e, replacement = spans[k]
            if s >= a:
                out.append(stream[pos:s])
                out.append(replacement.replace(b"\n", b" ").replace(b"\r", b" "))
            pos = max(pos, min(e, b))
            k += 1
        out.append(stream[pos:b])
        if b > a and pos == b and line.endswith(b"\n"):
            out.append(b"\n")  # the line break was inside a span: keep it
        a = b
    return b"".join(out)


def _redact_binary(redactor: Redactor, data: bytes) -> tuple[bytes, int]:
    """The binary hunks of a `git diff --binary` patch redacted (see the module docstring)."""
    marker = b"GIT binary patch\n"
    if marker not in data:
        return data, 0
    out: list[bytes] = []
    places = 0
    pos = 0
    while True:
        at = data.find(marker, pos)
        if at < 0:
            break
        at += len(marker)
        header = data[pos:at]
        out.append(header)
        pos = at
        for forward in (True, False):  # the forward hunk, then the reverse one
            m = _BINARY_HUNK.match(data, pos)
            if m is None:
                break
            end = data.find(b"\n\n", m.end())
            end = len(data) if end < 0 else end + 1
            body = data[m.end() : end]
            replaced, n, content = _binary_hunk(redactor, m[1], int(m[2]), body)
            places += n
            if forward and content is not None:  # git apply checks the result against the index line
                out[-1] = _postimage(header, content)
            out.append(replaced if replaced is not None else data[m.start() : end])
            pos = end
            if data[pos : pos + 1] == b"\n":
                out.append(b"\n")
                pos += 1
    out.append(data[pos:])
    return b"".join(out), places


def _binary_hunk(
    redactor: Redactor, kind: bytes, size: int, body: bytes
) -> tuple[bytes | None, int, bytes | None]:
    """A redacted binary hunk (its header and base85 lines) or None when it holds no secret; the
    replacements made; and the full content it now yields, when that is known (a literal)."""
    content = _decode_hunk(body, size)
    if content is None:
        return b"literal 0\n" + _encode_hunk(b""), 1, b""
    if kind == b"literal":
        redacted = redactor.redact(content)
        if redacted == content:
            return None, 0, None
        return b"literal %d\n" % len(redacted) + _encode_hunk(redacted), 1, redacted
    masked, n = _mask_delta(redactor, content)
    if not n:
        return None, 0, None
    return b"delta %d\n" % len(masked) + _encode_hunk(masked), n, None


_INDEX = re.compile(rb"^index ([0-9a-f]{40}|[0-9a-f]{64})\.\.([0-9a-f]{40}|[0-9a-f]{64})", re.MULTILINE)


def _postimage(header: bytes, content: bytes) -> bytes:
    """The file header with its index line naming `content`'s blob as the result (--binary implies
    --full-index), so `git apply` accepts the redacted literal."""
    found = list(_INDEX.finditer(header))
    if not found:
        return header
    m = found[-1]
    blob = b"blob %d\0" % len(content) + content
    digest = hashlib.sha1(blob) if len(m[2]) == 40 else hashlib.sha256(blob)
    return header[: m.start(2)] + digest.hexdigest().encode() + header[m.end(2) :]


def _decode_hunk(body: bytes, size: int) -> bytes | None:
    if size > MAX_BINARY:
        return None
    raw: list[bytes] = []
    for line in body.split(b"\n"):
        if not line:
            continue
        c = line[0]
        n = c - 64 if 65 <= c <= 90 else c - 70 if 97 <= c <= 122 else -1  # 'A'..'Z' 1-26, 'a'..'z' 27-52
        if n < 0:
            return None
        try:
            raw.append(base64.b85decode(line[1:])[:n])
        except ValueError:
            return None
    inflate = zlib.decompressobj()
    try:
        content = inflate.decompress(b"".join(raw), size + 1)
    except zlib.error:
        return None
    return content if len(content) == size else None


def _encode_hunk(content: bytes) -> bytes:
    """Base85 lines of deflated `content`, as git writes them (52 bytes a line)."""
    deflated = zlib.compress(content, 9)
    lines = []
    for i in range(0, len(deflated), 52):
        chunk = deflated[i : i + 52]
        n = len(chunk)
        head = chr(64 + n) if n <= 26 else chr(70 + n)
        padded = chunk + b"\0" * (-n % 4)
        lines.append(head.encode() + base64.b85encode(padded) + b"\n")
    return b"".join(lines)


def _varint(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] & 0x80:
        pos += 1
    return pos + 1


def _mask_delta(redactor: Redactor, delta: bytes) -> tuple[bytes, int]:
    """A git delta with the secrets in the bytes it inserts masked (same length), and how many."""
    pos = _varint(delta, _varint(delta, 0))  # source and target sizes
    inserts: list[tuple[int, int]] = []
    while pos < len(delta):
        op = delta[pos]
        pos += 1
        if op & 0x80:  # copy: offset and size bytes follow, one per bit set in the low 7 bits
            pos += bin(op & 0x7F).count("1")
        elif op:
            inserts.append((pos, pos + op))
            pos += op
        else:
            return delta, 0  # op 0 is reserved: not a delta git makes; leave it to git apply
    inserted = b"".join(delta[s:e] for s, e in inserts)
    spans = redactor.spans(inserted)
    if not spans:
        return delta, 0
    out = bytearray(delta)
    offsets: list[int] = []  # where each inserted byte sits in the delta
    for s, e in inserts:
        offsets.extend(range(s, e))
    for s, e, _replacement in spans:
        for i in range(s, e):
            out[offsets[i]] = _MASK[0]
    return bytes(out), len(spans)
