"""What both sides of the wire share: names, headers, the workspace path rule, the model base."""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

__all__ = [
    "EXECUTOR_NAME_HEADER",
    "EXTENSIONS",
    "EXTENSIONS_HEADER",
    "FILE_BUCKET_RE",
    "JOB_ID_HEADER",
    "LOG_MAX_BYTES_HEADER",
    "MAX_FILE_KEY_CHARS",
    "QUEUE_NAME_RE",
    "ZERO_TIME",
    "Wire",
    "check_file_ref",
    "check_workspace_dir",
    "check_workspace_path",
    "now_rfc3339",
]

QUEUE_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}\Z")
EXTENSIONS_HEADER = "X-Corral-Extensions"
# What a corral server offers beyond Sourcegraph's protocol; a client only uses what is advertised.
EXTENSIONS = ("longpoll", "logappend", "fencing", "results", "cancelwatch", "reattach")
JOB_ID_HEADER = "X-Sourcegraph-Job-ID"
# With the extensions: the most bytes of output the server stores for one log entry, so that an
# executor caps (head, tail and the cut marked) within it instead of being refused.
LOG_MAX_BYTES_HEADER = "X-Corral-Log-Max-Bytes"
EXECUTOR_NAME_HEADER = "X-Sourcegraph-Executor-Name"
ZERO_TIME = "0001-01-01T00:00:00Z"
# Files by bucket/key (the file store; Sourcegraph's files API, /.executors/files/<bucket>/<key>).
FILE_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
FILE_KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~+=,@:-]{1,255}\Z")
MAX_FILE_KEY_CHARS = 1024


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_workspace_path(path: str) -> str:
    """A file path of a job (`files`, `outputs`): returned normalised if it names something below
    the workspace, else ValueError. The workspace itself (".") is not a file path."""
    norm = _relative(path, "file path")
    if norm == ".":
        raise ValueError(f"refusing to write outside of working directory: {path!r} names the workspace")
    return norm


def check_workspace_dir(path: str) -> str:
    """A directory of a job (a step's `dir`, `repositoryDirectory`): "" or "." is the workspace
    itself (Sourcegraph's batch changes give every pre/post step `dir: "."`); anything else must
    stay inside it. Returns the normalised form ("" stays "", the workspace is "."), else ValueError."""
    return "" if path == "" else _relative(path, "directory")


def _relative(path: str, what: str) -> str:
    if not path or "\x00" in path:
        raise ValueError(f"{what} is empty or contains a NUL byte")
    if path.startswith("/") or "\\" in path:
        raise ValueError(f"refusing to write outside of working directory: {path!r} is not relative")
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"refusing to write outside of working directory: {path!r}")
    return norm


def check_file_ref(bucket: str, key: str) -> None:
    """A file store address, else ValueError. The bucket is 1-63 of [a-z0-9._-] starting with a
    letter or digit; the key is at most MAX_FILE_KEY_CHARS, "/"-separated segments of 1-255 of
    [A-Za-z0-9._~+=,@:-], none of them "." or ".." (so a key never climbs out of anything, needs no
    escaping in a URL path, and means the same after any URL normalisation)."""
    if not FILE_BUCKET_RE.match(bucket):
        raise ValueError(f"invalid file bucket {bucket[:80]!r}: use 1-63 characters of [a-z0-9._-]")
    if not key or len(key) > MAX_FILE_KEY_CHARS:
        raise ValueError(f"a file key has 1-{MAX_FILE_KEY_CHARS} characters ({len(key)} given)")
    for seg in key.split("/"):
        if seg in (".", "..") or not FILE_KEY_SEGMENT_RE.match(seg):
            raise ValueError(
                f"invalid file key {key[:80]!r}: segments of 1-255 characters of [A-Za-z0-9._~+=,@:-], "
                "not '.' or '..', separated by '/'"
            )


class Wire(BaseModel):
    """Base of every wire model: unknown fields are ignored (forward compatible)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
