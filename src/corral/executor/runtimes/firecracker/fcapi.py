"""Firecracker proper, driven through its API socket, where a `firecracker` binary and a working KVM exist.

Firecracker is configured over HTTP on a unix socket (`firecracker --api-sock PATH`), with the JSON
shapes of its swagger document (firecracker-microvm/firecracker, src/firecracker/swagger/
firecracker.yaml). Every pre-boot call is a PUT answered 204; a refusal is a 4xx/5xx whose body is
`{"fault_message": "..."}`:

    PUT /machine-config  {"vcpu_count": N, "mem_size_mib": M, "smt": false}
    PUT /boot-source     {"kernel_image_path": ..., "initrd_path": ..., "boot_args": ...}
    PUT /drives/{id}     {"drive_id": id, "path_on_host": ..., "is_root_device": false,
                          "is_read_only": bool, "cache_type": "Unsafe"}
    PUT /vsock           {"guest_cid": 3, "uds_path": ...}                      (when asked for)
    PUT /actions         {"action_type": "InstanceStart"}
    GET /                {"id", "state", "vmm_version", "app_name"}

Here: `FirecrackerAPI` (the client: httpx over the socket, bounded answers, every refusal a
`FirecrackerAPIError` naming the call and Firecracker's fault_message), `machine_calls` (the calls
that describe a job VM: the kernel, initramfs, vCPUs, RAM and disks qemu gets, the serial console as
the kernel's console), `FirecrackerVM` (starts `firecracker --api-sock <vmdir>/api.sock --id
<name>` in its own session, waits for the socket, configures, InstanceStart; the guest's serial
console is Firecracker's stdout; `kill()` SIGKILLs it) and `engine` (which VMM this executor has).

How far the Firecracker path goes, exactly: it boots a VM with the job's kernel, initramfs and disks,
and stops it. It does NOT run jobs, so jobs run on qemu microvm even where Firecracker and KVM work
(`engine` says so in the executor log and in `corral executor validate`). What is missing is the
guest side: Firecracker has no 9p and no virtio console, and the job's init (guest/init.sh) takes
its control files, step scripts and workspace from 9p shares and talks over hvc0. Firecracker jobs
need instead, as Sourcegraph's ignite-based executors do: the workspace as an ext4 block device
made from the host's workspace before boot (`mkfs.ext4 -d`) and read back after the VM ends (with
e2fsprogs in user space, never a host mount of a filesystem the guest wrote), the control files and
scripts on a small read-only disk, init's control lines on the serial port (ttyS0) or a vsock port
with the kernel's messages kept off it, and the guest finding its disks by order (vda, vdb, ...)
where qemu gives them a virtio serial. Tested only against a fake API socket
(tests/unit/test_firecracker_api.py): no Firecracker binary, and no KVM that boots a stock kernel,
exist on the machines corral is developed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from corral.errors import FirecrackerAPIError, Reason, RuntimeFailure
from corral.executor.runtimes.firecracker.console import ConsoleParser, Control, Output, new_nonce
from corral.executor.runtimes.firecracker.vm import MIN_MEMORY_MIB, VMConfig, host_khz

__all__ = [
    "FIRECRACKER",
    "Engine",
    "FirecrackerAPI",
    "FirecrackerAPIError",
    "FirecrackerVM",
    "engine",
    "machine_calls",
    "say_once",
]

log = logging.getLogger("corral.executor.runtimes.firecracker")

FIRECRACKER = "firecracker"  # the binary, looked up on PATH
REQUEST_TIMEOUT_S = 10.0  # seconds for one API call (all are small and pre-boot)
SOCKET_WAIT_S = 5.0  # seconds Firecracker may take to create its API socket
MAX_ANSWER_BYTES = 64 * 1024  # an API answer larger than this is refused unread
MAX_VCPUS = 32  # Firecracker's bound on vcpu_count
KILL_WAIT_S = 5.0  # seconds to wait for a SIGKILLed firecracker to be reaped
READ_CHUNK = 65536  # bytes read from the serial console at once


class FirecrackerAPI:
    """One Firecracker process's API, over its unix socket. `aclose()` when done."""

    def __init__(self, socket_path: Path, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=os.fspath(socket_path)),
            base_url="http://localhost",
            timeout=REQUEST_TIMEOUT_S,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call; its JSON answer (None for 204). FirecrackerAPIError when refused or unreachable."""
        what = f"{method} {path}"
        try:
            async with self._http.stream(method, path, json=body) as resp:
                data = b""
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise FirecrackerAPIError(
                            resp.status_code, f"{what}: the answer is over {MAX_ANSWER_BYTES} bytes"
                        )
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            raise FirecrackerAPIError(
                0, f"{what}: cannot reach Firecracker at {self.socket_path}: {detail}"
            ) from exc
        if resp.status_code >= 300:
            raise FirecrackerAPIError(resp.status_code, f"{what}: {_fault(resp.status_code, data)}")
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise FirecrackerAPIError(resp.status_code, f"{what}: the answer is not JSON ({exc})") from None

    async def put(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PUT", path, body)

    async def describe(self) -> dict[str, Any]:
        """GET /: the instance's id, state ("Not started", "Running", "Paused") and vmm_version."""
        info = await self.request("GET", "/")
        if not isinstance(info, dict):
            raise FirecrackerAPIError(200, "GET /: the answer is not an object")
        return info

    async def start(self) -> None:
        await self.put("/actions", {"action_type": "InstanceStart"})


def _fault(status: int, data: bytes) -> str:
    """Firecracker's own words (fault_message), else the body's first line, else the status."""
    with contextlib.suppress(ValueError):
        body = json.loads(data)
        if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
            return str(body["fault_message"])[:2000]
    text = data.decode(errors="replace").strip().splitlines()
    return text[0][:2000] if text else f"HTTP {status}"


def machine_calls(cfg: VMConfig, *, vsock: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The PUTs that describe `cfg`'s VM to Firecracker, in order (InstanceStart not included).

    The same kernel, initramfs, vCPUs, RAM and disks qemu gets (vm.qemu_argv); the kernel's console on
    the serial port (Firecracker's stdout). 9p shares and the NIC have no Firecracker form: a config
    with either is refused (ValueError), rather than booted without them."""
    if cfg.shares:
        raise ValueError("Firecracker has no 9p: shares must become disks (see the module docstring)")
    if cfg.nic is not None:
        raise ValueError("Firecracker's NICs are tap devices: the user-mode NIC has no Firecracker form")
    cmdline = [
        "console=ttyS0",
        "reboot=k",
        "panic=-1",
        "pci=off",
        "loglevel=4",
        f"tsc_early_khz={host_khz()}",
        "rdinit=/init",
        *cfg.extra_cmdline,
    ]
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "/machine-config",
            {
                "vcpu_count": max(1, min(MAX_VCPUS, cfg.cpus)),
                "mem_size_mib": max(MIN_MEMORY_MIB, cfg.memory_mib),
                "smt": False,
            },
        ),
        (
            "/boot-source",
            {
                "kernel_image_path": os.fspath(cfg.assets.kernel),
                "initrd_path": os.fspath(cfg.assets.initrd),
                "boot_args": " ".join(cmdline),
            },
        ),
    ]
    for d in cfg.disks:
        calls.append(
            (
                f"/drives/{d.serial}",
                {
                    "drive_id": d.serial,
                    "path_on_host": os.fspath(d.path),
                    "is_root_device": False,
                    "is_read_only": d.readonly,
                    "cache_type": "Unsafe",
                },
            )
        )
    if vsock is not None:
        calls.append(("/vsock", {"guest_cid": 3, "uds_path": os.fspath(vsock)}))
    return calls


class FirecrackerVM:
    """One Firecracker microVM: `start()`, iterate `events()`, always `kill()` (as `vm.VM`)."""

    def __init__(
        self,
        cfg: VMConfig,
        vmdir: Path,
        *,
        binary: str = FIRECRACKER,
        nonce: str | None = None,
        vsock: bool = False,
    ) -> None:
        self.cfg = cfg
        self.vmdir = vmdir
        self.binary = binary
        self.nonce = nonce or new_nonce()
        self.vsock = vmdir / "vsock.sock" if vsock else None
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def api_socket(self) -> Path:
        return self.vmdir / "api.sock"

    async def start(self) -> None:
        """Start firecracker, describe the VM (`machine_calls`) and boot it. RuntimeFailure (the
        process is then killed) when Firecracker refuses a call, naming the call and its words."""
        calls = machine_calls(self.cfg, vsock=self.vsock)
        with contextlib.suppress(FileNotFoundError):
            self.api_socket.unlink()
        argv = [self.binary, "--api-sock", os.fspath(self.api_socket), "--id", _instance_id(self.cfg.name)]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {self.binary}: {exc}", reason=Reason.SANDBOX) from exc
        try:
            await self._wait_socket()
            api = FirecrackerAPI(self.api_socket)
            try:
                for path, body in calls:
                    await api.put(path, body)
                await api.start()
            finally:
                await api.aclose()
        except FirecrackerAPIError as exc:
            await self._abandon()
            raise RuntimeFailure(
                f"Firecracker refused the job's VM: {exc.message}", reason=Reason.SANDBOX
            ) from exc
        except BaseException:
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        """Kill a VM that never booted and read its pipes to their end (nobody else reads them yet)."""
        await self.kill()
        assert self.proc is not None
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(KILL_WAIT_S):
                        while await stream.read(READ_CHUNK):
                            pass

    async def _wait_socket(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not self.api_socket.exists():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                err = b""
                if self.proc.stderr is not None:
                    with contextlib.suppress(TimeoutError):
                        err = await asyncio.wait_for(self.proc.stderr.read(4000), 1.0)
                raise RuntimeFailure(
                    f"{self.binary} made no API socket within {SOCKET_WAIT_S:.0f} s "
                    f"(exit {self.proc.returncode}): {err.decode(errors='replace').strip()}",
                    reason=Reason.SANDBOX,
                )
            await asyncio.sleep(0.01)

    async def events(self) -> AsyncIterator[Output | Control]:
        """The serial console's output and control events until Firecracker closes it."""
        assert self.proc is not None and self.proc.stdout is not None
        parser = ConsoleParser(self.nonce)
        while data := await self.proc.stdout.read(READ_CHUNK):
            for ev in parser.feed(data):
                yield ev
        for ev in parser.flush():
            yield ev

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL firecracker (its process group) and reap it; safe to call more than once."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT_S)
        with contextlib.suppress(OSError):
            self.api_socket.unlink()


def _instance_id(name: str) -> str:
    """Firecracker's --id accepts [A-Za-z0-9-], at most 64 characters: our VM name, mapped."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in name)[:64]


# --- the engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """The VMM jobs run on, and what this executor has of Firecracker (said once in the log and
    in validate)."""

    jobs: str  # "qemu microvm": the only engine that runs jobs today (see the module docstring)
    firecracker: str | None  # the binary found (its path), when a working KVM is there too
    why: str  # in plain words

    def words(self) -> str:
        return f"jobs on {self.jobs}; {self.why}"


def engine(accel: str, *, which: Sequence[str] = (FIRECRACKER,)) -> Engine:
    """`firecracker` on PATH and a KVM that boots a guest (`accel == "kvm"`, vm.accelerator's probe):
    Firecracker is usable; it still does not run jobs (its guest side is not built)."""
    found = next((p for p in (shutil.which(b) for b in which) if p), None)
    if found is None:
        return Engine("qemu microvm", None, "no firecracker binary on PATH")
    if accel != "kvm":
        return Engine("qemu microvm", None, f"{found} found, but KVM does not boot a guest here")
    return Engine(
        "qemu microvm",
        found,
        f"{found} found with a working KVM: its API driver (fcapi) boots VMs, jobs do not use it "
        "yet (no 9p or virtio console in Firecracker: the job's workspace and channel need a "
        "block device and the serial port)",
    )


_said: set[Engine] = set()


def say_once(choice: Engine) -> None:
    """The engine in the executor log, once per process (the runtime's check at start-up)."""
    if choice not in _said:
        _said.add(choice)
        log.info("firecracker: %s", choice.words())
