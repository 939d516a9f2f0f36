"""The executor queue API: every request and response body, as Sourcegraph's executors send and
expect them (field names and JSON casing exactly), plus corral's optional extensions (fields a
Sourcegraph client ignores, and new endpoints). The server answers with these models and the
executor's client parses them: one contract for both sides.

    POST /.executors/queue/dequeue, /{queue}/dequeue      DequeueRequest -> Job (or 204)
    POST /.executors/queue/heartbeat, /{queue}/heartbeat  HeartbeatRequest -> HeartbeatResponse
    POST .../addExecutionLogEntry                        AddLogEntryRequest -> int (the entry id)
    POST .../updateExecutionLogEntry                     UpdateLogEntryRequest -> 204
    POST .../markComplete, markErrored, markFailed       JobOperation, MarkErrorRequest -> 204
    corral: appendExecutionLogEntry                      AppendLogRequest -> AppendLogResponse
    corral: uploadResult                                 JobResult -> 204
    corral: cancelWatch                                  CancelWatchRequest -> CancelWatchResponse
    corral: reattach                                     ReattachRequest -> ReattachResponse (or 409/404)
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from corral.protocol.common import ZERO_TIME, Wire, now_rfc3339

__all__ = [
    "AddLogEntryRequest",
    "AppendLogRequest",
    "AppendLogResponse",
    "CancelWatchRequest",
    "CancelWatchResponse",
    "CliStep",
    "DequeueRequest",
    "DockerStep",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Job",
    "JobIdsByQueue",
    "JobOperation",
    "JobResult",
    "KnownLogEntry",
    "MarkErrorRequest",
    "ReattachRequest",
    "ReattachResponse",
    "UpdateLogEntryRequest",
    "VirtualMachineFile",
    "go_job_id",
]


# Bounds on what an executor names (Sourcegraph's names are "<hostname>-<uuid4>"; a Sourcegraph
# executor serves one or two queues): a longer name or list is a 400, never a stored megabyte.
MAX_NAME = 256  # characters of an executor name
MAX_QUEUES = 100  # queues of one dequeue or heartbeat


class VirtualMachineFile(Wire):
    # v2 jobs carry base64 bytes in `content`; v1 carries a plain string. See `data()`.
    content: str | None = None
    bucket: str | None = None
    key: str | None = None
    modified_at: str = Field(default=ZERO_TIME, alias="modifiedAt")

    def data(self, job_version: int) -> bytes:
        if self.content is None:
            return b""
        if job_version >= 2:
            return base64.b64decode(self.content, validate=True)
        return self.content.encode()


def _file_or_string(value: Any) -> Any:
    # The oldest form of `files` maps a path to its content string.
    if isinstance(value, str):
        return {"content": value}
    return value


class DockerStep(Wire):
    key: str | None = None
    image: str
    commands: list[str]
    dir: str = ""
    env: list[str] | None = None


class CliStep(Wire):
    key: str | None = None
    command: list[str]
    dir: str = ""
    env: list[str] | None = None


class Job(Wire):
    version: int | None = None
    id: int
    queue: str | None = None
    token: str = ""
    repository_name: str = Field(default="", alias="repositoryName")
    repository_directory: str = Field(default="", alias="repositoryDirectory")
    commit: str = ""
    fetch_tags: bool = Field(default=False, alias="fetchTags")
    shallow_clone: bool = Field(default=False, alias="shallowClone")
    sparse_checkout: list[str] | None = Field(default=None, alias="sparseCheckout")
    files: dict[str, Annotated[VirtualMachineFile, BeforeValidator(_file_or_string)]] = Field(
        default_factory=dict
    )
    docker_steps: list[DockerStep] | None = Field(default=None, alias="dockerSteps")
    cli_steps: list[CliStep] | None = Field(default=None, alias="cliSteps")
    redacted_values: dict[str, str] | None = Field(default=None, alias="redactedValues")
    docker_auth_config: dict[str, Any] | None = Field(default=None, alias="dockerAuthConfig")
    # corral extensions (ignored by a Sourcegraph executor)
    attempt: int | None = None
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds")
    outputs: list[str] | None = None
    namespace: str | None = None
    network: bool | None = None  # the job needs the network (EXECUTOR_NETWORK)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=False)


class DequeueRequest(Wire):
    queues: list[str] | None = Field(default=None, max_length=MAX_QUEUES)
    executor_name: str = Field(default="", alias="executorName", max_length=MAX_NAME)
    version: str = ""
    num_cpus: int | None = Field(default=None, alias="numCPUs")
    memory: str | None = None
    disk_space: str | None = Field(default=None, alias="diskSpace")
    # corral extension: hold the request up to this many seconds while no job is queued.
    wait_seconds: float | None = Field(default=None, alias="waitSeconds")


def go_job_id(value: Any) -> str:
    """A job id of a heartbeat as Sourcegraph's frontend reads it (HeartbeatRequest.UnmarshalJSON,
    internal/executor/types/http.go): a string stays as it is, a JSON number (a float64 in Go) is
    written with strconv.FormatFloat(id, 'f', -1, 64), so 18.0 is "18" and 18.5 is "18.5"; any other
    type is an error ("unknown type for job ID")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"unknown type for job ID: {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"job ID {value} is not a number")
    return format(Decimal(repr(value)).normalize(), "f")


def _go_ids(v: Any) -> Any:
    return [go_job_id(x) for x in v] if isinstance(v, list) else v


class JobIdsByQueue(Wire):
    queue_name: str = Field(alias="queueName")
    job_ids: list[str] = Field(default_factory=list, alias="jobIds")

    @field_validator("job_ids", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: Any) -> Any:
        # Sourcegraph's QueueJobIDs.JobIDs is []string; numbers are accepted here too (as one queue's).
        return [] if v is None else _go_ids(v)


class HeartbeatRequest(Wire):
    version: str = ""
    executor_name: str = Field(default="", alias="executorName", max_length=MAX_NAME)
    job_ids: list[str] = Field(default_factory=list, alias="jobIds")
    job_ids_by_queue: list[JobIdsByQueue] | None = Field(default=None, alias="jobIdsByQueue")
    queue_names: list[str] | None = Field(default=None, alias="queueNames", max_length=MAX_QUEUES)
    os: str = ""
    architecture: str = ""
    docker_version: str = Field(default="", alias="dockerVersion")
    executor_version: str = Field(default="", alias="executorVersion")
    git_version: str = Field(default="", alias="gitVersion")
    ignite_version: str = Field(default="", alias="igniteVersion")
    src_cli_version: str = Field(default="", alias="srcCliVersion")
    prometheus_metrics: str = Field(default="", alias="prometheusMetrics")
    # corral extensions
    hostname: str = ""
    qemu_version: str = Field(default="", alias="qemuVersion")
    kubernetes_version: str = Field(default="", alias="kubernetesVersion")  # the kubernetes runtime's

    @field_validator("job_ids", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: Any) -> Any:
        return [] if v is None else _go_ids(v)


class HeartbeatResponse(Wire):
    """Either list may be null, as Sourcegraph's handler answers (a nil slice), or []."""

    known_ids: list[str] | None = Field(default=None, alias="knownIds")
    cancel_ids: list[str] | None = Field(default=None, alias="cancelIds")

    @field_validator("known_ids", "cancel_ids", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: Any) -> Any:
        return _go_ids(v)


class JobOperation(Wire):
    executor_name: str = Field(default="", alias="executorName", max_length=MAX_NAME)
    job_id: int = Field(alias="jobId")
    attempt: int | None = None  # corral fencing extension


class MarkErrorRequest(JobOperation):
    error_message: str = Field(default="", alias="errorMessage")


class AddLogEntryRequest(JobOperation):
    key: str = ""
    command: list[str] = Field(default_factory=list)
    start_time: str = Field(default_factory=now_rfc3339, alias="startTime")
    exit_code: int | None = Field(default=None, alias="exitCode")
    out: str = ""
    duration_ms: int | None = Field(default=None, alias="durationMs")


class UpdateLogEntryRequest(AddLogEntryRequest):
    entry_id: int = Field(alias="entryId")


class AppendLogRequest(JobOperation):
    """corral extension: append bytes to a log entry at a byte offset (UTF-8)."""

    entry_id: int = Field(alias="entryId")
    offset: int
    data: str = ""
    exit_code: int | None = Field(default=None, alias="exitCode")
    duration_ms: int | None = Field(default=None, alias="durationMs")


class AppendLogResponse(Wire):
    offset: int


class CancelWatchRequest(Wire):
    """corral extension: wait until one of these jobs is canceled (or the wait ends)."""

    executor_name: str = Field(default="", alias="executorName", max_length=MAX_NAME)
    job_ids: list[int] = Field(default_factory=list, alias="jobIds")
    wait_seconds: float = Field(default=20.0, alias="waitSeconds")


class CancelWatchResponse(Wire):
    cancel_ids: list[int] = Field(default_factory=list, alias="cancelIds")


class ReattachRequest(JobOperation):
    """corral extension (executor-authenticated): an executor that restarted asks for a job attempt
    it held before (`attempt` is required): granted only while that attempt is still leased to
    `executorName` (processing, not canceled, heartbeat within the server's stall window)."""


class KnownLogEntry(Wire):
    """One log entry of the attempt as the server has it: where the executor's writes resume."""

    entry_id: int = Field(alias="entryId")
    key: str
    out_len: int = Field(alias="outLen")  # bytes of output stored
    exit_code: int | None = Field(default=None, alias="exitCode")  # None: the entry never finished


class ReattachResponse(Wire):
    """The job as dequeue gave it, with a fresh job token for the same attempt (the old one stops
    working), and the attempt's log entries."""

    job: Job
    entries: list[KnownLogEntry] = Field(default_factory=list)


class JobResult(JobOperation):
    """corral extension: what a job produced, uploaded before it is marked."""

    exit_codes: list[int] = Field(default_factory=list, alias="exitCodes")
    diff: str = ""
    files: dict[str, str] = Field(default_factory=dict)  # path -> base64 content
    outcome: str = ""  # a short machine reason: "", "oom", "timeout", "canceled", "image", ...
