"""corral's exceptions, in one tree.

    CorralError
    ├── ConfigError          a setting is missing or malformed (names the variable)
    ├── StoreError           the job store refused an operation
    │   ├── NotFound         unknown job, queue, repository or log entry          (HTTP 404)
    │   ├── Conflict         a stale attempt, a finished job, a log offset mismatch (HTTP 409)
    │   └── Invalid          bad input: a bad name, a missing commit, a path escaping the workspace (400)
    ├── ApiError             the server refuses a request (server side)
    │   ├── BadRequest       a malformed request: a missing header or field          (400)
    │   ├── Unauthorized     a missing or wrong token                                 (401)
    │   ├── Forbidden        a valid token that does not open this object             (403)
    │   ├── Gone             a route switched off on this server                      (404)
    │   ├── TooLarge         a body or a value over the server's bound                (413)
    │   └── NotConfigured    the server lacks a setting the route needs               (500)
    ├── VersionSkew          executor and server are more than one minor version apart (400)
    ├── ServerError          a client (executor, producer) could not talk to the server (after retries)
    │   └── StaleAttempt     the server refused a write about a job (409): resync offset, or a lost attempt
    ├── RuntimeFailure       a runtime could not run a step (image missing, sandbox failed...)
    ├── StepFailed           a step (or the job's setup) ended badly: the job fails, no retry (executor)
    ├── DockerAPIError       the Docker Engine refused a request or could not be reached (docker runtime)
    ├── KubernetesAPIError   the Kubernetes API refused a request or could not be reached (kubernetes runtime)
    ├── FirecrackerAPIError  Firecracker's API refused a call or could not be reached (firecracker runtime)
    └── CgroupError          a cgroup could not be created, configured or removed (shell runtime)

`Reason` names why a step or a job did not succeed (RuntimeFailure.reason, StepResult.reason,
StepFailed.reason; the executor sends it with the results as `outcome`). DockerAPIError,
KubernetesAPIError, FirecrackerAPIError and CgroupError stay inside their runtime: it maps them to
RuntimeFailure (or a StepResult) at its seam.

Every class carries a message a person understands (by default its docstring). The server maps
these classes to HTTP statuses in one table (corral.server.statuses); the HTTP clients raise
ServerError, never a StoreError.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a step or a job did not succeed (plain strings on the wire)."""

    RUNTIME = "runtime"  # the runtime broke (default of RuntimeFailure)
    IMAGE = "image"  # the step's image is missing, refused or cannot be pulled
    DOCKER = "docker"  # the Docker Engine refused or failed a request
    SANDBOX = "sandbox"  # the sandbox (bubblewrap, cgroups, seccomp) could not be built
    DISK = "disk"  # a step wrote more than the job's disk limit
    OOM = "oom"  # a step ran out of the job's memory
    EXIT = "exit"  # a step exited non-zero
    TIMEOUT = "timeout"  # the job ran longer than its maximum runtime
    FILES = "files"  # the job's files or repository directory are invalid
    REDACTION = "redaction"  # the job's redacted values are over their bounds
    CLONE = "clone"  # cloning the repository failed
    GIT = "git"  # a git command of the workspace failed
    DIFF = "diff"  # the diff could not be made


class CorralError(Exception):
    """Something went wrong in corral."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(CorralError):
    """A setting is missing or malformed."""


class StoreError(CorralError):
    """The job store refused the operation."""


class NotFound(StoreError):
    """No such object."""


class Conflict(StoreError):
    """The operation conflicts with the object's current state."""

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class Invalid(StoreError):
    """The input is not valid."""


class ApiError(CorralError):
    """The server refused the request. Rendered as {"error": message} plus the `extra` fields; the
    server's one table (corral.server.statuses) gives each subclass its HTTP status."""

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class BadRequest(ApiError):
    """The request is malformed."""


class Unauthorized(ApiError):
    """The request lacks a valid token."""


class Forbidden(ApiError):
    """The token does not open this object."""


class Gone(ApiError):
    """This route is switched off on this server."""


class TooLarge(ApiError):
    """The request is over one of the server's bounds."""


class NotConfigured(ApiError):
    """The server lacks a setting this route needs."""


class VersionSkew(CorralError):
    """Executor and server versions are too far apart."""


class ServerError(CorralError):
    """The server could not be reached or answered with an error."""

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StaleAttempt(ServerError):
    """The server refused a write about a job (409): a log offset to resync to (`offset`), or an
    attempt that is no longer the job's live one (`offset` None)."""

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        super().__init__(message, status=409)
        self.offset = offset


class RuntimeFailure(CorralError):
    """The runtime could not run the step."""

    def __init__(self, message: str | None = None, *, reason: Reason | str = Reason.RUNTIME) -> None:
        super().__init__(message)
        self.reason = Reason(reason)


class StepFailed(CorralError):
    """A step ended badly; the job fails with this message (a retry would fail the same way)."""

    def __init__(self, message: str, reason: Reason | str) -> None:
        super().__init__(message)
        self.reason = Reason(reason)

    @property
    def outcome(self) -> Reason:
        """The name the results upload uses (`outcome`)."""
        return self.reason


class DockerAPIError(CorralError):
    """The Docker Engine refused a request, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FirecrackerAPIError(CorralError):
    """Firecracker's API refused a call (its fault_message), or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubernetesAPIError(CorralError):
    """The Kubernetes API refused a request, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the Status object's machine-readable reason (NotFound, Forbidden, ...)


class CgroupError(CorralError):
    """A cgroup could not be created, configured or removed."""
