"""What a job microVM boots: a kernel and an initramfs, made from Debian packages only.

`ensure_assets(dir)` (and `corral executor install firecracker`) does, once and idempotently:

1. the packages: qemu-system-x86 (the VMM), busybox-static (the guest's userland), e2fsprogs
   (mkfs.ext4 for image disks), gcc and libc6-dev (the guest's step starter, `guest/step.c`, is
   built static here); installed with apt when one is missing;
2. the kernel: Debian's current `linux-image-<version>-amd64` (what `linux-image-amd64` depends on) is
   downloaded with `apt-get download` and unpacked with `dpkg-deb -x` into a temporary directory,
   WITHOUT installing it (installing pulls in systemd/udev and runs update-initramfs). The bzImage's
   XZ payload is decompressed here (lzma) into `vmlinux`, an ELF with a PVH entry that qemu's
   microvm boots directly (measured: 1.9-2.5 s to a shell under TCG, vs 5.9 s for the bzImage,
   which spends 3.7 s decompressing itself under TCG);
3. the initramfs (see `initramfs`): busybox, the guest init (`guest/init.sh`), the modules of
   GUEST_MODULES and what they depend on, the step starter.

The result is recorded in `manifest.json` (the kernel package, the hash of every input that shapes
the initramfs, the sha256 of each output). A re-run checks those and does nothing when they hold.
The executor checks the inputs too (`load_assets`): guest scripts that are not those the initramfs
was built from (corral was upgraded, the install not re-run) speak another protocol than the host
(the `go` handshake, control lines), so it refuses to boot them, naming the install command, rather
than boot VMs that never become ready.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError
from corral.executor.runtimes.firecracker import initramfs

__all__ = [
    "DEFAULT_ASSETS_DIR",
    "GUEST_MODULES",
    "Assets",
    "InstallReport",
    "Progress",
    "ensure_assets",
    "extract_vmlinux",
    "find_qemu",
    "load_assets",
]

DEFAULT_ASSETS_DIR = Path("/var/lib/corral/firecracker")
KERNEL_META_PACKAGE = "linux-image-amd64"
PACKAGES = {  # Debian package -> a file it provides that we use
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "e2fsprogs": "/sbin/mkfs.ext4",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",  # gcc -static links against it
}
# virtio transport, console (the job's output and control lines) and disks, ext4 (image and scratch
# disks), 9p (workspace, control), overlay (a step's writable root), loop (image disks: files in
# the read-only 9p share), virtio_net (jobs with network);
# crc32c_generic: ext4 needs it, though no module names it in depends=.
GUEST_MODULES = (
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "overlay",
    "loop",
    "9p",
    "9pnet_virtio",
    "virtio_net",
)
GUEST_INIT = Path(__file__).parent / "guest" / "init.sh"
GUEST_NET = Path(__file__).parent / "guest" / "net.sh"  # /lib/corral/net.sh: init sources it
GUEST_CLISTEP = Path(__file__).parent / "guest" / "clistep.sh"  # /lib/corral/clistep.sh: init sources it
# /corral/step: chroot, privilege drop, cd and exec of every step in one static program (its header)
GUEST_STEP = Path(__file__).parent / "guest" / "step.c"
BUSYBOX = "/bin/busybox"
XZ_MAGIC = b"\xfd7zXZ\x00"
MANIFEST_VERSION = 3  # 3: the step starter instead of setpriv and its libraries
APT_TIMEOUT_S = 600.0  # seconds for one apt-get call

Progress = Callable[[str], None]  # called with the name of each stage as it starts


@dataclass(frozen=True)
class Assets:
    dir: Path
    kernel: Path  # vmlinux (uncompressed, PVH entry)
    initrd: Path  # gzip'd newc cpio
    kernel_release: str  # e.g. 6.1.0-57-amd64: `uname -r` in the guest

    @property
    def qemu(self) -> str:
        return find_qemu() or PACKAGES["qemu-system-x86"]


def find_qemu() -> str | None:
    """The qemu binary: on PATH, else where Debian's package puts it; None when neither is there."""
    return shutil.which("qemu-system-x86_64") or shutil.which(PACKAGES["qemu-system-x86"])


@dataclass(frozen=True)
class InstallReport:
    assets: Assets
    changed: bool  # False: everything was already in place
    installed_packages: tuple[str, ...]
    stages: tuple[tuple[str, float], ...]  # (stage, seconds)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _run(argv: list[str], *, cwd: Path | None = None, what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{what}: {' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"{what}: {' '.join(argv)} exited {proc.returncode}: {' / '.join(tail)}")
    return proc.stdout


def missing_packages() -> list[str]:
    out = []
    for pkg in PACKAGES:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in proc.stdout:
            out.append(pkg)
    return out


def kernel_package() -> str:
    """The versioned kernel package `linux-image-amd64` depends on now (apt's view)."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], what="finding Debian's kernel package")
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        name = value.strip()
        if key == "Depends" and name.startswith("linux-image-"):
            return name
    raise ConfigError(
        f"apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package (apt-get update?)"
    )


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed kernel ELF inside a bzImage whose payload is XZ (Debian's)."""
    start = bzimage.find(XZ_MAGIC)
    while start != -1:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        with contextlib.suppress(lzma.LZMAError):
            out = dec.decompress(bzimage[start:])
            if dec.eof and out[:4] == b"\x7fELF":
                return out
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise ValueError("no XZ-compressed ELF kernel found in the bzImage")


_INPUTS = (GUEST_INIT, GUEST_NET, GUEST_CLISTEP, GUEST_STEP, Path(BUSYBOX))
_inputs_cache: dict[tuple[tuple[int, int, int], ...], str] = {}


def _inputs_hash() -> str:
    """What shapes the initramfs besides the kernel: the guest scripts, the step starter's source,
    busybox, the module list
    (hashed again only when one of the files changed: `load_assets` asks at every VM's boot)."""
    key = tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in (os.stat(p) for p in _INPUTS))
    if key in _inputs_cache:
        return _inputs_cache[key]
    h = hashlib.sha256()
    for part in _INPUTS:
        h.update(part.read_bytes())
    h.update(",".join(GUEST_MODULES).encode())
    h.update(str(MANIFEST_VERSION).encode())
    _inputs_cache[key] = digest = h.hexdigest()
    return digest


def load_assets(directory: Path = DEFAULT_ASSETS_DIR, *, verify: bool = False) -> Assets:
    """The installed assets; ConfigError naming the install command when they are missing, or were
    built from other guest scripts than this corral's (see the module docstring)."""
    manifest = directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
        assets = Assets(directory, directory / "vmlinux", directory / "initramfs.img", data["release"])
        if verify:
            for name, digest in data["sha256"].items():
                if _sha256(directory / name) != digest:
                    raise ValueError(f"{name} does not match its recorded sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the microVM kernel and initramfs are not installed in {directory} ({exc}): "
            "run `corral executor install firecracker`"
        ) from None
    try:
        current = data.get("inputs") == _inputs_hash()
    except OSError as exc:
        raise ConfigError(f"cannot check the microVM initramfs in {directory}: {exc}") from None
    if not current:
        raise ConfigError(
            f"the microVM initramfs in {directory} was built from other guest scripts (guest/*.sh), "
            "step starter (guest/step.c) or busybox than this corral's (an upgrade without a new "
            "install?), so its VMs "
            "would not understand this executor: run `corral executor install firecracker`"
        )
    return assets


def _up_to_date(directory: Path, package: str) -> Assets | None:
    try:
        data = json.loads((directory / "manifest.json").read_text())
        if data.get("package") != package or data.get("inputs") != _inputs_hash():
            return None
        if data.get("toolchain") != _toolchain():
            return None
        return load_assets(directory, verify=True)
    except (OSError, ValueError, ConfigError):
        return None


GCC = PACKAGES["gcc"]  # Debian's, by its path: not a wrapper or another compiler first on PATH
LIBC_A = PACKAGES["libc6-dev"]
CC_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}  # no LIBRARY_PATH, C_INCLUDE_PATH, ... of the caller
CFLAGS = ("-static", "-O2", "-s", "-Wall", "-Wextra")  # warnings shown, not fatal (CI compiles with -Werror)


def build_step(extra: tuple[str, ...] = ()) -> bytes:
    """The guest's step starter (guest/step.c), compiled static: the guest has no libc of its own."""
    with tempfile.TemporaryDirectory(prefix="corral-step-") as tmp:
        out = Path(tmp) / "step"
        cc = [GCC, *CFLAGS, *extra, "-o", str(out), str(GUEST_STEP)]
        _run(cc, what="building the guest's step starter", env=CC_ENV)
        return out.read_bytes()


def _toolchain() -> str:
    """What the step starter is built with: an install after gcc or glibc changed builds it again
    (only the install asks: an executor never needs gcc)."""
    version = _run([GCC, "-dumpfullversion"], what="asking gcc its version", env=CC_ENV).strip()
    return f"gcc {version}, libc.a {_sha256(Path(LIBC_A))[:16]}"


def build_initramfs(modules_root: Path) -> bytes:
    """The gzip'd initramfs for the kernel whose modules are in modules_root (lib/modules/<release>)."""
    builtin_list = modules_root / "modules.builtin"
    builtin = {
        Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
        for line in (builtin_list.read_text().split() if builtin_list.exists() else [])
    }
    index = initramfs.module_index(modules_root / "kernel")
    order = initramfs.resolve_modules(GUEST_MODULES, index, builtin)
    cpio = initramfs.CpioWriter()
    for d in ("dev", "proc", "sys", "tmp", "etc"):
        cpio.directory(d)
    busybox = Path(BUSYBOX).read_bytes()
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.file("init", GUEST_INIT.read_bytes(), 0o755)
    cpio.file("lib/corral/net.sh", GUEST_NET.read_bytes(), 0o644)
    cpio.file("lib/corral/clistep.sh", GUEST_CLISTEP.read_bytes(), 0o644)
    for name in order:
        cpio.file(f"lib/modules/{name}.ko", initramfs.strip_signature(index[name].read_bytes()))
    cpio.file("corral/modules", ("\n".join(order) + "\n").encode())
    # /corral: what init runs a step with (the starter, from outside the step's root); only the
    # rehearsal's root sees it, at /.corral, to run busybox's `true` (init.sh)
    cpio.file("corral/busybox", busybox, 0o755)
    cpio.file("corral/step", build_step(), 0o755)
    return cpio.gzipped()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two installs at once: each its own
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_assets(
    directory: Path = DEFAULT_ASSETS_DIR,
    *,
    progress: Progress | None = None,
    install_packages: bool = True,
) -> InstallReport:
    """Install what a job microVM needs into `directory`; a no-op when it is all in place."""
    import time

    stages: list[tuple[str, float]] = []
    t = time.monotonic()

    def stage(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        if stages:
            stages[-1] = (stages[-1][0], now - t)
        t = now
        stages.append((name, 0.0))
        if progress is not None:
            progress(name)

    def done() -> tuple[tuple[str, float], ...]:
        if stages:
            stages[-1] = (stages[-1][0], time.monotonic() - t)
        return tuple(stages)

    stage("checking packages")
    missing = missing_packages()
    if missing:
        if not install_packages:
            raise ConfigError(f"missing Debian packages: {' '.join(missing)} (apt-get install them)")
        stage(f"installing {' '.join(missing)}")
        env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _run(
            [*env_prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], what="apt"
        )
    package = kernel_package()
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    current = _up_to_date(directory, package)
    if current is not None:
        return InstallReport(current, False, tuple(missing), done())

    with tempfile.TemporaryDirectory(prefix="kernel-", dir=directory) as tmp_name:
        tmp = Path(tmp_name)
        stage(f"downloading {package}")
        _run(["apt-get", "download", package], cwd=tmp, what="downloading the kernel package")
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise ConfigError(f"apt-get download {package} left {len(debs)} .deb files")
        stage("unpacking the kernel package")
        root = tmp / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], what="unpacking the kernel package")
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise ConfigError(f"{debs[0].name} holds {len(vmlinuz)} vmlinuz files")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        stage("extracting vmlinux")
        _write_atomic(directory / "vmlinux", extract_vmlinux(vmlinuz[0].read_bytes()))
        stage("building the initramfs")
        _write_atomic(directory / "initramfs.img", build_initramfs(root / "lib" / "modules" / release))
    stage("recording hashes")
    manifest = {
        "version": MANIFEST_VERSION,
        "package": package,
        "release": release,
        "inputs": _inputs_hash(),
        "toolchain": _toolchain(),
        "sha256": {name: _sha256(directory / name) for name in ("vmlinux", "initramfs.img")},
    }
    _write_atomic(directory / "manifest.json", json.dumps(manifest, indent=2).encode())
    return InstallReport(load_assets(directory), True, tuple(missing), done())
