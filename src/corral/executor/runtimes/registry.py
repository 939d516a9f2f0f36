"""Pick a runtime by name. Adding a runtime = one module plus one line in RUNTIMES."""

from __future__ import annotations

import sys
from collections.abc import Callable

from corral.errors import ConfigError
from corral.executor.runtimes.base import Runtime
from corral.executor.settings import ExecutorSettings


def _shell(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.shell import ShellRuntime

    # One cgroup parent per EXECUTOR_VM_PREFIX: executors sharing a host never sweep each other's jobs.
    return ShellRuntime(cgroup_parent=f"corral-{s.vm_prefix}", extra_ro_binds=cli_binds(s))


def _docker(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.docker import DockerRuntime

    return DockerRuntime(
        runtime=s.docker_runtime or None,
        add_host_gateway=s.docker_add_host_gateway,
        additional_mounts=s.docker_additional_mounts,
        owner=s.vm_prefix,
        allowed_registries=s.docker_allowed_registries,
        executor_auth_config=s.docker_auth_config,
        # next to the workspace root, not in it (workspaces are removed); one per EXECUTOR_VM_PREFIX
        state_dir=s.workspace_root.parent / f"docker-state-{s.vm_prefix}",
    )


RUNTIMES: dict[str, Callable[[ExecutorSettings], Runtime]] = {
    "shell": _shell,
    "docker": _docker,
    "fake": lambda s: __import__("corral.testing", fromlist=["FakeRuntime"]).FakeRuntime(s),  # tests only
}


def cli_binds(s: ExecutorSettings) -> list[str]:
    """Host paths a CLI step needs read-only inside the sandbox: the CLI's own installation."""
    from pathlib import Path

    import corral

    # The interpreter, the venv, the CLI's directory, and corral's own package (an editable install
    # keeps it outside the venv).
    package_root = str(Path(corral.__file__).resolve().parent.parent)
    paths = {sys.prefix, sys.base_prefix, str(Path(s.cli_path).resolve().parent), package_root}
    return sorted(p for p in paths if not p.startswith(("/usr/", "/etc/")) and p != "/usr")


def make_runtime(settings: ExecutorSettings) -> Runtime:
    factory = RUNTIMES.get(settings.runtime)
    if factory is None:
        raise ConfigError(
            f"EXECUTOR_RUNTIME={settings.runtime}: this runtime is not available in corral yet "
            f"(available: {', '.join(RUNTIMES)})"
        )
    return factory(settings)


def make_cli_runtime(settings: ExecutorSettings, runtime: Runtime) -> Runtime:
    """CLI steps run in the shell sandbox (bubblewrap), whatever runs the docker steps."""
    if runtime.name == "shell":
        return runtime
    return _shell(settings)
