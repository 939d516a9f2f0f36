"""A job's files (`Job.files`) into its workspace: inline contents decoded by the job's version, and
files given by `bucket`/`key` fetched from the server's files API, bounded, streamed through the
workspace (never buffered whole, never following a path the job controls: see `safefs`).

As Sourcegraph's executor (cmd/executor/internal/worker/files/files.go, getContent): a file's
`content` is written unless it names both a `bucket` and a `key`, in which case the files API's
answer replaces it; a file with neither is written empty.
- v2 jobs carry `content` as base64 of the bytes (Go's []byte); v1 jobs as a string, whose UTF-8
  bytes are written. A v1 string cannot carry arbitrary bytes: Sourcegraph's server already turned
  invalid UTF-8 into U+FFFD when it marshalled the job, which is why the client asks for v2.
- A fetch the server refuses or that breaks off errors the job (retried, as Sourcegraph); a file over
  its bound, a path leaving the workspace or a bucket/key that could change the URL fails it.
"""

from __future__ import annotations

import binascii
import re

from corral.errors import Reason, RuntimeFailure, ServerError, StepFailed
from corral.executor import safefs
from corral.executor.client import QueueClient
from corral.executor.runtimes.base import JobSpace
from corral.executor.workspace.base import Workspace
from corral.executor.workspace.host import MAX_FILES
from corral.protocol import Job, VirtualMachineFile, check_workspace_path

__all__ = [
    "MAX_FETCHED_FILE",
    "MAX_FETCHED_TOTAL",
    "file_content",
    "write_job_files",
]

MAX_FETCHED_FILE = 256 * 1024 * 1024  # bytes of one file fetched from the files API
MAX_FETCHED_TOTAL = 1024 * 1024 * 1024  # bytes of all of a job's fetched files together
MAX_BUCKET = 255  # characters of a bucket name
MAX_KEY = 1024  # characters of a key
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def file_content(path: str, f: VirtualMachineFile, version: int) -> bytes:
    """The inline content of one file as bytes; StepFailed (naming the file) when it is not what
    the job's version says (v2: base64)."""
    if f.content is None:
        return b""
    if version >= 2:
        try:
            return f.data(version)
        except (binascii.Error, ValueError):
            raise StepFailed(
                f"file {path}: its content is not base64, as a version 2 job carries it", Reason.FILES
            ) from None
    # v1: the string's UTF-8 bytes. A lone surrogate (a "\ud800" escape, which Go's encoder never
    # writes) becomes U+FFFD, as Go's decoder makes it, instead of an encoding error.
    return f.content.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _remote(path: str, f: VirtualMachineFile) -> tuple[str, str] | None:
    """(bucket, key) when the file is fetched from the files API, checked to stay one URL path."""
    if not (f.bucket and f.key):
        return None
    bucket, key = f.bucket, f.key
    if len(bucket) > MAX_BUCKET or not _BUCKET_RE.fullmatch(bucket):
        raise StepFailed(f"file {path}: bucket {bucket[:80]!r} is not a valid bucket name", Reason.FILES)
    parts = key.split("/")
    if len(key) > MAX_KEY or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise StepFailed(f"file {path}: key {key[:80]!r} is not a valid files-API key", Reason.FILES)
    return bucket, key


async def write_job_files(client: QueueClient, job: Job, space: JobSpace, workspace: Workspace) -> None:
    """Write every file of the job into the workspace (inline ones first, then fetched ones)."""
    if len(job.files) > MAX_FILES:
        raise StepFailed(f"the job has {len(job.files)} files; at most {MAX_FILES} are allowed", Reason.FILES)
    version = job.version or 1
    inline: dict[str, bytes] = {}
    fetched: dict[str, tuple[str, str]] = {}
    for path, f in job.files.items():
        remote = _remote(path, f)
        if remote is None:
            inline[path] = file_content(path, f, version)
        else:
            fetched[path] = remote
    try:
        await workspace.write_files(space, inline)
    except (RuntimeFailure, ValueError) as exc:
        raise StepFailed(str(exc), Reason.FILES) from None
    total = 0
    for path, (bucket, key) in fetched.items():
        total += await _fetch(client, job, space, workspace, path, bucket, key, MAX_FETCHED_TOTAL - total)


async def _fetch(
    client: QueueClient,
    job: Job,
    space: JobSpace,
    workspace: Workspace,
    path: str,
    bucket: str,
    key: str,
    room: int,
) -> int:
    limit = min(MAX_FETCHED_FILE, room)
    try:
        norm = check_workspace_path(path)
    except ValueError as exc:
        raise StepFailed(str(exc), Reason.FILES) from None

    def too_large() -> StepFailed:
        if limit < MAX_FETCHED_FILE:
            bound = f"the job's fetched files together exceed {MAX_FETCHED_TOTAL} bytes"
        else:
            bound = f"larger than {MAX_FETCHED_FILE} bytes, the limit of a fetched file"
        return StepFailed(f"file {norm} ({bucket}/{key}): {bound}", Reason.FILES)

    try:
        async with client.fetch_file(job, bucket, key) as (size, chunks):
            if size is not None and size > limit:
                raise too_large()
            return await workspace.write_stream(space, norm, chunks, limit)
    except safefs.TooLarge:
        raise too_large() from None
    except ServerError as exc:
        raise RuntimeFailure(
            f"file {norm}: fetching {bucket}/{key} from the files API failed: {exc.message}",
            reason=Reason.FILES,
        ) from None
    except (RuntimeFailure, ValueError) as exc:
        raise StepFailed(f"file {norm}: {exc}", Reason.FILES) from None
    except OSError as exc:
        raise StepFailed(f"file {norm}: {exc.strerror or exc}", Reason.FILES) from None
