"""The Firecracker API driver (`fcapi`) against a fake API socket (tests/fckit.py): the calls and
their JSON shapes, Firecracker's fault_message in the error, the VM lifecycle with a stand-in
binary, and the engine choice. No Firecracker binary or KVM is needed (or exists here)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RuntimeFailure
from corral.executor.runtimes.firecracker import fcapi
from corral.executor.runtimes.firecracker.assets import Assets
from corral.executor.runtimes.firecracker.console import Output
from corral.executor.runtimes.firecracker.vm import Disk, Nic, Share, VMConfig
from tests.fckit import AFTER_START, CONSOLE, REFUSE_ENV, FakeFirecracker, fake_binary


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path is at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="fc-", dir="/tmp") as d:
        yield Path(d)


def _cfg(tmp: Path, **kw: object) -> VMConfig:
    assets = Assets(tmp, tmp / "vmlinux", tmp / "initramfs.img", "6.1.0-0-amd64")
    base: dict[str, object] = {
        "name": "corral-fc.own.batches-7",
        "assets": assets,
        "cpus": 2,
        "memory_mib": 256,
        "disks": [Disk("scratch", tmp / "scratch.ext4", readonly=False), Disk("img0", tmp / "img0.ext4")],
    }
    base.update(kw)
    return VMConfig(**base)  # type: ignore[arg-type]


async def test_the_machine_is_described_with_firecrackers_shapes(short_dir: Path) -> None:
    async with FakeFirecracker(short_dir / "api.sock") as fake:
        api = fcapi.FirecrackerAPI(short_dir / "api.sock")
        try:
            for path, body in fcapi.machine_calls(_cfg(short_dir), vsock=short_dir / "v.sock"):
                await api.put(path, body)
            assert (await api.describe())["state"] == "Not started"
            await api.start()
            info = await api.describe()
        finally:
            await api.aclose()
    assert info["state"] == "Running" and info["vmm_version"] == "1.7.0"
    puts = fake.puts()
    assert [p for p, _ in puts] == [
        "/machine-config",
        "/boot-source",
        "/drives/scratch",
        "/drives/img0",
        "/vsock",
        "/actions",
    ]
    bodies = dict(puts)
    assert bodies["/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256, "smt": False}
    boot = bodies["/boot-source"]
    assert boot["kernel_image_path"] == str(short_dir / "vmlinux")
    assert boot["initrd_path"] == str(short_dir / "initramfs.img")
    assert "console=ttyS0" in boot["boot_args"].split() and "rdinit=/init" in boot["boot_args"].split()
    assert bodies["/drives/scratch"] == {
        "drive_id": "scratch",
        "path_on_host": str(short_dir / "scratch.ext4"),
        "is_root_device": False,
        "is_read_only": False,
        "cache_type": "Unsafe",
    }
    assert bodies["/drives/img0"]["is_read_only"] is True
    assert bodies["/vsock"] == {"guest_cid": 3, "uds_path": str(short_dir / "v.sock")}
    assert bodies["/actions"] == {"action_type": "InstanceStart"}
    # the wire: JSON bodies with their content type, as Firecracker's API expects
    assert all(r.body is not None for r in fake.requests if r.method == "PUT")


async def test_a_refusal_carries_firecrackers_fault_message(short_dir: Path) -> None:
    fault = "Invalid kernel path: No such file or directory (os error 2)"
    async with FakeFirecracker(short_dir / "api.sock", refuse={"/boot-source": fault}):
        api = fcapi.FirecrackerAPI(short_dir / "api.sock")
        try:
            with pytest.raises(fcapi.FirecrackerAPIError) as err:
                await api.put("/boot-source", {"kernel_image_path": "/nope"})
            assert err.value.status == 400
            assert err.value.message == f"PUT /boot-source: {fault}"
            await api.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
            await api.start()
            with pytest.raises(fcapi.FirecrackerAPIError) as late:
                await api.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
            assert late.value.message == f"PUT /machine-config: {AFTER_START}"
        finally:
            await api.aclose()


async def test_an_unreachable_socket_is_status_0_naming_it(short_dir: Path) -> None:
    api = fcapi.FirecrackerAPI(short_dir / "nothing.sock")
    try:
        with pytest.raises(fcapi.FirecrackerAPIError) as err:
            await api.describe()
    finally:
        await api.aclose()
    assert err.value.status == 0 and "cannot reach Firecracker" in err.value.message
    assert str(short_dir / "nothing.sock") in err.value.message


def test_what_firecracker_cannot_have_is_refused_not_dropped(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 9p"):
        fcapi.machine_calls(_cfg(tmp_path, shares=[Share("ws", tmp_path)]))
    with pytest.raises(ValueError, match="tap devices"):
        fcapi.machine_calls(_cfg(tmp_path, nic=Nic()))
    calls = dict(fcapi.machine_calls(_cfg(tmp_path, cpus=99, memory_mib=1)))
    assert calls["/machine-config"]["vcpu_count"] == 32  # Firecracker's bound
    assert calls["/machine-config"]["mem_size_mib"] >= 128


async def test_the_vm_boots_through_the_api_and_is_killed(short_dir: Path) -> None:
    binary = fake_binary(short_dir)
    vmdir = short_dir / "vm"
    vmdir.mkdir()
    vm = fcapi.FirecrackerVM(_cfg(short_dir), vmdir, binary=str(binary))
    try:
        await vm.start()
        out = b"".join([ev.data async for ev in vm.events() if isinstance(ev, Output)])
        assert await vm.wait() == 0
    finally:
        await vm.kill()
    assert out == CONSOLE  # the guest's serial console is firecracker's stdout
    seen = json.loads((vmdir / "requests.json").read_text())
    assert [r["path"] for r in seen if r["method"] == "PUT"][-1] == "/actions"
    assert not vm.api_socket.exists()


async def test_a_refused_vm_fails_naming_the_call_and_leaves_no_process(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = "Unable to create the block device: No such file or directory (os error 2)"
    monkeypatch.setenv(REFUSE_ENV, json.dumps({"/drives/img0": fault}))
    binary = fake_binary(short_dir)
    vm = fcapi.FirecrackerVM(_cfg(short_dir), short_dir, binary=str(binary))
    with pytest.raises(RuntimeFailure) as err:
        await vm.start()
    assert err.value.message == f"Firecracker refused the job's VM: PUT /drives/img0: {fault}"
    assert vm.proc is not None and vm.proc.returncode is not None  # killed and reaped
    assert not vm.api_socket.exists()


async def test_a_binary_that_makes_no_socket_is_reported(short_dir: Path) -> None:
    broken = short_dir / "firecracker"
    broken.write_text("#!/bin/sh\necho 'Error: KVM is not available' >&2\nexit 1\n")
    broken.chmod(0o755)
    vm = fcapi.FirecrackerVM(_cfg(short_dir), short_dir, binary=str(broken))
    with pytest.raises(RuntimeFailure, match=r"made no API socket .*exit 1.*KVM is not available"):
        await vm.start()


def test_the_engine_choice_says_what_runs_jobs(tmp_path: Path) -> None:
    none = fcapi.engine("kvm", which=[str(tmp_path / "no-such-firecracker")])
    assert none.firecracker is None and "no firecracker binary" in none.words()
    binary = fake_binary(tmp_path)
    no_kvm = fcapi.engine("tcg", which=[str(binary)])
    assert no_kvm.firecracker is None and "KVM does not boot a guest" in no_kvm.words()
    usable = fcapi.engine("kvm", which=[str(binary)])
    assert usable.firecracker == str(binary)
    # honest: Firecracker is found and could boot, but jobs run on qemu microvm (README, fcapi)
    assert usable.jobs == "qemu microvm" and "jobs do not use it yet" in usable.words()
    assert os.access(binary, os.X_OK)


def test_the_engine_is_said_once_in_the_log(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fcapi, "_said", set())
    choice = fcapi.engine("tcg", which=[str(tmp_path / "absent")])
    with caplog.at_level("INFO", logger="corral.executor.runtimes.firecracker"):
        fcapi.say_once(choice)
        fcapi.say_once(choice)
    said = [r.getMessage() for r in caplog.records if "no firecracker binary" in r.getMessage()]
    assert said == ["firecracker: jobs on qemu microvm; no firecracker binary on PATH"]
