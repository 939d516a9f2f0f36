"""The janitor: remove what corral created for jobs that no longer run here (an executor killed
mid-job leaves containers, cgroups and workspaces behind).

The decision is `orphans(running, expected)`, pure: every resource found (by name, with the job
label it carries) whose label is not one of a live job's. Each runtime and the workspace sweep list
their resources (only those carrying their owner label, EXECUTOR_VM_PREFIX) and ask it; `sweep_once`
runs them all (every runtime the executor uses: the main one and the one running CLI steps) and
the network sweep (`egress.sweep`: job namespaces and slirp4netns of dead jobs), logs each
removal, and never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path

from corral.executor.network import egress
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
) -> list[str]:
    """One sweep of `owner`'s resources (EXECUTOR_VM_PREFIX): every runtime's and the workspaces.

    Runtimes list only resources labelled with their own owner, so executors sharing a host never
    touch each other's jobs. Every removal is logged (a warning, one line per resource, naming the
    owner): removing something is never silent. Returns what was removed, as "<kind> <name>"."""
    from corral.executor.workspace import host

    removed: list[str] = []
    try:
        swept = await asyncio.to_thread(host.sweep, workspace_root, owner, live, keep=keep_workspaces)
        removed += _logged("workspace", swept, owner, "unmounted" if keep_workspaces else "removed")
    except Exception as exc:
        log.warning("workspace janitor failed: %s", exc)
    labels = live()
    for runtime in runtimes:
        try:
            removed += _logged(runtime.name, await runtime.janitor(labels), owner, "removed")
        except Exception as exc:
            log.warning("%s janitor failed: %s", runtime.name, exc)
    try:  # after the runtimes: a docker pause container is gone, its namespace's name is left
        removed += _logged("network", await egress.sweep(owner, live), owner, "removed")
    except Exception as exc:
        log.warning("network janitor failed: %s", exc)
    return removed


def _logged(kind: str, names: Iterable[str], owner: str, verb: str) -> list[str]:
    done = []
    for name in names:
        log.warning("janitor (owner %s): %s %s %s: its job no longer runs here", owner, verb, kind, name)
        done.append(f"{kind} {name}")
    return done
