"""The workspace seam: where a job's files live, and who clones, writes files and collects results.

The handler talks only to this Protocol. `HostWorkspace` (host.py) keeps the workspace on the
executor host and runs the diff in the job's sandbox; a pod or a microVM can implement the same
calls inside the sandbox later (clone in an init step, results read back through the runtime).

Lifecycle, per job: prepare(space) -> clone(...) when the job names a repository -> write_files
(and write_stream for files fetched from the server) -> (the runtime runs the steps; take_file
reads what a step leaves for the executor, e.g. Sourcegraph's skip.json) -> collect(...) ->
cleanup(space). `cleanup` runs exactly once, also after a failed prepare, and never raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace

__all__ = ["CommandLog", "LogOpener", "Results", "Workspace"]


class CommandLog(Protocol):
    """One log entry a workspace command writes to (corral.executor.logs.LogEntry)."""

    exit_code: int | None

    def write(self, data: bytes) -> None: ...


class LogOpener(Protocol):
    def __call__(self, key: str, command: list[str]) -> AbstractAsyncContextManager[CommandLog]: ...


@dataclass(frozen=True)
class Results:
    """What a job produced: the diff of its repository and its declared output files."""

    diff: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    # one line per output that could not be read; `over_limit` when one names a size bound
    problems: tuple[str, ...] = ()
    over_limit: bool = False


class Workspace(Protocol):
    async def prepare(self, space: JobSpace) -> None:
        """Create the job's private directories (and its disk quota)."""
        ...

    async def clone(self, space: JobSpace, plan: JobPlan, token: str, open_log: LogOpener) -> None:
        """Check out plan.repository at plan.commit; each git command logs through `open_log`."""
        ...

    async def write_files(self, space: JobSpace, files: Mapping[str, bytes]) -> None:
        """Write the job's files (paths relative to the workspace). ValueError/RuntimeFailure if bad."""
        ...

    async def write_stream(self, space: JobSpace, rel: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Write the file `rel` (relative to the workspace) from `chunks`; returns its size.
        safefs.TooLarge once more than `limit` bytes arrive; ValueError/RuntimeFailure if `rel` is bad."""
        ...

    async def take_file(self, space: JobSpace, name: str, limit: int) -> bytes | None:
        """Read and remove the file `name` a step left at the top of the workspace (None when there is
        none). safefs.UnsafePath (a link, not a regular file, over `limit` bytes) when it is not one."""
        ...

    async def write_scripts(self, space: JobSpace, scripts: Mapping[str, str]) -> None:
        """Write the step scripts where every sandbox sees them read-only (SCRIPTS_MOUNT)."""
        ...

    async def collect(self, space: JobSpace, plan: JobPlan) -> Results:
        """The diff (when the job cloned a repository) and the declared outputs."""
        ...

    async def cleanup(self, space: JobSpace) -> None: ...
