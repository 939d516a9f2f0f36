"""The producer API (`/api/v1`, admin token): every request and response body.

    POST /repos                     RepoIn -> RepoAdded          GET /repos -> [RepoView]
    GET  /queues -> [QueueView]     POST /queues/{queue}/jobs    JobIn -> JobView
    GET  /jobs -> [JobView]         GET /jobs/{id} -> JobView    POST /jobs/{id}/cancel -> JobView
    GET  /jobs/{id}/logs -> JobLogs GET /jobs/{id}/logs/stream   NDJSON of LogEvent
    GET  /jobs/{id}/result -> ResultView                         GET /executors -> [ExecutorView]
    PUT  /files/{bucket}/{key}      raw bytes -> FileView        GET /files/{bucket}/{key} -> bytes
    GET  /files/{bucket} -> [FileView]                           DELETE /files/{bucket}/{key}

The server answers with these models and corral's producer client parses them. A JobView never
holds a secret: the server redacts it (corral.server.jobview).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.protocol.common import ZERO_TIME, Wire, check_file_ref, check_workspace_dir, check_workspace_path
from corral.protocol.queue import CliStep, DockerStep
from corral.protocol.secrets import (
    DOCKER_AUTH_CONFIG,
    MAX_JOB_SECRETS,
    MAX_NAMESPACE,
    check_namespace,
    check_secret_name,
)

__all__ = [
    "FAIL_FAST_LINE",
    "MAX_FILES",
    "MAX_FILES_BYTES",
    "MAX_OUTPUTS",
    "MAX_REDACTED_BYTES",
    "MAX_REDACTED_VALUES",
    "MAX_REFERENCED_FILES_BYTES",
    "MAX_STEPS",
    "MAX_STORED_FILE_BYTES",
    "MAX_TIMEOUT",
    "DockerStepIn",
    "EntryEvent",
    "ExecutorView",
    "ExitEvent",
    "FileIn",
    "FileView",
    "JobIn",
    "JobLogs",
    "JobView",
    "LogEntryView",
    "LogEvent",
    "OutputEvent",
    "QueueView",
    "RepoAdded",
    "RepoIn",
    "RepoView",
    "ResultView",
    "StateEvent",
]

MAX_TIMEOUT = 7 * 24 * 3600  # seconds
AUTH_KEYS = {"auth", "username", "password", "identitytoken"}  # of one registry in dockerAuthConfig
RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})", re.ASCII
)
# Bounds on what one job may carry (checked at submit; the executor builds a redactor from the
# redacted values on every attempt and writes every file, so these bound its work too).
MAX_REDACTED_VALUES = 1_000  # entries of redactedValues
MAX_REDACTED_BYTES = 1024 * 1024  # bytes of redactedValues keys and values together (UTF-8)
MAX_FILES = 1_000  # files written into the workspace
MAX_FILES_BYTES = 32 * 1024 * 1024  # bytes of all files' contents together, decoded
MAX_STORED_FILE_BYTES = 32 * 1024 * 1024  # bytes of one file in the file store (PUT /files/...)
MAX_REFERENCED_FILES_BYTES = 256 * 1024 * 1024  # bytes of the stored files one job names together
MAX_STEPS = 100  # dockerSteps and cliSteps together
MAX_OUTPUTS = 1_000  # output paths


class Model(BaseModel):
    """Base of the producer's request bodies: unknown fields are refused (a typo is an error)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class RepoIn(Model):
    name: str
    path: str


class FileIn(Model):
    """A file to write into the workspace: text `content`, bytes as `contentBase64`, or a file of
    the file store by `bucket` and `key` (it must exist when the job is submitted; the executor
    fetches it from /.executors/files/<bucket>/<key> with the job's token, as Sourcegraph's do)."""

    content: str | None = None
    content_base64: str | None = Field(default=None, alias="contentBase64")
    bucket: str | None = None
    key: str | None = None
    modified_at: str | None = Field(default=None, alias="modifiedAt")

    @field_validator("modified_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        # Go decodes it as time.Time (RFC 3339): anything else would make the job unreadable.
        if v is not None and not RFC3339_RE.fullmatch(v):
            raise ValueError(f"modifiedAt {v[:40]!r} is not an RFC 3339 time (2006-01-02T15:04:05Z)")
        return v

    @model_validator(mode="after")
    def _one(self) -> FileIn:
        given = [self.content is not None, self.content_base64 is not None, self.stored]
        if sum(given) > 1:
            raise ValueError("give either content, contentBase64 or bucket and key, not several")
        if (self.bucket is None) != (self.key is None):
            raise ValueError("a stored file needs both bucket and key")
        if self.bucket is not None and self.key is not None:
            check_file_ref(self.bucket, self.key)
        if self.content_base64 is not None:
            try:
                base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("contentBase64 is not valid base64") from None
        return self

    @property
    def stored(self) -> bool:
        """The file is in the file store (bucket and key), not in the job."""
        return self.bucket is not None or self.key is not None

    def spec(self) -> dict[str, str]:
        """How the job keeps it: base64 `content`, or `bucket` and `key`; and `modifiedAt`."""
        modified = self.modified_at or ZERO_TIME
        if self.bucket is not None and self.key is not None:
            return {"bucket": self.bucket, "key": self.key, "modifiedAt": modified}
        return {"content": self.as_base64(), "modifiedAt": modified}

    def decoded_size(self) -> int:
        """Bytes of the content the job carries (0 for a stored file)."""
        if self.content_base64 is not None:
            b64 = self.content_base64
            return len(b64) * 3 // 4 - b64[-2:].count("=")
        return len((self.content or "").encode())

    def as_base64(self) -> str:
        if self.content_base64 is not None:
            return self.content_base64
        return base64.b64encode((self.content or "").encode()).decode()


FAIL_FAST_LINE = "set -e"  # what a fail-fast docker step's script runs first


class DockerStepIn(DockerStep):
    """A docker step as a producer submits it: Sourcegraph's fields plus `failFast` (None: the job's)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    fail_fast: bool | None = Field(default=None, alias="failFast")


class JobIn(Model):
    """A job as corral's producers submit it.

    When a step fails: a docker step's commands run as one `/bin/sh` script. With `failFast` (the
    default for corral's producer API, `corral job submit` and batch specs; per job, or per step
    to override the job's) the first command that exits non-zero ends the step with its exit code,
    as Buildkite's `bash -e` and GitLab's `script:` do: the server writes `set -e` as the step's
    first command (shown in the job view), so this holds on Sourcegraph's executors too. With
    `failFast: false` the step runs every command, as Sourcegraph's executor scripts (`set +e`) do,
    and only the last command's exit code counts. A CLI step is one command: its exit code is the
    step's. A step that fails ends the job (failed); later steps do not run."""

    repository_name: str = Field(default="", alias="repositoryName")
    commit: str = ""
    repository_directory: str = Field(default="", alias="repositoryDirectory")
    fetch_tags: bool = Field(default=False, alias="fetchTags")
    shallow_clone: bool = Field(default=False, alias="shallowClone")
    sparse_checkout: list[str] | None = Field(default=None, alias="sparseCheckout")
    files: dict[str, FileIn] = Field(default_factory=dict)
    docker_steps: list[DockerStepIn] = Field(default_factory=list, alias="dockerSteps")
    cli_steps: list[CliStep] = Field(default_factory=list, alias="cliSteps")
    fail_fast: bool = Field(default=True, alias="failFast")
    redacted_values: dict[str, str] | None = Field(default=None, alias="redactedValues")
    docker_auth_config: dict[str, Any] | None = Field(default=None, alias="dockerAuthConfig")
    namespace: str | None = Field(default=None, max_length=MAX_NAMESPACE)  # user:NAME, org:NAME
    secrets: list[str] | None = Field(default=None, max_length=MAX_JOB_SECRETS)  # executor secrets' names
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds", gt=0, le=MAX_TIMEOUT)
    priority: int = 0
    outputs: list[str] | None = None
    max_attempts: int | None = Field(default=None, alias="maxAttempts", ge=1, le=20)
    # the job needs the network: it gets the executor's EXECUTOR_NETWORK (an executor with none fails it)
    network: bool | None = None

    @field_validator("docker_auth_config")
    @classmethod
    def _auth_config(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """Docker's config shape, as Go decodes it into the Job (`auths`: registry -> `auth`, the
        padded base64 of user:password, or username/password, or identitytoken; all strings): a
        shape Go cannot decode would leave the job unreadable by every Sourcegraph executor."""
        if v is None:
            return v
        if set(v) - {"auths"} or not isinstance(v.get("auths", {}), dict):
            raise ValueError(
                'dockerAuthConfig must be {"auths": {"<registry>": {"auth": "<base64 user:password>"}}}'
            )
        for registry, entry in v.get("auths", {}).items():
            where = f"dockerAuthConfig.auths[{registry[:100]!r}]"
            if not isinstance(entry, dict) or not entry or set(entry) - AUTH_KEYS:
                raise ValueError(f"{where} must hold auth, username/password or identitytoken")
            if not all(isinstance(x, str) for x in entry.values()):
                raise ValueError(f"{where}: every value is a string")
            if "auth" in entry:
                try:
                    ok = b":" in base64.b64decode(entry["auth"], validate=True)
                except (binascii.Error, ValueError):
                    ok = False
                if not ok:
                    raise ValueError(f"{where}.auth is not base64 of user:password")
        return v

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: list[str] | None) -> list[str] | None:
        if v and DOCKER_AUTH_CONFIG in v:  # registry credentials serve the pulls; steps never see them
            raise ValueError(
                f"{DOCKER_AUTH_CONFIG} is used for the job's image pulls and is never given to steps; "
                "do not name it in secrets"
            )
        return list(dict.fromkeys(check_secret_name(n) for n in v)) if v else None

    @model_validator(mode="after")
    def _secret_scope(self) -> JobIn:
        """A job naming secrets resolves them in its namespace (then globally): it must be one."""
        if self.secrets:
            check_namespace(self.namespace)
        return self

    @field_validator("files")
    @classmethod
    def _paths(cls, v: dict[str, FileIn]) -> dict[str, FileIn]:
        return {check_workspace_path(p): f for p, f in v.items()}

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str] | None) -> list[str] | None:
        return [check_workspace_path(p) for p in v] if v else v

    @model_validator(mode="after")
    def _bounds(self) -> JobIn:
        values = self.redacted_values or {}
        if len(values) > MAX_REDACTED_VALUES:
            raise ValueError(
                f"redactedValues has {len(values)} entries, over the limit of {MAX_REDACTED_VALUES}"
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
        if size > MAX_REDACTED_BYTES:
            raise ValueError(
                f"redactedValues total {size} bytes, over the limit of {MAX_REDACTED_BYTES} bytes"
            )
        if len(self.files) > MAX_FILES:
            raise ValueError(f"the job has {len(self.files)} files, over the limit of {MAX_FILES}")
        size = sum(f.decoded_size() for f in self.files.values())
        if size > MAX_FILES_BYTES:
            raise ValueError(f"the job's files total {size} bytes, over the limit of {MAX_FILES_BYTES} bytes")
        steps = len(self.docker_steps) + len(self.cli_steps)
        if steps > MAX_STEPS:
            raise ValueError(f"the job has {steps} steps, over the limit of {MAX_STEPS}")
        if len(self.outputs or []) > MAX_OUTPUTS:
            raise ValueError(
                f"the job names {len(self.outputs or [])} outputs, over the limit of {MAX_OUTPUTS}"
            )
        return self

    @model_validator(mode="after")
    def _steps(self) -> JobIn:
        if not self.docker_steps and not self.cli_steps:
            raise ValueError("a job needs at least one step (dockerSteps or cliSteps)")
        for s in self.docker_steps:
            if not s.image.strip():
                raise ValueError("every docker step needs an image")
        steps: list[DockerStep | CliStep] = [*self.docker_steps, *self.cli_steps]
        for step in steps:
            for e in step.env or []:
                if "=" not in e:
                    raise ValueError(f"step env entry {e!r} is not NAME=value")
            check_workspace_dir(step.dir)  # "." is the workspace (batch changes' pre/post steps)
        check_workspace_dir(self.repository_directory)
        for p in self.sparse_checkout or []:
            if p.startswith("-"):
                raise ValueError(f"sparse checkout pattern {p!r} may not start with '-'")
        return self

    @model_validator(mode="after")
    def _fail_fast(self) -> JobIn:
        for s in self.docker_steps:
            fast = self.fail_fast if s.fail_fast is None else s.fail_fast
            if fast and s.commands[:1] != [FAIL_FAST_LINE]:
                s.commands = [FAIL_FAST_LINE, *s.commands]
        return self


# -- responses ------------------------------------------------------------------------------------
class RepoAdded(Wire):
    name: str
    source: str
    created: bool


class RepoView(Wire):
    name: str
    source: str
    updated_at: str | None = Field(alias="updatedAt")


class FileView(Wire):
    """A file of the file store (its content is fetched separately)."""

    bucket: str
    key: str
    size: int
    sha256: str
    created_at: str | None = Field(alias="createdAt")
    updated_at: str | None = Field(alias="updatedAt")


class QueueView(Wire):
    name: str
    counts: dict[str, int]  # state -> jobs


class JobView(Wire):
    """A job as a producer sees it (secrets redacted, files by size)."""

    id: int
    queue: str
    state: str
    repository_name: str = Field(alias="repositoryName")
    commit: str
    priority: int
    created_at: str | None = Field(alias="createdAt")
    started_at: str | None = Field(alias="startedAt")
    finished_at: str | None = Field(alias="finishedAt")
    executor_name: str | None = Field(alias="executorName")
    attempt: int
    num_resets: int = Field(alias="numResets")
    num_failures: int = Field(alias="numFailures")
    cancel_requested: bool = Field(alias="cancelRequested")
    error: str | None
    outcome: str | None
    exit_codes: list[int] = Field(alias="exitCodes")
    spec: dict[str, Any]  # the submitted fields (wire names), redacted


class LogEntryView(Wire):
    entry_id: int = Field(alias="entryId")
    attempt: int
    key: str
    command: list[str]
    start_time: str = Field(alias="startTime")
    exit_code: int | None = Field(alias="exitCode")
    duration_ms: int | None = Field(alias="durationMs")
    out: str


class JobLogs(Wire):
    job_id: int = Field(alias="jobId")
    entries: list[LogEntryView]


class ResultView(Wire):
    job_id: int = Field(alias="jobId")
    attempt: int
    exit_codes: list[int] = Field(alias="exitCodes")
    diff: str
    files: dict[str, str]  # path -> base64


class ExecutorView(Wire):
    name: str
    hostname: str
    queues: list[str]
    os: str
    architecture: str
    executor_version: str = Field(alias="executorVersion")
    git_version: str = Field(alias="gitVersion")
    docker_version: str = Field(alias="dockerVersion")
    src_cli_version: str = Field(alias="srcCliVersion")
    qemu_version: str = Field(alias="qemuVersion")
    kubernetes_version: str = Field(default="", alias="kubernetesVersion")
    running_job_ids: list[int] = Field(alias="runningJobIds")
    first_seen_at: str | None = Field(alias="firstSeenAt")
    last_seen_at: str | None = Field(alias="lastSeenAt")
    active: bool


# -- the log stream (NDJSON, one event a line) ----------------------------------------------------
class EntryEvent(Wire):
    """A log entry started."""

    type: Literal["entry"] = "entry"
    entry_id: int = Field(alias="entryId")
    key: str
    command: list[str]
    attempt: int | None = None  # the job's attempt that wrote it (None from older servers)


class OutputEvent(Wire):
    """New output of an entry."""

    type: Literal["output"] = "output"
    entry_id: int = Field(alias="entryId")
    data: str
    # bytes of the entry's output up to the end of `data`: resume the stream there (`?from=`)
    offset: int | None = None


class ExitEvent(Wire):
    """An entry ended."""

    type: Literal["exit"] = "exit"
    entry_id: int = Field(alias="entryId")
    exit_code: int | None = Field(alias="exitCode")
    duration_ms: int | None = Field(alias="durationMs")


class StateEvent(Wire):
    """The job ended and everything was sent: the last line."""

    type: Literal["state"] = "state"
    state: str
    error: str | None


LogEvent = Annotated[EntryEvent | OutputEvent | ExitEvent | StateEvent, Field(discriminator="type")]
