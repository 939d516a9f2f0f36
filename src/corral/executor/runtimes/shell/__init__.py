"""The `shell` runtime: each step in a bubblewrap sandbox on the host, limited by cgroup v1.

Modules: `runtime` (the Runtime), `cgroups` (the job's cgroups), `seccomp` (the system-call filter),
`settings` (ShellSettings). It also runs the CLI steps and the diff of runtimes that delegate them
(`cli_runtime = "shell"`, e.g. docker).
"""

from corral.executor.runtimes.shell.runtime import DEFAULT_ETC_FILES, ShellRuntime
from corral.executor.runtimes.shell.settings import ShellSettings

__all__ = ["DEFAULT_ETC_FILES", "ShellRuntime", "ShellSettings"]
