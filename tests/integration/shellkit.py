"""Helpers for the shell runtime's integration tests."""

from __future__ import annotations

import asyncio
import contextlib

from corral.executor.runtimes.shell import ShellRuntime
from corral.executor.runtimes.shell.cgroups import CGROUP_ROOT, CONTROLLERS


def sweep_cgroup_parent(parent: str) -> list[str]:
    """Remove the tests' cgroup parent in every controller; return the job cgroups that were left."""
    leftovers = asyncio.run(ShellRuntime(cgroup_parent=parent).janitor(set()))
    for controller in CONTROLLERS:
        with contextlib.suppress(FileNotFoundError):
            (CGROUP_ROOT / controller / parent).rmdir()
    return leftovers
