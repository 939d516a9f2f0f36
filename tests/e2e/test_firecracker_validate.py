"""`corral executor validate` for the firecracker runtime, as a command against a real server:

- on a machine without qemu (simulated in a private mount namespace of the command, where an empty,
  non-executable file hides every qemu-system-x86_64 the host has: nothing outside changes) it exits
  non-zero and says in plain words that qemu is missing and how to install it;
- with qemu it passes and reports the accelerator the microVMs use (KVM or TCG, the probe's cached
  answer) and the guest's kernel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executor.runtimes.firecracker.assets import load_assets
from corral.executor.runtimes.firecracker.vm import accelerator
from tests.conftest import require
from tests.e2e.kit import CORRAL, Server, executor_env, run_server
from tests.e2e.microvmkit import require_microvms

VALIDATE_TIMEOUT_S = 120.0  # a first KVM probe may take 10 s; docker and the server answer at once


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require_microvms()
    with run_server(tmp_path) as s:
        yield s


def _validate(
    server: Server, tmp_path: Path, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = executor_env(server, tmp_path, "firecracker")
    return subprocess.run(
        [*(prefix or []), CORRAL, "executor", "validate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_S,
        check=False,
    )


def test_validate_without_qemu_fails_and_says_how_to_install_it(server: Server, tmp_path: Path) -> None:
    require(shutil.which("unshare") is not None, "util-linux's unshare is needed")
    which = subprocess.run(["which", "-a", "qemu-system-x86_64"], capture_output=True, text=True)
    qemus = sorted({*which.stdout.split(), "/usr/bin/qemu-system-x86_64"})
    hide = tmp_path / "not-qemu"
    hide.write_bytes(b"")
    hide.chmod(0o644)
    mounts = "".join(f"mount --bind {hide} {q} && " for q in qemus)
    # in the namespace: no qemu anywhere (checked there first), then the command itself
    hidden = "! test -x /usr/bin/qemu-system-x86_64 && ! command -v qemu-system-x86_64"
    unshare = ["unshare", "--mount", "--propagation", "private"]
    done = _validate(server, tmp_path, [*unshare, "sh", "-c", f'{mounts}{hidden} && exec "$@"', "-"])
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    problems = [line for line in out.splitlines() if line.startswith("✗")]
    assert any("qemu is not installed" in p and "no microVM can boot" in p for p in problems), out
    assert any("corral executor install firecracker" in p for p in problems if "qemu" in p), out
    assert all("runtime firecracker" in p for p in problems), out  # nothing else is wrong here
    assert "accelerator" not in out  # no VM was booted to probe it
    assert shutil.which("qemu-system-x86_64") is not None  # the host's qemu is untouched


def test_validate_with_qemu_reports_the_accelerator_and_the_guest_kernel(
    server: Server, tmp_path: Path
) -> None:
    done = _validate(server, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next((x for x in done.stdout.splitlines() if x.startswith("microVMs")), None)
    assert line is not None, done.stdout
    assets = load_assets()
    accel = asyncio.run(accelerator(assets))  # the cached answer the executor uses
    assert f"accelerator {accel.upper()} " in line, line
    assert ("no working KVM here" in line) == (accel == "tcg"), line
    assert f"guest kernel {assets.kernel_release}" in line and "qemu-microvm" in line, line
