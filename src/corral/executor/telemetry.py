"""What the executor reports about its host in heartbeats, keyed and formatted as Sourcegraph's
executor reports it, so Sourcegraph's admin UI shows a corral executor like its own.

Sourcegraph's client (cmd/executor/internal/apiclient/queue/client.go, Heartbeat) sends, on every
heartbeat, `os` (Go's runtime.GOOS), `architecture` (runtime.GOARCH: amd64, arm64, ...),
`dockerVersion`, `executorVersion`, `gitVersion`, `igniteVersion`, `srcCliVersion` (each "" when
unknown) and `prometheusMetrics` (the executor's metrics in the Prometheus text format), with the
tool versions read as cmd/executor/internal/util/versions.go reads them (`git version` without its
"git version " prefix, `src version -client-only` without "Current version: ", ...). Each runtime
adds its own (`Runtime.telemetry()`, e.g. dockerVersion). corral's extensions (`hostname`,
`qemuVersion`) ride along; Go's decoder ignores fields it does not know.
"""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable

from corral import __version__

__all__ = [
    "TELEMETRY_KEYS",
    "TOOL_TIMEOUT",
    "executor_telemetry",
    "go_arch",
    "go_os",
    "prometheus_metrics",
    "src_cli_version",
    "tool_version",
]

TOOL_TIMEOUT = 5.0  # seconds one `tool --version` may take
# Every heartbeat carries these, in this order (types.HeartbeatRequest, internal/executor/types/http.go).
TELEMETRY_KEYS = (
    "os",
    "architecture",
    "dockerVersion",
    "executorVersion",
    "gitVersion",
    "igniteVersion",
    "srcCliVersion",
    "prometheusMetrics",
)
# platform.machine() -> Go's GOARCH (the values Go's toolchain names its targets by)
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}


def go_os(system: str | None = None) -> str:
    """runtime.GOOS of this host: linux, darwin, windows, freebsd, ..."""
    return (system if system is not None else platform.system()).lower()


def go_arch(machine: str | None = None) -> str:
    """runtime.GOARCH of this host (x86_64 -> amd64, aarch64 -> arm64, ...); unknown ones lowercased."""
    m = (machine if machine is not None else platform.machine()).lower()
    return _GOARCH.get(m, m)


def tool_version(argv: list[str], *, prefix: str = "") -> str:
    """The first line `argv` prints (without `prefix`), or "" when the tool is missing or fails."""
    if not argv[0] or not shutil.which(argv[0]):
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return ""
    out = done.stdout.strip()
    if done.returncode != 0 or not out:
        return ""
    return out.splitlines()[0].strip().removeprefix(prefix)


def src_cli_version(src_path: str | None) -> str:
    """The version of Sourcegraph's src-cli as Sourcegraph's executor reads it (util.GetSrcVersion)."""
    if not src_path:
        return ""
    return tool_version([src_path, "version", "-client-only"], prefix="Current version: ")


def prometheus_metrics() -> str:
    """This process's metrics in the Prometheus text format (Sourcegraph's prometheusMetrics)."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode("utf-8", "replace")


def executor_telemetry(cli_path: str, runtime_reports: Iterable[dict[str, str]]) -> dict[str, str]:
    """The heartbeat's telemetry fields: every Sourcegraph key present ("" when unknown), then
    corral's; runtimes' reports last. `srcCliVersion` is corral's CLI here; the worker reports
    src-cli's against a Sourcegraph server (see Worker.telemetry). prometheusMetrics is filled in
    per heartbeat by the worker."""
    telemetry = dict.fromkeys(TELEMETRY_KEYS, "")
    telemetry.update(
        {
            "os": go_os(),
            "architecture": go_arch(),
            "executorVersion": __version__,
            "gitVersion": tool_version(["git", "version"], prefix="git version "),
            "srcCliVersion": tool_version([cli_path, "version"]),
            # corral's extensions; qemuVersion moves to the firecracker runtime when it lands
            "qemuVersion": tool_version(["qemu-system-x86_64", "--version"]),
            "hostname": socket.gethostname(),
        }
    )
    for report in runtime_reports:
        telemetry.update(report)
    return telemetry
