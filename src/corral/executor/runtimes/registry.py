"""Pick a runtime by name. Adding a runtime = its package plus one line in RUNTIMES.

CLI steps (and the diff) run in the runtime named by the main runtime's class attribute
`cli_runtime`, by default the shell sandbox ("shell" runs its own; docker names "shell" explicitly);
`make_cli_runtime` builds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError
from corral.executor.runtimes.base import Runtime, Step
from corral.executor.settings import ExecutorSettings

DEFAULT_CLI_RUNTIME = "shell"  # runs CLI steps and the diff of runtimes that name no other

__all__ = ["DEFAULT_CLI_RUNTIME", "RUNTIMES", "RuntimeSet", "cli_binds", "make_cli_runtime", "make_runtime"]


def _shell(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.shell import ShellRuntime

    # One cgroup parent per EXECUTOR_VM_PREFIX: executors sharing a host never sweep each other's jobs.
    return ShellRuntime.from_settings(
        s.shell, cgroup_parent=f"corral-{s.vm_prefix}", extra_ro_binds=cli_binds(s)
    )


def _docker(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.docker import DockerRuntime

    # next to the workspace root, not in it (workspaces are removed); one per EXECUTOR_VM_PREFIX
    state_dir = s.workspace_root.parent / f"docker-state-{s.vm_prefix}"
    return DockerRuntime.from_settings(s.docker, owner=s.vm_prefix, state_dir=state_dir)


RUNTIMES: dict[str, Callable[[ExecutorSettings], Runtime]] = {
    "shell": _shell,
    "docker": _docker,
    "fake": lambda s: __import__("corral.testing", fromlist=["fake_from_settings"]).fake_from_settings(s),
}


def cli_binds(s: ExecutorSettings) -> list[str]:
    """Host paths a CLI step needs read-only inside the sandbox: the CLIs' own installations."""
    import corral

    # The interpreter, the venv, the CLI's directory, corral's own package (an editable install
    # keeps it outside the venv), and src-cli's directory (the CLI of a Sourcegraph server's jobs).
    package_root = str(Path(corral.__file__).resolve().parent.parent)
    paths = {sys.prefix, sys.base_prefix, str(Path(s.cli_path).resolve().parent), package_root}
    if s.src_cli_path:
        paths.add(str(Path(s.src_cli_path).resolve().parent))
    return sorted(p for p in paths if not p.startswith(("/usr/", "/etc/")) and p != "/usr")


def _factory(name: str) -> Callable[[ExecutorSettings], Runtime]:
    factory = RUNTIMES.get(name)
    if factory is None:
        raise ConfigError(
            f"EXECUTOR_RUNTIME={name}: this runtime is not available in corral yet "
            f"(available: {', '.join(RUNTIMES)})"
        )
    return factory


def make_runtime(settings: ExecutorSettings) -> Runtime:
    return _factory(settings.runtime)(settings)


def make_cli_runtime(settings: ExecutorSettings, runtime: Runtime) -> Runtime:
    """The runtime that runs `runtime`'s CLI steps and the diff: the one its `cli_runtime` names,
    by default the shell sandbox (a runtime that runs them itself names itself)."""
    name: str = getattr(runtime, "cli_runtime", DEFAULT_CLI_RUNTIME)
    if name == runtime.name:
        return runtime
    return _factory(name)(settings)


@dataclass(frozen=True)
class RuntimeSet:
    """The runtimes one executor uses: `main` (EXECUTOR_RUNTIME) and `cli`, which runs CLI steps and
    the diff (`main` itself, another runtime, or None when that one is unavailable here)."""

    main: Runtime
    cli: Runtime | None = None

    def for_step(self, step: Step) -> Runtime | None:
        return self.main if step.kind == "docker" else self.cli

    def distinct(self) -> list[Runtime]:
        """Each runtime once: what prepare, cleanup, the janitor and telemetry go over."""
        out: list[Runtime] = []
        for r in (self.main, self.cli):
            if r is not None and all(r is not o for o in out):
                out.append(r)
        return out
