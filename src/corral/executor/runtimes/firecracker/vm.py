"""Boot one job microVM with qemu `-M microvm`, read its console, kill it.

A VM gets (see `VMConfig`): the kernel and initramfs of `assets`, vCPUs and RAM, virtio-blk disks
(each with a virtio serial the guest finds it by: "scratch", "img0", ...), 9p shares ("ctl" with the
nonce and the job's steps, "ws" the workspace, "steps" the step scripts), and no network device
unless `nic` asks for one (see `Nic`: qemu's user-mode stack, run inside the job's network
namespace, whose firewall its sockets then pass). The job's channel is a virtio console on qemu's stdout
(see `console`); the kernel's serial console goes to `console_log` or nowhere.

The accelerator: KVM only where a tiny guest really boots with it (probed once per process and
cached on disk next to the assets, keyed by kernel and qemu); else TCG, which works everywhere.
On the machines corral is developed on, /dev/kvm is PVM, on which a stock Debian kernel does not
boot (machine notes §4), so the probe answers TCG there.

qemu runs in its own session (process group), with `-name <name>` so the janitor finds leftovers
by name in /proc; `kill()` SIGKILLs it and waits: nothing of the VM outlives it (its disks and
shares are files the caller owns and removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import Reason, RuntimeFailure
from corral.executor.runtimes.firecracker.assets import Assets
from corral.executor.runtimes.firecracker.console import ConsoleParser, Control, Output, new_nonce

__all__ = [
    "VM",
    "Disk",
    "Nic",
    "Share",
    "VMConfig",
    "accel_words",
    "accelerator",
    "host_khz",
    "qemu_processes",
]

log = logging.getLogger("corral.executor.runtimes.firecracker")

READ_CHUNK = 65536  # bytes read from the console at once
PROBE_TIMEOUT_S = 10.0  # seconds for a KVM probe boot to reach init (a working KVM: well under 1 s)
MIN_MEMORY_MIB = 128  # the guest kernel and init need this much
KILL_WAIT_S = 5.0  # seconds to wait for a SIGKILLed qemu to be reaped
NSENTER = "/usr/bin/nsenter"  # util-linux: runs qemu in a job's network namespace
NETNS_DIR = Path("/run/netns")  # named network namespaces (iproute2's)
GUEST_ADDRESS = "10.0.3.15/24"  # a NIC's guest side (`Nic`)
GUEST_GATEWAY = "10.0.3.2"  # qemu's gateway: the loopback of the namespace qemu runs in
QEMU_DNS = "10.0.3.3"  # qemu's resolver (forwards to the resolv.conf of the host qemu runs on)
QEMU_NETDEV = "user,id=n0,ipv4=on,ipv6=off,net=10.0.3.0/24,host=10.0.3.2,dns=10.0.3.3"


@dataclass(frozen=True)
class Disk:
    serial: str  # how the guest finds it (/sys/block/vdX/serial), at most 20 characters
    path: Path
    readonly: bool = True


@dataclass(frozen=True)
class Share:
    tag: str
    path: Path
    readonly: bool = True


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC behind qemu's user-mode stack (slirp): the guest's connections become qemu's
    own sockets, opened in `netns` (a job's namespace behind the egress firewall; None: the
    executor's own, for "open" jobs). ipv4 only; no hostfwd, smb or tftp: nothing reaches the guest.

    qemu's virtual network is 10.0.3.0/24 (GUEST_ADDRESS, GUEST_GATEWAY, qemu's own resolver
    10.0.3.3), not slirp's usual 10.0.2.0/24: that one is the job namespace's (slirp4netns' tap0,
    its resolver 10.0.2.3), which the guest then reaches as any other address, through qemu's
    sockets and the firewall. So `dns` is 10.0.2.3 in a job namespace (the one resolver its rules
    allow; qemu reads no resolv.conf for it) and qemu's 10.0.3.3 (the host's resolver) otherwise.
    The guest applies it from the kernel command line (`corral.net=`, guest/net.sh)."""

    netns: str | None = None
    dns: str = QEMU_DNS


@dataclass(frozen=True)
class VMConfig:
    name: str  # qemu -name: the janitor's handle
    assets: Assets
    cpus: int = 1
    memory_mib: int = 512
    disks: Sequence[Disk] = ()
    shares: Sequence[Share] = ()
    nic: Nic | None = None  # a network device (jobs with network only; cold VMs)
    accel: str = "tcg"
    console_log: Path | None = None  # where the kernel's serial console goes (None: discarded)
    extra_cmdline: Sequence[str] = field(default_factory=tuple)


def host_khz() -> int:
    """The host's TSC frequency in kHz, for tsc_early_khz (TCG boots hang at random without it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


def qemu_argv(cfg: VMConfig) -> list[str]:
    cmdline = [
        "console=ttyS0",
        "panic=-1",
        "loglevel=4",
        f"tsc_early_khz={host_khz()}",
        "tsc=reliable",
        "rdinit=/init",
        *cfg.extra_cmdline,
    ]
    if cfg.nic is not None:
        cmdline.append(f"corral.net={GUEST_ADDRESS},{GUEST_GATEWAY},{cfg.nic.dns}")
    cpu = "host" if cfg.accel == "kvm" else "max"
    argv = [
        cfg.assets.qemu,
        "-name",
        cfg.name,
        "-accel",
        cfg.accel,
        "-M",
        "microvm,x-option-roms=off",
        "-cpu",
        cpu,
        "-smp",
        str(max(1, cfg.cpus)),
        "-m",
        f"{max(MIN_MEMORY_MIB, cfg.memory_mib)}M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        # the kernel's console (boot messages, panics) to a file or nowhere; the job's output and
        # init's control lines on a virtio console to qemu's stdout (console.py)
        "-chardev",
        f"file,id=boot,path={cfg.console_log}" if cfg.console_log else "null,id=boot",
        "-serial",
        "chardev:boot",
        "-device",
        "virtio-serial-device",
        "-chardev",
        "stdio,id=con,signal=off",
        "-device",
        "virtconsole,chardev=con",
        "-kernel",
        str(cfg.assets.kernel),
        "-initrd",
        str(cfg.assets.initrd),
        "-append",
        " ".join(cmdline),
    ]
    for i, d in enumerate(cfg.disks):
        ro = ",readonly=on" if d.readonly else ""
        argv += [
            "-drive",
            f"id=d{i},file={d.path},format=raw,if=none,cache=unsafe{ro}",
            "-device",
            f"virtio-blk-device,drive=d{i},serial={d.serial}",
        ]
    for i, s in enumerate(cfg.shares):
        ro = ",readonly=on" if s.readonly else ""
        argv += [
            "-fsdev",
            f"local,id=f{i},path={s.path},security_model=passthrough{ro}",
            "-device",
            f"virtio-9p-device,fsdev=f{i},mount_tag={s.tag}",
        ]
    if cfg.nic is not None:
        argv += ["-netdev", QEMU_NETDEV, "-device", "virtio-net-device,netdev=n0"]
        if cfg.nic.netns is not None:  # nsenter: the namespace's network only, the host's mounts
            argv = [NSENTER, f"--net={NETNS_DIR / cfg.nic.netns}", "--", *argv]
    return argv


class VM:
    """One running microVM. Use `start()`, iterate `events()`, and always `kill()` at the end."""

    def __init__(self, cfg: VMConfig, nonce: str | None = None) -> None:
        self.cfg = cfg
        self.nonce = nonce or new_nonce()
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.boot_log = bytearray()  # console bytes before "ready" (kernel messages), bounded
        self._stderr = b""

    async def start(self) -> None:
        argv = qemu_argv(self.cfg)
        log.debug("firecracker: starting %s", " ".join(argv))
        self.started_at = time.monotonic()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start qemu: {exc}", reason=Reason.SANDBOX) from exc

    async def events(self) -> AsyncIterator[Output | Control]:
        """The console's output and control events until qemu closes it (the VM is off)."""
        assert self.proc is not None and self.proc.stdout is not None
        parser = ConsoleParser(self.nonce)
        err_task = asyncio.ensure_future(self._read_stderr())
        try:
            while True:
                data = await self.proc.stdout.read(READ_CHUNK)
                if not data:
                    break
                for ev in parser.feed(data):
                    yield ev
            for ev in parser.flush():
                yield ev
        finally:
            await asyncio.wait({err_task}, timeout=1.0)
            err_task.cancel()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(READ_CHUNK):
            self._stderr = (self._stderr + chunk)[-8192:]

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace").strip()

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL qemu (its whole process group) and reap it; safe to call more than once."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT_S)


def qemu_processes(prefix: str) -> dict[int, str]:
    """pid -> VM name of running qemu processes whose -name starts with `prefix`."""
    out: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-name" and argv[i + 1].startswith(prefix.encode()):
                out[int(entry.name)] = argv[i + 1].decode(errors="replace")
    return out


# --- the accelerator -----------------------------------------------------------------------------

_accel_cache: dict[str, str] = {}


def _probe_key(assets: Assets) -> str:
    st_k, st_q = os.stat(assets.kernel), os.stat(assets.qemu)
    return f"{st_k.st_size}-{int(st_k.st_mtime)}-{st_q.st_size}-{int(st_q.st_mtime)}"


async def _boots_with(assets: Assets, accel: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="corral-probe-") as tmp:
        ctl = Path(tmp)
        vm = VM(
            VMConfig(
                name=f"corral-probe-{os.getpid()}",
                assets=assets,
                accel=accel,
                memory_mib=192,
                shares=[Share("ctl", ctl)],
            )
        )
        (ctl / "nonce").write_text(vm.nonce + "\n")
        (ctl / "job.sh").write_text("")
        await vm.start()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                async for ev in vm.events():
                    if isinstance(ev, Control) and ev.words and ev.words[0] in ("error", "ready"):
                        return True  # init ran (it reports "error": no scratch disk in a probe)
        except TimeoutError:
            return False
        finally:
            await vm.kill()
    return False


def accel_words(accel: str) -> str:
    """The accelerator in plain words, as the executor log and `corral executor validate` say it."""
    if accel == "kvm":
        return "KVM (hardware virtualization)"
    return "TCG (software emulation, no working KVM here: CPU-bound steps run about 10x slower)"


async def accelerator(assets: Assets) -> str:
    """Return "kvm" when a guest really boots with KVM here, else "tcg"; probed once, then cached.
    The answer is logged once per process, wherever it came from (the probe or accel.json)."""
    key = _probe_key(assets)
    if key in _accel_cache:
        return _accel_cache[key]
    cache = assets.dir / "accel.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(cache.read_text())
        if data["key"] == key and data["accel"] in ("kvm", "tcg"):
            _accel_cache[key] = data["accel"]
            log.info("firecracker: microVMs use %s (probed before: %s)", accel_words(data["accel"]), cache)
            return str(data["accel"])
    accel = "tcg"
    if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
        if await _boots_with(assets, "kvm"):
            accel = "kvm"
    log.info("firecracker: microVMs use %s", accel_words(accel))
    _accel_cache[key] = accel
    with contextlib.suppress(OSError):
        tmp = cache.with_name(".accel.json.tmp")
        tmp.write_text(json.dumps({"key": key, "accel": accel}))
        os.replace(tmp, cache)
    return accel
