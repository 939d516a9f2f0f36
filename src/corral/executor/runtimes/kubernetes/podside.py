"""The program a job's pod runs (image corral/corral:1), and the executor's side of what it prints.

    python3 -m corral.executor.runtimes.kubernetes.podside clone \
        [--config JOB.JSON] [--secrets DIR] [--workspace DIR] [--git-dir DIR]
    python3 -m corral.executor.runtimes.kubernetes.podside collect \
        [--config JOB.JSON] [--workspace DIR] [--git-dir DIR]

Both are the host workspace's own functions (corral.executor.workspace.host, corral.executor.jobfiles)
run inside the pod: the same git commands and options, the same no-follow file writes and reads, the
same bounds. Nothing is copied from there; only the transport differs.

What the pod gets (`pod_secret` builds it; every item is one key of the job's Secret):
- `token`: the job token (mounted into `setup-workspace` only). It reaches git as an
  http.extraHeader in the environment of each git process (GIT_CONFIG_COUNT/KEY/VALUE, auth_env),
  never in an argv, never in a git config file, never in the workspace; no safe.directory.
- `job.json` (SPEC_KEY, `PodJob`): the repository, commit and fetch options, repositoryDirectory,
  the declared outputs, where each of the job's files comes from (a Secret key `file-N` holding its
  bytes, or a files-API bucket/key fetched with the job token), the server's URL as pods see it, the
  executor's name, an optional CA file for git and the files API (KUBERNETES_GIT_CA_CERT), and the
  nonce of the clone log's section markers. Mounted into `setup-workspace` and `main`.
- `file-0`, `file-1`, ...: the job's inline files (setup-workspace only).

clone (the `setup-workspace` init container; defaults: --workspace /job/workspace, --git-dir
/job/meta.git, --secrets and --config in SECRETS_MOUNT). Any layout works: the workspace and the git
dir are made when missing, and may be subPath directories the kubelet made as root, since every git
command is told its git dir and work tree (git's ownership check is for discovered repositories:
no safe.directory is ever set). The clone's own .git stays in the workspace, as on the host (steps
may use it); the diff's git dir is the separate one, never mounted into a step. It prints git's
output, one section per git command, between marker lines `##[corral <nonce>] start <key>` and
`##[corral <nonce>] end <key> <exit code>`, then `##[corral <nonce>] done`, or `... error <json>`
(`CloneLog` splits a followed log into these sections again). Exit 0 only after `done`.

collect (the `main` container): the diff (git dir meta.git, work tree /data) and the declared outputs,
printed to stdout as framed records (format below) that `decode_results` (or `ResultsDecoder` fed
as the log arrives) turns back into the host's `Results`, or the host's error. The workspace's bytes
only ever travel base64-encoded inside a record whose length and SHA-256 are declared up front, so
nothing in the workspace can forge, end or inflate a record; the decoder holds at most the host's
bounds plus one line.

The frame (ASCII lines, each ending in "\\n"):
    corral-results 1
    {"record": "diff", "size": N, "zsize": Z, "sha256": H}      then the body: base64 of zlib(data),
    {"record": "output", "path": P, "size": ..., ...}             in lines of LINE characters, the
    {"record": "problem", "text": T}                              last one shorter
    {"record": "error", "kind": "runtime"|"retry", "reason": R, "message": M}
    {"record": "end", "records": K}                               K = records before it; nothing after
Lines before the first one (an interpreter's warning) are ignored, up to MAX_PREAMBLE bytes.
Read the log without timestamps (a timestamped line is malformed). Bodies are zlib-compressed, yet a
large result can pass a real kubelet's container log rotation (containerLogMaxSize, 10 MiB by
default): pods/log then serves the newest file only, and the decoder says the stream is truncated
(no start, or no end record) instead of returning partial results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import secrets as secrets_module
import ssl
import stat
import sys
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.errors import CorralError, Reason, RuntimeFailure, StepFailed
from corral.executor.plan import CloneSpec, JobPlan
from corral.executor.runtimes.base import META_MOUNT, WORKSPACE_MOUNT, JobSpace
from corral.executor.workspace.base import CommandLog, Results
from corral.executor.workspace.host import (
    MAX_DIFF,
    MAX_OUTPUT_FILE,
    MAX_OUTPUTS,
    MAX_OUTPUTS_TOTAL,
    HostWorkspace,
    Writer,
    clone_headers,
    clone_repository,
    clone_url,
    collect_results,
    diff_bytes,
    run,
)
from corral.protocol import check_workspace_path

__all__ = [
    "CLONE_COMMAND",
    "COLLECT_COMMAND",
    "FILE_KEY",
    "MAX_RESULTS_BYTES",
    "SECRETS_MOUNT",
    "SETUP_META",
    "SETUP_ROOT",
    "SETUP_WORKSPACE",
    "SPEC_KEY",
    "TOKEN_KEY",
    "WORKDIR",
    "CloneEvent",
    "CloneLog",
    "MalformedResults",
    "PodJob",
    "ResultsDecoder",
    "decode_results",
    "encode_results",
    "pod_secret",
]

SECRETS_MOUNT = "/.corral-secrets"  # the job's Secret, as files (setup-workspace: all; main: job.json)
SPEC_KEY = "job.json"
TOKEN_KEY = "token"
FILE_KEY = "file-{}"  # the job's n-th inline file
SETUP_ROOT = "/job"  # setup-workspace: the job-data volume's root
SETUP_WORKSPACE = f"{SETUP_ROOT}/workspace"  # made by podside clone; the subPath `workspace` (/data)
SETUP_META = f"{SETUP_ROOT}/meta.git"  # made by podside clone; the subPath `meta.git` (META_MOUNT)
MODULE = "corral.executor.runtimes.kubernetes.podside"
# -P: no current directory on sys.path (`python -m` puts it first, before the standard library, and a
# container's directory may be the workspace: a step's json.py would be imported); -s: no user site
# ($HOME/.local, HOME=/tmp is a volume CLI steps write). Only the image's PYTHONPATH and stdlib.
PYTHON = ("python3", "-P", "-s")
WORKDIR = "/"  # the setup and main containers' workingDir: never the image's WORKDIR (/data)
CLONE_COMMAND = (*PYTHON, "-m", MODULE, "clone")
COLLECT_COMMAND = (*PYTHON, "-m", MODULE, "collect")

MAX_SPEC = 1024 * 1024  # bytes of job.json (a Secret holds at most 1 MiB)
MAX_TOKEN = 64 * 1024  # bytes of the token file
MAX_SECRET_FILE = 1024 * 1024  # bytes of one inline file's Secret key
MAX_CA_FILE = 1024 * 1024  # bytes of the CA bundle
MAX_MARKER = 16 * 1024  # bytes of one clone-log marker line
MAX_MESSAGE = 2000  # characters of an error's or a problem's text carried in a record
MAX_PATH_BYTES = 4096  # bytes (UTF-8) of an output's path carried in a record

MAGIC = b"corral-results 1"
LINE = 4096  # base64 characters per body line (a multiple of 4: each line decodes alone)
MAX_HEADER = 64 * 1024  # bytes of one record header line (a path or message, JSON-escaped)
MAX_PREAMBLE = 64 * 1024  # bytes of lines before MAGIC that are skipped
MAX_PROBLEMS = MAX_OUTPUTS + 1


def _zbound(size: int) -> int:
    """The most zlib's compress() makes of `size` bytes (zlib's compressBound, plus a margin)."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13 + 64


def _body_bytes(size: int) -> int:
    """Stream bytes of a record body of `size` bytes at most (base64 lines with their newlines)."""
    chars = 4 * math.ceil(_zbound(size) / 3)
    return chars + math.ceil(chars / LINE)


# The longest stream a well-formed collect prints: the diff, every output, every problem and the
# framing. The executor may read a main container's log up to this and decode it (or feed it to a
# ResultsDecoder as it arrives: that holds only the decoded bytes, within the host's bounds).
MAX_RESULTS_BYTES = (
    MAX_PREAMBLE
    + len(MAGIC)
    + 1
    + _body_bytes(MAX_DIFF)
    + _body_bytes(MAX_OUTPUTS_TOTAL)
    + MAX_OUTPUTS * (_body_bytes(0) + 8)  # each output record's own zlib and padding overhead
    + (1 + MAX_OUTPUTS + MAX_PROBLEMS + 2) * (MAX_HEADER + 1)
)


# --- what the pod gets ---------------------------------------------------------------------------


class _FileSource(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    secret_key: str | None = Field(default=None, alias="secretKey", pattern=r"^file-[0-9]{1,6}$")
    bucket: str | None = None
    key: str | None = None


class PodJob(BaseModel):
    """job.json: what podside clone and collect need to know of the job (never the token)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    podside: Literal[1] = 1
    job_id: int = Field(alias="jobId")
    queue: str
    executor_name: str = Field(alias="executorName")
    frontend_url: str = Field(alias="frontendUrl")
    repository: str = ""  # "" = no clone
    repository_directory: str = Field(default="", alias="repositoryDirectory")
    commit: str = ""
    fetch_tags: bool = Field(default=False, alias="fetchTags")
    shallow_clone: bool = Field(default=False, alias="shallowClone")
    sparse_checkout: tuple[str, ...] | None = Field(default=None, alias="sparseCheckout")
    outputs: tuple[str, ...] = ()
    files: dict[str, _FileSource] = Field(default_factory=dict)
    git_ca_cert: str | None = Field(default=None, alias="gitCaCert")  # a path in the pod
    log_nonce: str = Field(alias="logNonce", pattern=r"^[0-9a-f]{16,64}$")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PodJob:
        if len(data) > MAX_SPEC:
            raise ValueError(f"{SPEC_KEY} is larger than {MAX_SPEC} bytes")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(f"{SPEC_KEY} is not a podside job: {exc.errors()[0]['msg']}") from None

    @property
    def clone(self) -> CloneSpec | None:
        if not self.repository:
            return None
        return CloneSpec(
            self.repository, self.commit, self.fetch_tags, self.shallow_clone, self.sparse_checkout
        )

    def plan(self) -> JobPlan:
        """The parts of the job's plan that the workspace functions read."""
        return JobPlan(
            job_id=self.job_id,
            queue=self.queue,
            steps=(),
            repository=self.repository,
            repository_directory=self.repository_directory,
            commit=self.commit,
            clone=self.clone,
            outputs=self.outputs,
        )


def pod_secret(
    plan: JobPlan,
    *,
    token: str,
    executor_name: str,
    frontend_url: str,
    files: Mapping[str, bytes] = {},
    remote_files: Mapping[str, tuple[str, str]] = {},
    git_ca_cert: str | None = None,
    log_nonce: str | None = None,
) -> tuple[PodJob, dict[str, bytes]]:
    """job.json and the Secret items podside reads: {TOKEN_KEY, SPEC_KEY, "file-N"...} -> bytes.
    `files`: inline files (path -> bytes); `remote_files`: path -> (bucket, key), fetched in the pod
    with the job token; `git_ca_cert`: a CA bundle's path in the pod (e.g. another key of the
    Secret, f"{SECRETS_MOUNT}/ca.crt")."""
    items: dict[str, bytes] = {TOKEN_KEY: token.encode()}
    sources: dict[str, _FileSource] = {}
    for i, (path, data) in enumerate(files.items()):
        key = FILE_KEY.format(i)
        sources[path] = _FileSource(secret_key=key)
        items[key] = bytes(data)
    for path, (bucket, key) in remote_files.items():
        sources[path] = _FileSource(bucket=bucket, key=key)
    clone = plan.clone
    spec = PodJob(
        job_id=plan.job_id,
        queue=plan.queue,
        executor_name=executor_name,
        frontend_url=frontend_url,
        repository=plan.repository if clone else "",
        repository_directory=plan.repository_directory,
        commit=plan.commit,
        fetch_tags=clone.fetch_tags if clone else False,
        shallow_clone=clone.shallow_clone if clone else False,
        sparse_checkout=tuple(clone.sparse_checkout) if clone and clone.sparse_checkout else None,
        outputs=tuple(plan.outputs),
        files=sources,
        git_ca_cert=git_ca_cert,
        log_nonce=log_nonce or secrets_module.token_hex(8),
    )
    items[SPEC_KEY] = spec.to_json()
    return spec, items


def _read_secret(path: Path, limit: int) -> bytes:
    """A file of the Secret volume (the kubelet's, read-only; its keys are symlinks into ..data)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RuntimeFailure(f"{path.name} in the job's Secret is larger than {limit} bytes")
    return data


# --- clone: the setup-workspace container ---------------------------------------------------------


def _marker_prefix(nonce: str) -> bytes:
    return f"##[corral {nonce}] ".encode()


class _Sections:
    """The clone's log on stdout: each git command's output between its start and end markers."""

    def __init__(self, out: IO[bytes], nonce: str) -> None:
        self.out, self.prefix = out, _marker_prefix(nonce)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def marker(self, words: str) -> None:
        self.write(b"\n" + self.prefix + words.encode() + b"\n")

    @contextlib.asynccontextmanager
    async def open_log(self, key: str, command: list[str]) -> AsyncIterator[CommandLog]:
        entry = _Entry(self.write)
        self.marker(f"start {key}")
        try:
            yield entry
        finally:
            self.marker(f"end {key} {-1 if entry.exit_code is None else entry.exit_code}")

    def error(self, exc: BaseException) -> None:
        kind = "step" if isinstance(exc, StepFailed) else "runtime"
        reason = getattr(exc, "reason", Reason.RUNTIME)
        message = exc.message if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
        body = {"kind": kind, "reason": str(reason), "message": message[:MAX_MESSAGE]}
        self.marker("error " + json.dumps(body, ensure_ascii=True))


@dataclass
class _Entry:
    write: Writer
    exit_code: int | None = None


def _directory(path: Path, mode: int) -> Path:
    """`path` as a directory (made, with missing parents, when it does not exist). It may belong to
    another user (a subPath directory the kubelet made as root): git is always told its git dir and
    work tree, so its ownership check of discovered repositories never applies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    if os.path.islink(path) or not os.path.isdir(path):
        raise RuntimeFailure(f"{path} is not a directory", reason=Reason.CLONE)
    return path


async def clone(config: Path, secrets: Path, workspace: Path, meta: Path, out: IO[bytes]) -> int:
    """podside clone: check out the job's commit in `workspace`, make the diff's git dir `meta`, write
    the job's files; the log on `out` (see the module docstring). Returns the exit code."""
    try:
        spec = PodJob.from_json(_read_secret(config, MAX_SPEC))
    except (OSError, ValueError) as exc:
        out.write(f"podside: cannot read the job: {exc}\n".encode())
        return 2
    log = _Sections(out, spec.log_nonce)
    try:
        await _clone(spec, secrets, workspace, meta, log)
    except (CorralError, OSError, ValueError) as exc:
        log.error(exc)
        return 1
    log.marker("done")
    return 0


async def _clone(spec: PodJob, secrets: Path, workspace: Path, meta: Path, log: _Sections) -> None:
    from corral.executor.jobfiles import write_job_files  # the executor's HTTP client: only here
    from corral.protocol import Job

    token = _read_secret(secrets / TOKEN_KEY, MAX_TOKEN).decode("utf-8", "replace").strip()
    needs_token = bool(spec.repository) or any(s.secret_key is None for s in spec.files.values())
    if not token and needs_token:  # only the clone and fetched files use it
        raise RuntimeFailure(
            "the job has no token: the kubernetes runtime never gives a pod the executor's secret"
        )
    _directory(workspace, 0o755)
    plan = spec.plan()
    ca = spec.git_ca_cert
    if plan.clone is not None:
        _directory(meta, 0o700)
        headers = clone_headers(token, "", spec.job_id, spec.executor_name)
        config = [("http.sslCAInfo", ca)] if ca else []
        await clone_repository(
            meta.parent,
            workspace,
            plan,
            clone_url(spec.frontend_url, spec.repository),
            headers,
            log.open_log,
            meta=meta,
            git_config=config,
        )
    files: dict[str, Any] = {}
    for path, source in spec.files.items():
        if source.secret_key is not None:
            data = _read_secret(secrets / source.secret_key, MAX_SECRET_FILE)
            files[path] = {"content": base64.b64encode(data).decode()}
        else:
            files[path] = {"bucket": source.bucket, "key": source.key}
    if not files:
        return
    job = Job(id=spec.job_id, queue=spec.queue, token=token, version=2, files=files)
    space = JobSpace(job_id=spec.job_id, queue=spec.queue, root=meta.parent, workspace=workspace)
    target = HostWorkspace(None, frontend_url=spec.frontend_url, frontend_password="", executor_name="")
    async with _files_client(spec, ca) as client:
        await write_job_files(client, job, space, target)


@contextlib.asynccontextmanager
async def _files_client(spec: PodJob, ca: str | None) -> AsyncIterator[Any]:
    """The executor's own QueueClient (its files API call, retries and bounds), with the job token."""
    import httpx

    from corral.executor.client import QueueClient
    from corral.executor.settings import ExecutorSettings

    settings = ExecutorSettings.model_construct(
        frontend_url=spec.frontend_url.rstrip("/"),
        frontend_password="",
        queues=[spec.queue],
        name=spec.executor_name,
        extensions=True,
    )
    transport = None
    if ca:
        pem = _read_secret(Path(ca), MAX_CA_FILE).decode("ascii", "replace")
        transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cadata=pem))
    client = QueueClient(settings, transport=transport)
    try:
        yield client
    finally:
        await client.aclose()


@dataclass(frozen=True)
class CloneEvent:
    """A piece of a followed setup-workspace log: `start`/`end` of a git command's section (its log
    key; `end` with its exit code), `output` (bytes of the section `key`, or before any: key ""),
    `error` (the clone failed: `error` is the host's exception), `done`."""

    kind: Literal["start", "output", "end", "error", "done"]
    key: str = ""
    data: bytes = b""
    exit_code: int | None = None
    error: CorralError | None = None


_KEY_RE = re.compile(r"[a-z0-9.-]{1,100}")


class CloneLog:
    """Splits a setup-workspace log (fed in chunks as it arrives) into CloneEvents. Holds at most a
    marker's length of bytes; a marker line longer than MAX_MARKER is output, not a marker."""

    def __init__(self, nonce: str) -> None:
        self.prefix = b"\n" + _marker_prefix(nonce)
        self.buf = bytearray()
        self.key = ""

    def feed(self, chunk: bytes) -> list[CloneEvent]:
        self.buf += chunk
        events: list[CloneEvent] = []
        while True:
            at = self.buf.find(self.prefix)
            if at < 0:  # keep a tail that may be the beginning of a marker
                tail = self.buf.rfind(b"\n", max(0, len(self.buf) - len(self.prefix) + 1))
                partial = tail >= 0 and self.prefix.startswith(self.buf[tail:])
                self._output(events, tail if partial else len(self.buf))
                return events
            self._output(events, at)
            end = self.buf.find(b"\n", len(self.prefix))
            if end < 0:
                if len(self.buf) > MAX_MARKER:  # no marker: podside writes short ones
                    self._output(events, len(self.buf))
                return events
            line = bytes(self.buf[len(self.prefix) : end])
            del self.buf[: end + 1]
            events.append(self._marker(line))

    def close(self) -> list[CloneEvent]:
        events: list[CloneEvent] = []
        self._output(events, len(self.buf))
        return events

    def _output(self, events: list[CloneEvent], upto: int) -> None:
        if upto > 0:
            events.append(CloneEvent("output", self.key, bytes(self.buf[:upto])))
            del self.buf[:upto]

    def _marker(self, line: bytes) -> CloneEvent:
        words = line.decode("ascii", "replace").split(" ", 2)
        if words[0] == "start" and len(words) == 2 and _KEY_RE.fullmatch(words[1]):
            self.key = words[1]
            return CloneEvent("start", self.key)
        if words[0] == "end" and len(words) == 3 and re.fullmatch(r"-?[0-9]{1,4}", words[2]):
            self.key = ""
            return CloneEvent("end", words[1], exit_code=int(words[2]))
        if words[0] == "done" and len(words) == 1:
            return CloneEvent("done")
        if words[0] == "error":
            try:
                body = json.loads(line[len("error ") :])
                reason = Reason(body["reason"])
                message = str(body["message"])[:MAX_MESSAGE]
            except (ValueError, KeyError, TypeError):
                return CloneEvent("error", error=RuntimeFailure("the pod's setup failed (unreadable error)"))
            exc: CorralError = RuntimeFailure(message, reason=reason)
            if body.get("kind") == "step":
                exc = StepFailed(message, reason)
            return CloneEvent("error", error=exc)
        return CloneEvent("output", self.key, b"\n" + line)


# --- collect: the main container ---------------------------------------------------------------


async def collect(spec: PodJob, workspace: Path, meta: Path, write: Writer) -> None:
    """podside collect: the diff and the outputs as the host makes them, framed onto `write`. An error
    of the host's (the diff over its limit, git failing) is a record too; so is any other failure
    (kind "retry": the host would error the job, not fail it)."""
    raw: bytes | None = None
    try:
        if spec.repository:
            _check_worktree(workspace, spec.repository_directory)
            raw = await diff_bytes(
                _local, spec.repository_directory, spec.commit, workspace=str(workspace), meta=str(meta)
            )
        results = await collect_results(workspace, spec.outputs, None)
    except (RuntimeFailure, OSError) as exc:
        encode_results(write, error=exc)
        return
    encode_results(write, raw or b"", results)


def _check_worktree(workspace: Path, repo_dir: str) -> None:
    """The diff's work tree, workspace/repositoryDirectory, still a directory at every component: a
    step may have replaced one with a symlink, and git would then add and diff what it points to,
    outside the workspace (main mounts job.json and meta.git, which no step sees). No step runs any
    more, so nothing changes it between this check and git."""
    path = workspace
    for part in (p for p in repo_dir.split("/") if p and p != "."):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError as exc:
            mode, why = 0, exc.strerror or str(exc)
        else:
            why = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
        if not stat.S_ISDIR(mode):
            raise RuntimeFailure(
                f"repositoryDirectory {repo_dir[:200]}: {part[:80]!r} is not a directory in the workspace "
                f"any more ({why}): a step replaced it, the diff is not made",
                reason=Reason.DIFF,
            )


async def _local(argv: Sequence[str], env: Mapping[str, str], out: Writer) -> int:
    """The pod's main container is the job's sandbox: git runs right here."""
    return await run(list(argv), cwd=None, env=env, out=out)


def encode_results(
    write: Writer, diff: bytes = b"", results: Results | None = None, *, error: BaseException | None = None
) -> None:
    """Frame a diff (raw bytes, as diff_bytes makes it) and the outputs and problems of `results`, or
    an error (RuntimeFailure: the job fails, as on the host; anything else: it errors)."""
    write(MAGIC + b"\n")
    count = 0

    def header(**fields: Any) -> None:
        nonlocal count
        write(json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode() + b"\n")
        count += 1

    def record(kind: str, data: bytes, **extra: Any) -> None:
        packed = zlib.compress(data, 6)
        sha = hashlib.sha256(data).hexdigest()
        header(record=kind, **extra, size=len(data), zsize=len(packed), sha256=sha)
        text = base64.b64encode(packed)
        for i in range(0, len(text), LINE):
            write(text[i : i + LINE] + b"\n")

    if error is not None:
        if isinstance(error, RuntimeFailure):
            kind, reason, message = "runtime", error.reason, error.message
        else:
            kind, reason, message = "retry", Reason.RUNTIME, str(error)
        header(record="error", kind=kind, reason=str(reason), message=message[:MAX_MESSAGE])
    else:
        assert results is not None
        if diff:
            record("diff", diff)
        problems = list(results.problems)
        for path, b64 in results.files.items():
            if len(path.encode()) > MAX_PATH_BYTES:
                problems.append(f"output {path[:80]}...: its path is longer than {MAX_PATH_BYTES} bytes")
                continue
            record("output", base64.b64decode(b64), path=path)
        for text in problems[:MAX_PROBLEMS]:
            header(record="problem", text=text[:MAX_MESSAGE])
    write(json.dumps({"record": "end", "records": count}).encode() + b"\n")


class MalformedResults(ValueError):
    """The main container's log is not a well-formed, complete results stream."""


@dataclass
class _Body:
    kind: str
    path: str
    size: int
    zsize: int
    sha256: str
    lines_left: int
    last_len: int
    inflate: Any = field(default_factory=zlib.decompressobj)
    data: bytearray = field(default_factory=bytearray)
    digest: Any = field(default_factory=hashlib.sha256)


class ResultsDecoder:
    """Decodes a results stream fed in chunks (`feed`, then `finish` -> Results). Refuses, with a
    MalformedResults naming what is wrong, anything but the frame collect prints: a line too long, a
    record over the host's bounds (declared up front, checked before its body is read), a body whose
    length, zlib stream or SHA-256 does not match, a missing or extra record, a truncated stream.
    Raises the host's error (RuntimeFailure, or OSError for one that errors the job) when collect
    failed. Holds the decoded data (within the host's bounds) plus at most one line. `outputs`: the
    job's declared outputs (plan.outputs); an output record of any other path is refused (None: any
    path in the workspace)."""

    def __init__(self, outputs: Iterable[str] | None = None) -> None:
        self.outputs = frozenset(outputs) if outputs is not None else None
        self.pending = bytearray()
        self.seen = 0
        self.started = False
        self.preamble = bytearray()
        self.body: _Body | None = None
        self.records = 0
        self.ended = False
        self.diff: bytes | None = None
        self.files: dict[str, str] = {}
        self.problems: list[str] = []
        self.outputs_total = 0
        self.error: BaseException | None = None

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > MAX_RESULTS_BYTES:
            raise MalformedResults(f"the results stream is longer than {MAX_RESULTS_BYTES} bytes")
        self.pending += chunk
        start = 0
        while (end := self.pending.find(b"\n", start)) >= 0:
            self._line(bytes(self.pending[start:end]))
            start = end + 1
        del self.pending[:start]
        limit = LINE if self.body is not None else MAX_HEADER
        if len(self.pending) > limit:
            raise MalformedResults(f"a line of the results stream is longer than {limit} bytes")

    def finish(self) -> Results:
        if self.pending:
            raise MalformedResults("the results stream ends inside a line (truncated)")
        if not self.started:
            seen = bytes(self.preamble[-500:]).decode("utf-8", "replace").strip()
            raise MalformedResults(f"no results in the stream (it printed: {seen!r})")
        if not self.ended:
            raise MalformedResults("the results stream is truncated (no end record)")
        if self.error is not None:
            raise self.error
        problems = tuple(self.problems)
        over = any("limit" in p or "exceed" in p for p in problems)
        diff = (self.diff or b"").decode("utf-8", "replace")
        return Results(diff=diff, files=dict(self.files), problems=problems, over_limit=over)

    def _line(self, line: bytes) -> None:
        if not self.started:
            if line == MAGIC:
                self.started = True
            elif len(self.preamble) + len(line) <= MAX_PREAMBLE:
                self.preamble += line + b"\n"
            else:
                raise MalformedResults(f"more than {MAX_PREAMBLE} bytes before the results")
            return
        if self.ended:
            raise MalformedResults("data after the end record")
        if self.body is not None:
            self._body_line(self.body, line)
        else:
            self._header(line)

    def _header(self, line: bytes) -> None:
        if len(line) > MAX_HEADER:
            raise MalformedResults(f"a record header is longer than {MAX_HEADER} bytes")
        try:
            h = json.loads(line)
        except ValueError:
            raise MalformedResults("a record header is not JSON") from None
        if not isinstance(h, dict):
            raise MalformedResults("a record header is not a JSON object")
        kind = h.get("record")
        if self.error is not None and kind != "end":
            raise MalformedResults("a record after the error record")
        if kind == "end":
            if h != {"record": "end", "records": self.records}:
                raise MalformedResults(f"the end record does not count the {self.records} records sent")
            self.ended = True
            return
        self.records += 1
        if kind == "problem":
            text = h.get("text")
            if set(h) != {"record", "text"} or not isinstance(text, str) or len(text) > MAX_MESSAGE:
                raise MalformedResults("a problem record is malformed")
            if len(self.problems) >= MAX_PROBLEMS:
                raise MalformedResults(f"more than {MAX_PROBLEMS} problem records")
            self.problems.append(text)
        elif kind == "error":
            self._error(h)
        elif kind in ("diff", "output"):
            self._start_body(kind, h)
        else:
            raise MalformedResults(f"unknown record {str(kind)[:40]!r}")

    def _error(self, h: dict[str, Any]) -> None:
        message, reason, how = h.get("message"), h.get("reason"), h.get("kind")
        if set(h) != {"record", "kind", "reason", "message"} or not isinstance(message, str):
            raise MalformedResults("an error record is malformed")
        if len(message) > MAX_MESSAGE or how not in ("runtime", "retry"):
            raise MalformedResults("an error record is malformed")
        if self.diff is not None or self.files or self.problems:
            raise MalformedResults("an error record after results")
        try:
            why = Reason(str(reason))
        except ValueError:
            raise MalformedResults(f"an error record names an unknown reason {str(reason)[:40]!r}") from None
        self.error = RuntimeFailure(message, reason=why) if how == "runtime" else OSError(message)

    def _start_body(self, kind: str, h: dict[str, Any]) -> None:
        keys = {"record", "size", "zsize", "sha256"} | ({"path"} if kind == "output" else set())
        size, zsize, sha = h.get("size"), h.get("zsize"), h.get("sha256")
        if set(h) != keys or not all(type(v) is int for v in (size, zsize)) or not isinstance(sha, str):
            raise MalformedResults(f"a {kind} record header is malformed")
        assert isinstance(size, int) and isinstance(zsize, int)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise MalformedResults(f"a {kind} record's sha256 is not a SHA-256")
        path = ""
        if kind == "diff":
            if self.diff is not None or self.files or self.problems:
                raise MalformedResults("a second diff record, or one after the outputs")
            if size > MAX_DIFF:
                raise MalformedResults(f"the diff record declares {size} bytes, over the limit of {MAX_DIFF}")
        else:
            path = h.get("path")  # type: ignore[assignment]
            if not isinstance(path, str) or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
                raise MalformedResults("an output record's path is malformed")
            try:
                check_workspace_path(path)
            except ValueError:
                raise MalformedResults(f"an output's path {path[:80]!r} leaves the workspace") from None
            if self.outputs is not None and path not in self.outputs:
                raise MalformedResults(f"output {path[:80]!r} is not a declared output of the job")
            if path in self.files or len(self.files) >= MAX_OUTPUTS or self.problems:
                raise MalformedResults(f"output {path[:80]!r}: a duplicate, or over {MAX_OUTPUTS} outputs")
            if size > MAX_OUTPUT_FILE or self.outputs_total + size > MAX_OUTPUTS_TOTAL:
                raise MalformedResults(f"output {path[:80]!r} declares {size} bytes, over the bounds")
        if not 0 <= size or not 0 < zsize <= _zbound(size):
            raise MalformedResults(f"a {kind} record declares impossible sizes")
        chars = 4 * math.ceil(zsize / 3)
        lines = math.ceil(chars / LINE)
        self.body = _Body(kind, path, size, zsize, sha, lines, chars - (lines - 1) * LINE)

    def _body_line(self, body: _Body, line: bytes) -> None:
        want = LINE if body.lines_left > 1 else body.last_len
        if len(line) != want:
            raise MalformedResults(f"a {body.kind} record's body line has {len(line)} characters, not {want}")
        try:
            packed = binascii.a2b_base64(line, strict_mode=True)
        except binascii.Error:
            raise MalformedResults(f"a {body.kind} record's body is not base64") from None
        room = body.size - len(body.data)
        try:
            out = body.inflate.decompress(packed, room + 1)
        except zlib.error:
            raise MalformedResults(f"a {body.kind} record's body is not a zlib stream") from None
        if len(out) > room or body.inflate.unconsumed_tail:
            raise MalformedResults(f"a {body.kind} record's body is longer than its {body.size} bytes")
        body.data += out
        body.digest.update(out)
        body.lines_left -= 1
        if body.lines_left:
            return
        self.body = None
        if not body.inflate.eof or body.inflate.unused_data or len(body.data) != body.size:
            raise MalformedResults(f"a {body.kind} record's body does not hold its {body.size} bytes")
        if body.digest.hexdigest() != body.sha256:
            raise MalformedResults(f"a {body.kind} record's body does not match its sha256")
        if body.kind == "diff":
            self.diff = bytes(body.data)
        else:
            self.files[body.path] = base64.b64encode(body.data).decode()
            self.outputs_total += body.size


def decode_results(stream: bytes | Iterable[bytes], *, outputs: Iterable[str] | None = None) -> Results:
    """The Results of a main container's whole log (bytes, or chunks): see ResultsDecoder."""
    decoder = ResultsDecoder(outputs)
    for chunk in [stream] if isinstance(stream, bytes | bytearray) else stream:
        decoder.feed(bytes(chunk))
    return decoder.finish()


# --- the command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podside", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, workspace, meta in (
        ("clone", SETUP_WORKSPACE, SETUP_META),
        ("collect", WORKSPACE_MOUNT, META_MOUNT),
    ):
        p = sub.add_parser(name)
        p.add_argument("--config", type=Path, default=Path(SECRETS_MOUNT, SPEC_KEY), help="job.json")
        p.add_argument("--workspace", type=Path, default=Path(workspace))
        p.add_argument("--git-dir", type=Path, default=Path(meta), help="the diff's git dir (meta.git)")
        if name == "clone":
            p.add_argument("--secrets", type=Path, default=Path(SECRETS_MOUNT), help="token, file-N")
    args = parser.parse_args(argv)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)

    if args.command == "clone":
        return asyncio.run(clone(args.config, args.secrets, args.workspace, args.git_dir, out))
    try:
        spec = PodJob.from_json(_read_secret(args.config, MAX_SPEC))
    except (OSError, ValueError, RuntimeFailure) as exc:
        encode_results(write, error=OSError(f"podside: cannot read the job: {exc}"))
        out.flush()
        return 0
    asyncio.run(collect(spec, args.workspace, args.git_dir, write))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
