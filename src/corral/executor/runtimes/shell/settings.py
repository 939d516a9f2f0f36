"""The shell runtime's settings, composed into ExecutorSettings as `.shell`.

No EXECUTOR_* variable configures it yet: its cgroup parent follows EXECUTOR_VM_PREFIX and its
read-only binds follow EXECUTOR_CLI_PATH (see `registry`); the binaries are fixed here.
"""

from __future__ import annotations

from corral.executor.settingsbase import EnvSettings

__all__ = ["ShellSettings"]


class ShellSettings(EnvSettings):
    bwrap: str = "bwrap"  # the bubblewrap binary on the host
    setpriv: str = "/usr/bin/setpriv"  # as seen inside the sandbox (under /usr)
