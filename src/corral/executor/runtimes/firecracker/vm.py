"""Boot one job microVM with qemu `-M microvm`, read its console, kill it.

A VM gets (see `VMConfig`): the kernel and initramfs of `assets`, vCPUs and RAM, virtio-blk disks
(each with a virtio serial the guest finds it by: "scratch"), 9p shares (a list: the runtime's are
"job", read-only, and "rw", whose `ws` holds the workspace once the job is known; see runtime.py),
and no network device unless `nic` asks for one (see `Nic`: qemu's user-mode stack, run inside the
job's network namespace, whose firewall its sockets then pass). The job's channel is a virtio
console on qemu's stdout (see `console`), and its input on qemu's stdin carries the `go` line; the
kernel's serial console goes to `console_log` or nowhere.

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
import collections
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import Reason, RuntimeFailure
from corral.executor.runtimes.firecracker.assets import Assets
from corral.executor.runtimes.firecracker.console import BOOT_NONCE, ConsoleParser, Control, Output, new_nonce

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
BOOT_LOG_MAX = 64 * 1024  # bytes of console kept from outside steps, for errors
# TCG's translated-code buffer, host memory per VM beyond its RAM: qemu's default since 5.0 is 1 GiB,
# filled as a job runs new code; 32 MiB (the default before 5.0) keeps an idle warm VM's overhead
# at ~54 MiB instead of ~85 (bench/firecracker_boot.py) with no measurable cost at boot; when it is
# full qemu flushes it and translates again (a code-heavy job pays that)
TB_SIZE_MIB = 32
IDLE_TIMEOUT_S = 6 * 3600  # a VM whose job never comes powers itself off (init's bounded wait for go)
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
    idle_timeout_s: int = IDLE_TIMEOUT_S  # how long init waits for `go` before it powers off


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
        f"corral.idle={max(1, cfg.idle_timeout_s)}",
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
        f"tcg,tb-size={TB_SIZE_MIB}" if cfg.accel == "tcg" else cfg.accel,
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
            # remap: a share may span mounts (the workspace bound into it), whose inode numbers
            # would otherwise collide in the guest
            f"local,id=f{i},path={s.path},security_model=passthrough,multidevs=remap{ro}",
            "-device",
            f"virtio-9p-device,fsdev=f{i},mount_tag={s.tag}",
        ]
    if cfg.nic is not None:
        argv += ["-netdev", QEMU_NETDEV, "-device", "virtio-net-device,netdev=n0"]
        if cfg.nic.netns is not None:  # nsenter: the namespace's network only, the host's mounts
            argv = [NSENTER, f"--net={NETNS_DIR / cfg.nic.netns}", "--", *argv]
    return argv


class VM:
    """One running microVM: `start()`, `wait_ready()` (init is up, the VM knows no job yet), `go()`
    (the job is staged: init may run it), iterate `events()`, and always `kill()` at the end.

    `go` writes ``go <nonce>`` to the virtio console's input (qemu's stdin, read by init alone: no
    step has the console) and switches the console parser from BOOT_NONCE to the VM's nonce, which
    thus never touches a file or an argv. A VM serves one job: `go` works once."""

    def __init__(self, cfg: VMConfig, nonce: str | None = None) -> None:
        self.cfg = cfg
        self.nonce = nonce or new_nonce()
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready_at = 0.0  # when init said "ready" (0: not yet)
        self.gone = False  # go() was called
        self.boot_log = bytearray()  # console bytes outside steps (init's and the kernel's), bounded
        self._stderr = b""
        self._parser = ConsoleParser(BOOT_NONCE)
        self._pending: collections.deque[Output | Control] = collections.deque()
        self._eof = False
        self._err_task: asyncio.Future[None] | None = None

    async def start(self) -> None:
        argv = qemu_argv(self.cfg)
        log.debug("firecracker: starting %s", " ".join(argv))
        self.started_at = time.monotonic()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start qemu: {exc}", reason=Reason.SANDBOX) from exc
        self._err_task = asyncio.ensure_future(self._read_stderr())

    async def _read(self) -> bool:
        """Read one chunk of the console into the pending events; False at its end (the VM is off)."""
        assert self.proc is not None and self.proc.stdout is not None
        if self._eof:
            return False
        data = await self.proc.stdout.read(READ_CHUNK)
        self._pending.extend(self._parser.feed(data) if data else self._parser.flush())
        self._eof = not data
        return bool(data)

    def keep_boot_log(self, data: bytes) -> None:
        if len(self.boot_log) < BOOT_LOG_MAX:
            self.boot_log += data[: BOOT_LOG_MAX - len(self.boot_log)]

    async def wait_ready(self) -> None:
        """Until init announces "ready" (its shares and scratch disk mounted); RuntimeFailure when it
        reports an error or qemu ends first. The caller bounds the wait."""
        while True:
            while self._pending:
                ev = self._pending.popleft()
                if isinstance(ev, Output):
                    self.keep_boot_log(ev.data)
                elif ev.words[:1] == ["ready"]:
                    self.ready_at = time.monotonic()
                    return
                elif ev.words[:1] == ["error"]:
                    raise RuntimeFailure(f"the VM's init failed: {ev.event[6:]}", reason=Reason.SANDBOX)
            if not await self._read():
                rc = await self.wait()
                raise RuntimeFailure(
                    f"the VM stopped before its init was ready (qemu exit {rc}): {self.why()}",
                    reason=Reason.SANDBOX,
                )

    async def go(self) -> None:
        """Let init run its job (staged in its shares by now)."""
        assert self.proc is not None and self.proc.stdin is not None and self.ready_at and not self.gone
        self.gone = True
        self._parser.rekey(self.nonce)
        try:
            self.proc.stdin.write(f"go {self.nonce}\n".encode())
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:  # qemu is gone
            raise RuntimeFailure(f"the job's VM is gone: {exc}", reason=Reason.SANDBOX) from exc

    async def events(self) -> AsyncIterator[Output | Control]:
        """The console's output and control events until qemu closes it (the VM is off)."""
        while True:
            while self._pending:
                yield self._pending.popleft()
            if not await self._read() and not self._pending:
                return

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(READ_CHUNK):
            self._stderr = (self._stderr + chunk)[-8192:]

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace").strip()

    def why(self) -> str:
        """What qemu and the guest said last (for an error: why the VM stopped)."""
        tail = (bytes(self.boot_log[-1000:]) + _tail(self.cfg.console_log)).decode(errors="replace").strip()
        return self.stderr or tail or "no output"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self) -> int:
        assert self.proc is not None
        rc = await self.proc.wait()
        if self._err_task is not None:  # qemu's last words
            await asyncio.wait({self._err_task}, timeout=1.0)
        return rc

    async def kill(self) -> None:
        """SIGKILL qemu (its whole process group) and reap it; safe to call more than once."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT_S)
        if self._err_task is not None:
            self._err_task.cancel()


def _tail(path: Path | None, n: int = 2000) -> bytes:
    """The last n bytes of the kernel's console log (why a VM died before or while running)."""
    if path is None:
        return b""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read(n)
    except OSError:
        return b""


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
    vm = VM(VMConfig(name=f"corral-probe-{os.getpid()}", assets=assets, accel=accel, memory_mib=192))
    await vm.start()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            async for ev in vm.events():
                if isinstance(ev, Control) and ev.words and ev.words[0] in ("error", "ready"):
                    return True  # init ran (it reports "error": a probe has no shares or disks)
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
