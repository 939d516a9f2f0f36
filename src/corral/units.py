"""Durations and sizes, as operators write them (Go style), shared by the server and the executor.

- durations: "500ms", "1m30s", "2h", "250us" or plain seconds ("30"); parsed to seconds (float),
  formatted back like Go's time.Duration.String ("30m0s", "1h0m0s", "5s");
- sizes: "12G", "512M", "1Gi", "64k", "512MB" or plain bytes; K/M/G/T are powers of 1024 (as Docker
  and Sourcegraph read them); parsed to bytes (int), formatted as the largest exact unit ("12G"),
  or for people to one decimal ("23.4G", `human_size`).

`Duration` and `Size` are the same rules as pydantic field types: a string is parsed, a number is
taken as seconds / bytes; a bad value fails validation with the parser's message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = [
    "Duration",
    "Size",
    "format_duration",
    "format_size",
    "human_size",
    "parse_duration",
    "parse_size",
]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?$", re.IGNORECASE)
_SIZE_UNITS = "_kmgt"  # index = power of 1024


def parse_duration(value: str) -> float:
    """Go-style durations ("500ms", "1m30s", "2h") or plain seconds; returns seconds."""
    v = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(v):
        if m.start() != pos:
            break
        total += float(m[1]) * _DURATION_UNITS[m[2]]
        pos = m.end()
    if pos != len(v) or not v:
        raise ValueError(f"{value!r} is not a duration (e.g. 500ms, 30s, 1m30s, 2h)")
    return total


def format_duration(seconds: float) -> str:
    """Like Go's time.Duration.String for whole seconds: 30m0s, 1h0m0s, 5s."""
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{seconds:g}s"


def parse_size(value: str) -> int:
    """Sizes like "12G", "512M", "12Gi" or plain bytes; returns bytes. K/M/G/T are powers of 1024."""
    m = _SIZE_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 512M, 12G, 1Gi)")
    return int(float(m[1]) * 1024 ** _SIZE_UNITS.index(m[2].lower() or "_"))


def format_size(size: int) -> str:
    """The largest unit that states `size` exactly: 12G, 512M, 1536K, 1000 (bytes)."""
    for power in range(len(_SIZE_UNITS) - 1, 0, -1):
        unit = 1024**power
        if size and size % unit == 0:
            return f"{size // unit}{_SIZE_UNITS[power].upper()}"
    return str(size)


def human_size(size: int) -> str:
    """A size for people, to one decimal in the largest unit it reaches: 23.4G, 512M, 1.5K, 900B."""
    for power in range(len(_SIZE_UNITS) - 1, 0, -1):
        unit = 1024**power
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + _SIZE_UNITS[power].upper()
    return f"{size}B"


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(_duration)]  # seconds
Size = Annotated[int, BeforeValidator(_size)]  # bytes
