"""What a CLI step's root in the guest is made of: the host's /usr and the CLIs, read-only, nothing else.

A CLI step runs corral's CLI (EXECUTOR_CLI_PATH) or src-cli (EXECUTOR_SRC_CLI_PATH) inside the job's
VM, never on the host, as Sourcegraph runs `src` in its VM. It sees what the shell sandbox shows a
CLI step (runtimes/shell: /usr, the usrmerge links, selected /etc entries, `registry.cli_binds`),
and only a job with CLI steps sees it: each directory below is bound read-only into the VM's
read-only 9p share "cli" when the job is staged (shares.VMDir.stage; a warm VM boots with that
share empty), so a job without CLI steps, whose docker step broke the guest's kernel, finds nothing
of the host there (qemu reads the shares as root: a guest's root reads every file in them, whatever
its mode). The guest (guest/clistep.sh, `clistep`) builds each step's root on a small tmpfs from

- ``usr``: the host's /usr (Debian 12 is merged-/usr: /bin, /lib, /lib64 and /sbin are symlinks
  into it, made in the root as the host has them; a host whose /bin is a real directory gets it
  bound the same way);
- ``cli0``, ``cli1``, ...: each directory of `cli_binds` (corral's Python, the virtualenv of
  EXECUTOR_CLI_PATH), mounted at its host path;
- ``cliroot``: a directory this executor makes (`CliRoot.build`), read-only: ``etc/`` (the shell
  sandbox's /etc entries, copied: hosts, resolv.conf, nsswitch.conf, ld.so.cache, alternatives, ...;
  of /etc/ssl only certs/ and openssl.cnf, never private/; the guest adds passwd and group naming
  the job's uid) and ``files/<n>``, a copy of each single file of `cli_binds` (src-cli, an
  EXECUTOR_CLI_PATH outside a virtualenv: 9p shares directories, and the file's own directory may
  hold anything), bound at its host path;
- the job's workspace at /data, the step scripts at /.corral-steps, a fresh /dev and /proc, /tmp on
  the job's scratch disk (its disk limit), HOME=/tmp.

Nothing else of the host is visible: not /root, /home, the rest of /etc (shadow, docker's keys),
the workspace root (other jobs), nor the job's registry credentials (they stay on the host with the
docker runtime's pulls; no DOCKER_CONFIG is set). The guest mounts the share at the first CLI
step (`cli_up`) and binds its parts where the lines `preamble` puts at the top of job.sh say.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError, Reason, RuntimeFailure
from corral.executor.runtimes.base import WORKSPACE_MOUNT, JobSpace, Step
from corral.executor.runtimes.firecracker.guestjob import GuestStep
from corral.executor.runtimes.firecracker.vm import Share
from corral.executor.runtimes.shell.runtime import (
    DEFAULT_ETC_FILES,
    DEFAULT_PATH,
    FALLBACK_USER,
    SANDBOX_HOME,
    USRMERGE_LINKS,
)

__all__ = ["CLIROOT_TAG", "USR_TAG", "CliRoot", "CliSteps"]

USR_TAG = "usr"
CLIROOT_TAG = "cliroot"  # the executor-made share: etc/ and files/<n>
# /etc entries the executor writes itself (passwd and group come from the guest, with the job's uid)
_OWN_ETC = {"passwd", "group", "ssl", "hosts", "nsswitch.conf"}
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_NSSWITCH = (
    "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
    "protocols: files\nservices: files\nethers: files\nrpc: files\n"
)
# A path the guest mounts a CLI at: plain characters only (job.sh quotes it anyway, and the guest's
# shell reads the list back word by word), and none of the places the guest's step root has already.
_GUEST_PATH = re.compile(r"(/[A-Za-z0-9._+@-]+)+")
_RESERVED = {"data", ".corral", ".corral-steps", "dev", "proc", "sys", "etc", "usr", *USRMERGE_LINKS}


@dataclass(frozen=True)
class CliRoot:
    """A CLI step's root: the VM's extra shares, and the job.sh lines that tell the guest where each
    goes. `CliRoot.build` makes one per executor (its `cliroot` directory included)."""

    shares: tuple[Share, ...]
    preamble: tuple[str, ...]

    @classmethod
    def build(cls, directory: Path, binds: Sequence[str]) -> CliRoot:
        """Make `directory` (executor-owned; made afresh, so a changed CLI or /etc is picked up) and
        describe the root: `binds` are `registry.cli_binds` (absolute host paths, already checked
        against the sensitive directories). ConfigError when a path cannot be a guest mount point."""
        shutil.rmtree(directory, ignore_errors=True)
        etc, files = directory / "etc", directory / "files"
        etc.mkdir(parents=True, mode=0o755)
        files.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        _make_etc(etc)
        shares = [Share(USR_TAG, Path("/usr")), Share(CLIROOT_TAG, directory)]
        lines = [_line("cli_share", USR_TAG, "/usr")]
        for name in USRMERGE_LINKS:
            host = "/" + name
            if os.path.islink(host):
                lines.append(_line("cli_link", host, os.readlink(host)))
            elif os.path.isdir(host):
                lines.append(_line("cli_share", f"cli{len(shares) - 2}", host))
                shares.append(Share(f"cli{len(shares) - 2}", Path(host)))
        for path in _mounted(binds):
            if os.path.isdir(path):
                tag = f"cli{len(shares) - 2}"
                shares.append(Share(tag, Path(path)))
                lines.append(_line("cli_share", tag, path))
            elif os.path.isfile(path):
                n = str(len(os.listdir(files)))
                shutil.copy2(path, files / n)  # the file itself (a symlink's target), not its directory
                lines.append(_line("cli_file", n, path))
        return cls(tuple(shares), tuple(lines))

    @staticmethod
    def env(space: JobSpace, step: Step) -> dict[str, str]:
        """The CLI step's environment: as the shell sandbox gives it (PATH, HOME=/tmp, USER, PWD), then
        the step's own. Nothing of the executor's environment, and no DOCKER_CONFIG: the job's
        registry credentials never enter the VM."""
        rel = posixpath.normpath("/" + step.dir).lstrip("/")
        pwd_ = posixpath.join(WORKSPACE_MOUNT, rel) if rel else WORKSPACE_MOUNT
        base = {"PATH": DEFAULT_PATH, "HOME": SANDBOX_HOME, "USER": FALLBACK_USER, "PWD": pwd_}
        return {**base, **step.env}


def _line(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _mounted(binds: Sequence[str]) -> list[str]:
    """The binds the guest mounts, in path order: not those inside another (visible through it
    already) nor those under /usr (the usr share). ConfigError for a path the guest cannot take."""
    out: list[str] = []
    for path in sorted({posixpath.normpath(p) for p in binds}):
        if any(path.startswith(o.rstrip("/") + "/") for o in out):
            continue
        if path == "/usr" or path.startswith("/usr/") or os.path.realpath(path).startswith("/usr/"):
            continue
        _check_guest_path(path)
        out.append(path)
    return out


def _check_guest_path(path: str) -> None:
    if not _GUEST_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        raise ConfigError(
            f"{path}: the firecracker runtime mounts a CLI at its host path in the VM, and this path "
            "has characters it does not take (letters, digits and ._+@- only)"
        )
    if path.split("/")[1] in _RESERVED:
        raise ConfigError(
            f"{path}: the firecracker runtime cannot mount a CLI there in the VM (/{path.split('/')[1]} "
            "is the step root's own); install the CLI elsewhere"
        )


def _make_etc(etc: Path) -> None:
    """The CLI step's /etc (host-owned, read-only in the guest): the shell sandbox's list, copied
    (a symlink's target: /etc/resolv.conf may point into /run), with our own hosts and nsswitch.conf,
    the CA certificates (/etc/ssl/certs, whose links lead into /usr) and empty passwd/group files."""
    for name in DEFAULT_ETC_FILES:
        host = Path("/etc", name)
        if name in _OWN_ETC or not host.exists():
            continue
        if host.is_dir():
            shutil.copytree(host, etc / name, symlinks=True)
        elif os.path.islink(host) and os.readlink(host).startswith("/usr/"):
            (etc / name).symlink_to(os.readlink(host))
        else:
            shutil.copy2(host, etc / name)
    ssl = etc / "ssl"
    ssl.mkdir(mode=0o755)
    if os.path.isdir("/etc/ssl/certs"):
        shutil.copytree("/etc/ssl/certs", ssl / "certs", symlinks=True)
    if os.path.isfile("/etc/ssl/openssl.cnf"):
        shutil.copy2("/etc/ssl/openssl.cnf", ssl / "openssl.cnf")
    _write(etc / "hosts", _HOSTS)
    _write(etc / "nsswitch.conf", _NSSWITCH)
    for name in ("passwd", "group"):  # mount points: the guest binds the job's files over them
        _write(etc / name, "")
    if not (etc / "resolv.conf").exists():  # a job with network gets its resolver bound over it (net.sh)
        _write(etc / "resolv.conf", "")


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)



class CliSteps:
    """One executor's CLI steps in its VMs: the root (`CliRoot`, built once, at first use, in
    `directory`) and each CLI step's `GuestStep`."""

    def __init__(self, binds: Sequence[str], directory: Path) -> None:
        """ConfigError (at the executor's start) for a CLI path the guest cannot mount."""
        _mounted(binds)
        self.binds = tuple(binds)
        self.directory = directory
        self._root: CliRoot | None = None
        self._lock = asyncio.Lock()

    async def root(self) -> CliRoot:
        async with self._lock:
            if self._root is None:
                try:
                    self._root = await asyncio.to_thread(CliRoot.build, self.directory, self.binds)
                except OSError as exc:
                    raise RuntimeFailure(
                        f"cannot make the CLI steps' root in {self.directory}: {exc}", reason=Reason.SANDBOX
                    ) from exc
            return self._root

    @staticmethod
    def guest_step(index: int, space: JobSpace, step: Step) -> GuestStep:
        """The CLI step at `index` of the job's steps, as the guest runs it (`clistep`)."""
        return GuestStep(
            index,
            "",
            step.argv,
            uid=space.uid,
            gid=space.gid,
            dir=step.dir,
            env=CliRoot.env(space, step),
            kind="cli",
        )
