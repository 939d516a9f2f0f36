"""corral's exceptions, in one tree.

    CorralError
    ├── ConfigError          a setting is missing or malformed (names the variable)
    ├── StoreError           the job store refused an operation
    │   ├── NotFound         unknown job, queue, repository or log entry
    │   ├── Conflict         a stale attempt, a finished job, a log offset mismatch
    │   └── Invalid          bad input: a bad name, a missing commit, a path escaping the workspace
    ├── VersionSkew          executor and server are more than one minor version apart
    ├── ServerError          the executor could not talk to the server (after retries)
    └── RuntimeFailure       a runtime could not run a step (image missing, sandbox failed...)

Every class carries a message a person understands; the server maps StoreError subclasses to HTTP
statuses in one place (corral.server.app).
"""

from __future__ import annotations


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


class VersionSkew(CorralError):
    """Executor and server versions are too far apart."""


class ServerError(CorralError):
    """The server could not be reached or answered with an error."""

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RuntimeFailure(CorralError):
    """The runtime could not run the step."""

    def __init__(self, message: str | None = None, *, reason: str = "runtime") -> None:
        super().__init__(message)
        self.reason = reason
