"""What the executor reports about its host in heartbeats: tool versions (git, the CLI) and the
hostname; each runtime adds its own (`Runtime.telemetry()`, e.g. dockerVersion)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterable

__all__ = ["TOOL_TIMEOUT", "executor_telemetry", "tool_version"]

TOOL_TIMEOUT = 5.0  # seconds one `tool --version` may take


def tool_version(argv: list[str]) -> str:
    """The first line `argv` prints, or "" when the tool is missing or fails."""
    if not shutil.which(argv[0]):
        return ""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def executor_telemetry(cli_path: str, runtime_reports: Iterable[dict[str, str]]) -> dict[str, str]:
    """The heartbeat's telemetry fields: every field present ("" when unknown), runtimes' last."""
    telemetry = {
        "gitVersion": tool_version(["git", "--version"]),
        "dockerVersion": "",
        "srcCliVersion": tool_version([cli_path, "version"]),
        # reported as before by every executor; moves to the firecracker runtime when it lands
        "qemuVersion": tool_version(["qemu-system-x86_64", "--version"]),
        "hostname": socket.gethostname(),
    }
    for report in runtime_reports:
        telemetry.update(report)
    return telemetry
