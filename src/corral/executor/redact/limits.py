"""What a job may ask to redact, checked before anything is built, and the per-executor cache of built
redactors (a job's next attempt reuses its redactor)."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.executor.redact.stream import Redactor

__all__ = [
    "CACHE_SIZE",
    "MAX_SECRET_BYTES",
    "MAX_VALUES",
    "RedactionLimitError",
    "RedactorCache",
    "cache_key",
    "check_limits",
    "utf8",
]

# Limits on what a job may ask to redact, enforced before anything is built (`check_limits`). A secret
# becomes about 20 patterns (~30x its bytes) over the views. Measured at the value limit, 10,000 random
# 20-40 character secrets build in ~1.2 s (0.6 s before the views; in a worker thread) into ~90 MiB
# (35 MiB before); bench/redact_throughput.py.
MAX_VALUES = 10_000  # redacted values per job
MAX_SECRET_BYTES = 1024 * 1024  # bytes (UTF-8) of secrets plus replacements per job: 1 MiB
CACHE_SIZE = 4  # redactors: an executor keeps the last ones built (RedactorCache), for retries


class RedactionLimitError(ValueError):
    """A job asks to redact more than this executor does (`MAX_VALUES`, `MAX_SECRET_BYTES`)."""


def utf8(s: str) -> bytes:
    # surrogatepass: a lone surrogate (possible in values decoded from JSON) must not crash redaction
    return s.encode("utf-8", "surrogatepass")


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
    size = chars if chars > max_bytes else sum(len(utf8(k)) + len(utf8(v)) for k, v in values.items())
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
