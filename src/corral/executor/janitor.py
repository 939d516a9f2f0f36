"""The janitor: remove what corral created for jobs that no longer run here (an executor killed
mid-job leaves containers, cgroups and workspaces behind).

The decision is `orphans(running, expected)`, pure: every resource found (by name, with the job
label it carries) whose label is not one of a live job's. Each runtime and the workspace sweep list
their resources and ask it; `sweep_once` runs them all (every runtime the executor uses: the main
one and the one running CLI steps) and logs, never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path

from corral.executor.runtimes.base import Runtime

__all__ = ["orphans", "sweep_once"]

log = logging.getLogger("corral.executor")


def orphans(running: Mapping[str, str | None], expected: Set[str]) -> list[str]:
    """Names in `running` (resource name -> its job label) whose label is not in `expected`, sorted."""
    return sorted(name for name, label in running.items() if label not in expected)


async def sweep_once(
    runtimes: Iterable[Runtime],
    live: Callable[[], set[str]],
    *,
    workspace_root: Path,
    owner: str,
    keep_workspaces: bool,
) -> None:
    from corral.executor.workspace import host

    try:
        swept = await asyncio.to_thread(host.sweep, workspace_root, owner, live, keep=keep_workspaces)
        if swept:
            log.info("janitor removed workspaces of jobs no longer running: %s", ", ".join(swept))
    except Exception as exc:
        log.warning("workspace janitor failed: %s", exc)
    labels = live()
    for runtime in runtimes:
        try:
            removed = await runtime.janitor(labels)
            if removed:
                log.info("janitor removed %s orphans: %s", runtime.name, ", ".join(removed))
        except Exception as exc:
            log.warning("%s janitor failed: %s", runtime.name, exc)
