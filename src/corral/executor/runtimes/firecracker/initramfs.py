"""The guest's initramfs, written by Python: a gzip'd cpio "newc" archive (no cpio binary needed).

What goes in (see `assets.build_initramfs`): busybox-static as /bin/busybox, the guest init
(`guest/init.sh`) as /init, the kernel modules the guest needs (virtio, ext4, 9p, overlay: Debian
builds them as modules) in load order, and the step starter (`guest/step.c`, built static) under
/corral/: it chroots into a step's root and drops its privileges (busybox's setpriv cannot change
uids; util-linux's needs a loader and libraries in the guest).

Kernel module dependencies come from each module's `.modinfo` section (`depends=`), read from the
ELF file here: a fresh machine has no kmod/depmod.
"""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpioEntry", "CpioWriter", "modinfo", "module_index", "resolve_modules", "strip_signature"]

_NEWC_MAGIC = b"070701"
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000


@dataclass(frozen=True)
class CpioEntry:
    path: str  # inside the archive, without a leading slash
    mode: int  # permission bits and file type (S_IF*)
    data: bytes = b""  # file content, or a symlink's target


class CpioWriter:
    """Collects entries and writes a newc archive; parents are added as directories."""

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._entries:
                self._entries[d] = CpioEntry(d, _S_IFDIR | 0o755)

    def directory(self, path: str, perm: int = 0o755) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = CpioEntry(path, _S_IFDIR | perm)

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = CpioEntry(path, _S_IFREG | perm, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = CpioEntry(path, _S_IFLNK | 0o777, target.encode())

    def archive(self) -> bytes:
        """The uncompressed newc archive (entries in path order, then the TRAILER!!!)."""
        out = io.BytesIO()
        for ino, entry in enumerate(sorted(self._entries.values(), key=lambda e: e.path), start=1):
            _write_entry(
                out, ino, entry.path, entry.mode, entry.data, nlink=2 if entry.mode & _S_IFDIR else 1
            )
        _write_entry(out, 0, "TRAILER!!!", 0, b"", nlink=1)
        return out.getvalue()

    def gzipped(self) -> bytes:
        return gzip.compress(self.archive(), compresslevel=6, mtime=0)


def _pad4(out: io.BytesIO) -> None:
    out.write(b"\0" * (-out.tell() % 4))


def _write_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes, *, nlink: int) -> None:
    raw_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(raw_name), 0)
    out.write(_NEWC_MAGIC + b"".join(b"%08X" % f for f in fields))
    out.write(raw_name)
    _pad4(out)
    out.write(data)
    _pad4(out)


# --- kernel modules ---------------------------------------------------------------------------------


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of a kernel module's .modinfo section (last value wins)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = ko.index(b"\0", str_off + name_off)
        if ko[str_off + name_off : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset : offset + size].split(b"\0"):
                key, sep, value = item.partition(b"=")
                if sep:
                    info[key.decode()] = value.decode(errors="replace")
            return info
    return {}


_SIG_MAGIC = b"~Module signature appended~\n"
_SIG_INFO_LEN = 12  # struct module_signature: 5 bytes of ids, 3 of padding, __be32 sig_len


def strip_signature(ko: bytes) -> bytes:
    """The module without its appended signature. The kernel (MODULE_SIG without FORCE) then loads
    it unverified: verifying each signature under TCG was most of the guest's boot time."""
    if not ko.endswith(_SIG_MAGIC):
        return ko
    end = len(ko) - len(_SIG_MAGIC)
    sig_len = int.from_bytes(ko[end - 4 : end], "big")
    cut = end - _SIG_INFO_LEN - sig_len
    if cut <= 0:
        raise ValueError("malformed module signature")
    return ko[:cut]


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores, as the kernel names them) -> its .ko file."""
    return {p.name[: -len(".ko")].replace("-", "_"): p for p in sorted(modules_dir.rglob("*.ko"))}


def resolve_modules(wanted: Iterable[str], index: Mapping[str, Path], builtin: set[str]) -> list[str]:
    """`wanted` and their dependencies, each after what it depends on; built-in ones left out."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise ValueError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            raise ValueError(f"kernel module {name} is neither in the package nor built in")
        deps = modinfo(path.read_bytes()).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order
