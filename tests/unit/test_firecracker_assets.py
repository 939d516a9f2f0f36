"""The executor refuses an initramfs built from other guest scripts than its own (review R2): after
an upgrade without `corral executor install firecracker`, the guest's init speaks another protocol
(the `go` handshake, control lines) and every VM would time out at boot; now the runtime's check
(validate, the executor's start, every boot) names the install command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.executor.runtimes.firecracker import assets
from tests.conftest import require


def _installed(directory: Path, inputs: str) -> Path:
    directory.mkdir()
    for name in ("vmlinux", "initramfs.img"):
        (directory / name).write_bytes(b"x")
    manifest = {"version": 2, "package": "linux-image-x", "release": "6.1.0-x", "inputs": inputs}
    manifest["sha256"] = {}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_an_initramfs_of_these_guest_scripts_loads(tmp_path: Path) -> None:
    require(os.path.exists(assets.BUSYBOX), "busybox-static")
    found = assets.load_assets(_installed(tmp_path / "fc", assets._inputs_hash()))
    assert found.kernel_release == "6.1.0-x"


def test_an_initramfs_of_other_guest_scripts_is_refused_naming_the_install(tmp_path: Path) -> None:
    require(os.path.exists(assets.BUSYBOX), "busybox-static")
    stale = _installed(tmp_path / "fc", "0" * 64)  # built before init.sh changed
    with pytest.raises(ConfigError) as err:
        assets.load_assets(stale)
    assert "other guest scripts" in err.value.message
    assert "run `corral executor install firecracker`" in err.value.message
