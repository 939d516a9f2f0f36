"""Pick a runtime by name. Adding a runtime = its package plus one line in RUNTIMES.

CLI steps (and the diff) run in the runtime named by the main runtime's class attribute
`cli_runtime`, by default the shell sandbox ("shell" runs its own; docker names "shell" explicitly);
`make_cli_runtime` builds it.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError
from corral.executor.runtimes.base import Runtime, Step
from corral.executor.settings import ExecutorSettings

DEFAULT_CLI_RUNTIME = "shell"  # runs CLI steps and the diff of runtimes that name no other

__all__ = [
    "DEFAULT_CLI_RUNTIME",
    "RUNTIMES",
    "SENSITIVE_DIRS",
    "RuntimeSet",
    "cli_binds",
    "make_cli_runtime",
    "make_runtime",
]


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


def _firecracker(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.docker import DockerRuntime
    from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime

    docker = _docker(s)  # pulls (registry checks, job credentials) and image exports
    assert isinstance(docker, DockerRuntime)
    return FirecrackerRuntime.from_settings(s, docker)


def _kubernetes(s: ExecutorSettings) -> Runtime:
    from corral.executor.runtimes.kubernetes.runtime import KubernetesRuntime

    return KubernetesRuntime.from_settings(s)  # jobs, their CLI steps and the diff run in pods


RUNTIMES: dict[str, Callable[[ExecutorSettings], Runtime]] = {
    "shell": _shell,
    "docker": _docker,
    "firecracker": _firecracker,
    "kubernetes": _kubernetes,
    "fake": lambda s: __import__("corral.testing", fromlist=["fake_from_settings"]).fake_from_settings(s),
}


# Directories a bind into the CLI sandbox must never be or contain: binding one would show every
# CLI step other users' files, other jobs' files or the host's configuration (read-only, but
# readable as the job's uid through the bind, whatever the host's permissions above it say).
SENSITIVE_DIRS = ("/", "/etc", "/home", "/root", "/tmp", "/var/tmp")


def cli_binds(s: ExecutorSettings) -> list[str]:
    """Host paths a CLI step needs read-only inside the sandbox: the CLIs' own installations.

    - corral's own Python: the interpreter's prefixes (sys.prefix, sys.base_prefix) and corral's
      package root (an editable install keeps it outside the venv);
    - EXECUTOR_CLI_PATH (corral's CLI, a Python entry point): the virtualenv it belongs to when
      there is one (the file's ``../pyvenv.cfg`` exists: the venv's root is bound, as the entry
      point needs its site-packages), else only the file itself. Never the file's directory as
      such: ``/root/corral`` would show all of /root;
    - EXECUTOR_SRC_CLI_PATH (src-cli, a static binary): only the file itself, at the path the
      steps run it by (a symlink's target is what gets mounted).
    A directory to bind that is, or contains, one of SENSITIVE_DIRS, a home directory or the
    workspace root, or that lies in the workspace root, is a ConfigError naming the variable;
    paths under /usr are visible in the sandbox anyway and are not bound again.
    """
    import corral

    sensitive = _sensitive_dirs()
    workspace_root = os.path.realpath(s.workspace_root)
    binds: dict[str, str] = {}  # path -> what it is, for the error
    package_root = str(Path(corral.__file__).resolve().parent.parent)
    for path in (sys.prefix, sys.base_prefix, package_root):
        binds.setdefault(os.path.realpath(path), "corral's own Python installation")
    cli = _cli_install(s.cli_path)
    if cli is not None:
        binds.setdefault(cli, f"EXECUTOR_CLI_PATH={s.cli_path}")
    if s.src_cli_path:
        if not os.path.isfile(s.src_cli_path):
            raise ConfigError(f"EXECUTOR_SRC_CLI_PATH={s.src_cli_path}: not an existing regular file")
        binds.setdefault(
            os.path.normpath(os.path.abspath(s.src_cli_path)), f"EXECUTOR_SRC_CLI_PATH={s.src_cli_path}"
        )
    out = []
    for path, what in binds.items():
        if path == "/usr" or path.startswith(("/usr/", "/etc/")):
            continue  # visible in the sandbox already (/etc entries: the runtime's own list)
        _check_bind(path, what, sensitive, workspace_root)
        out.append(path)
    return sorted(out)


def _cli_install(cli_path: str) -> str | None:
    """What to bind for EXECUTOR_CLI_PATH: its virtualenv's root, else the file; None when the file
    does not exist (a CLI step then fails saying so; nothing is bound)."""
    path = os.path.normpath(os.path.abspath(cli_path))
    if not os.path.isfile(path):
        return None
    venv = Path(os.path.realpath(path)).parent.parent  # <venv>/bin/corral
    if (venv / "pyvenv.cfg").is_file():
        return str(venv)
    return path


def _sensitive_dirs() -> list[str]:
    """SENSITIVE_DIRS and every home directory (the password database's and $HOME)."""
    homes = {entry.pw_dir for entry in pwd.getpwall()}
    homes.add(os.path.expanduser("~"))
    return sorted({*SENSITIVE_DIRS, *(os.path.normpath(h) for h in homes if os.path.isabs(h))})


def _check_bind(path: str, what: str, sensitive: list[str], workspace_root: str) -> None:
    def holds(outer: str, inner: str) -> bool:
        return outer == inner or inner.startswith(outer.rstrip("/") + "/")

    if holds(workspace_root, path):
        raise ConfigError(
            f"{what}: {path} lies in EXECUTOR_WORKSPACE_ROOT ({workspace_root}), where jobs write; "
            "it cannot be bound into the CLI sandbox"
        )
    for place in [*sensitive, workspace_root]:
        if holds(path, place):
            kind = "EXECUTOR_WORKSPACE_ROOT" if place == workspace_root else "a home or system directory"
            raise ConfigError(
                f"{what}: binding {path} into every CLI step's sandbox would show {place} ({kind}); "
                "install the CLI in a directory of its own (corral's CLI: a virtualenv, whose root "
                "holds pyvenv.cfg, is bound whole; otherwise only the file is)"
            )


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
