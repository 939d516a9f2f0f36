"""The wire contract shared by the corral server, its executors and its producers.

    common.py    names, headers, the workspace path rule, the model base (`Wire`)
    queue.py     the executor queue API (Sourcegraph's): requests AND responses
    versions.py  executor versions as Sourcegraph reads them (v1 or v2 jobs, refused versions)
    producer.py  the producer API (/api/v1): requests AND responses, the log stream's events
    states.py    job states

Field names and JSON casing follow Sourcegraph's executor queue API exactly (see
../shared/protocol.md). corral's extensions are optional fields that a Sourcegraph client ignores,
or new endpoints; they never change the meaning of an existing field. Nothing here does I/O.
"""

from __future__ import annotations

from corral.protocol.common import (
    EXECUTOR_NAME_HEADER,
    EXTENSIONS,
    EXTENSIONS_HEADER,
    FILE_BUCKET_RE,
    JOB_ID_HEADER,
    LOG_MAX_BYTES_HEADER,
    MAX_FILE_KEY_CHARS,
    QUEUE_NAME_RE,
    ZERO_TIME,
    Wire,
    check_file_ref,
    check_workspace_dir,
    check_workspace_path,
    now_rfc3339,
)
from corral.protocol.producer import (
    EntryEvent,
    ExecutorView,
    ExitEvent,
    FileIn,
    JobIn,
    JobLogs,
    JobView,
    LogEntryView,
    LogEvent,
    OutputEvent,
    QueueView,
    RepoAdded,
    RepoIn,
    RepoView,
    ResultView,
    StateEvent,
)
from corral.protocol.queue import (
    AddLogEntryRequest,
    AppendLogRequest,
    AppendLogResponse,
    CancelWatchRequest,
    CancelWatchResponse,
    CliStep,
    DequeueRequest,
    DockerStep,
    HeartbeatRequest,
    HeartbeatResponse,
    Job,
    JobIdsByQueue,
    JobOperation,
    JobResult,
    MarkErrorRequest,
    UpdateLogEntryRequest,
    VirtualMachineFile,
    go_job_id,
)
from corral.protocol.states import JobState
from corral.protocol.versions import InvalidVersion, check_sourcegraph_version, job_version_for

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
    "AddLogEntryRequest",
    "AppendLogRequest",
    "AppendLogResponse",
    "CancelWatchRequest",
    "CancelWatchResponse",
    "CliStep",
    "DequeueRequest",
    "DockerStep",
    "EntryEvent",
    "ExecutorView",
    "ExitEvent",
    "FileIn",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "InvalidVersion",
    "Job",
    "JobIdsByQueue",
    "JobIn",
    "JobLogs",
    "JobOperation",
    "JobResult",
    "JobState",
    "JobView",
    "LogEntryView",
    "LogEvent",
    "MarkErrorRequest",
    "OutputEvent",
    "QueueView",
    "RepoAdded",
    "RepoIn",
    "RepoView",
    "ResultView",
    "StateEvent",
    "UpdateLogEntryRequest",
    "VirtualMachineFile",
    "Wire",
    "check_file_ref",
    "check_sourcegraph_version",
    "check_workspace_dir",
    "check_workspace_path",
    "go_job_id",
    "job_version_for",
    "now_rfc3339",
]
