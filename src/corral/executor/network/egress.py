"""A deny-private job's network, per job: namespace, firewall, user-mode uplink; and its janitor.

`up(owner, label, policy, root)` (called by a runtime's prepare; idempotent per job, so a docker
job's CLI steps in the shell sandbox share the docker steps' namespace):

1. the job's namespace ``<owner>.<label>`` (`netns.job_netns_name`): a new one (`ip netns add`), or
   the namespace of a process the runtime made (`pid`: a docker pause container), named so;
2. the nftables ruleset of `firewall.ruleset` loaded INTO it, before it has any interface besides
   loopback (the uplink's own addresses are read first and rejected);
3. `slirp4netns --configure --disable-host-loopback` started in the uplink namespace (the
   executor's own, or EXECUTOR_NETWORK_UPLINK_NETNS via `ip netns exec`, which also gives it that
   namespace's /etc/netns/<name>/resolv.conf): it makes tap0 in the job's namespace (10.0.2.100/24,
   gateway 10.0.2.2, DNS 10.0.2.3 forwarded to the uplink's resolver) and opens the job's
   connections as ordinary sockets of the uplink. No FORWARD or NAT rule on the host, nothing
   shared with Docker's iptables chains; a qemu with user-mode networking can run in the same
   namespace. slirp4netns runs with its own sandbox (`--enable-sandbox`: a mount namespace of its
   own, every capability dropped but CAP_NET_BIND_SERVICE) and seccomp filter;
4. ``<root>/resolv.conf`` (``nameserver 10.0.2.3``) for the runtime to bind over /etc/resolv.conf.

`down(owner, label)` (cleanup; idempotent): slirp4netns stopped (its exit fd closed, then SIGKILL),
the namespace's name removed; nothing is left. `sweep(owner, live)` (the janitor): every namespace of
`owner` whose label is not live, and every slirp4netns serving a namespace of `owner` that is not a
live job's, removed. Each slirp4netns also exits by itself when the executor dies (its exit fd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from pathlib import Path

from corral.executor.network import firewall, netns
from corral.executor.network.netns import NetnsError
from corral.executor.network.policy import NetworkPolicy

__all__ = ["SLIRP", "EgressError", "down", "is_up", "resolv_conf", "slirp_pids", "sweep", "up"]

log = logging.getLogger("corral.executor.network")

SLIRP = "slirp4netns"
TAP = "tap0"
MTU = 65520  # bytes: slirp4netns' recommended MTU (fewer, larger packets through the user-mode stack)
READY_TIMEOUT_S = 10.0  # seconds slirp4netns may take to configure tap0
STOP_TIMEOUT_S = 3.0  # seconds between closing slirp4netns' exit fd and SIGKILL
RESOLV_CONF = f"nameserver {firewall.DNS_ADDRESS}\noptions ndots:0\n"
RESOLV_NAME = "resolv.conf"  # in the job's root


class EgressError(Exception):
    """The job's network could not be set up; the message says why."""


@dataclass
class _Uplink:
    name: str
    proc: asyncio.subprocess.Process
    exit_fd: int  # our end of slirp4netns' --exit-fd pipe: closing it stops slirp4netns


_LIVE: dict[str, _Uplink] = {}  # namespace name -> its running slirp4netns (this process's jobs)
_LOCKS: dict[str, asyncio.Lock] = {}


def _lock(name: str) -> asyncio.Lock:
    return _LOCKS.setdefault(name, asyncio.Lock())


def resolv_conf(root: Path) -> Path:
    """The resolv.conf `up` wrote for the job (bind it read-only over /etc/resolv.conf)."""
    return root / RESOLV_NAME


def is_up(owner: str, label: str) -> bool:
    return netns.job_netns_name(owner, label) in _LIVE


async def up(owner: str, label: str, policy: NetworkPolicy, root: Path, *, pid: int | None = None) -> str:
    """Give job `label` of `owner` its filtered network (see the module docstring); its namespace's
    name. Already up for this job: the same namespace (`pid` is then ignored). EgressError."""
    if not policy.filtered:
        raise EgressError(f"the egress firewall is for deny-private jobs, not {policy.mode}")
    try:
        name = netns.job_netns_name(owner, label)
    except ValueError as exc:
        raise EgressError(str(exc)) from None
    async with _lock(name):
        if name in _LIVE and _LIVE[name].proc.returncode is None:
            return name
        await _remove(name)  # a leftover of an attempt that died with its executor
        try:
            await _create(name, policy, root, pid)
        except BaseException:
            await _remove(name)
            raise
    return name


async def _create(name: str, policy: NetworkPolicy, root: Path, pid: int | None) -> None:
    try:
        if policy.uplink is not None and not netns.exists(policy.uplink):
            raise EgressError(
                f"the uplink namespace {policy.uplink!r} (EXECUTOR_NETWORK_UPLINK_NETNS) does not exist"
            )
        own = await netns.addresses(policy.uplink)
        rules = firewall.ruleset(policy, uplink_addresses=[a for a in own if not a.is_loopback])
        await (netns.attach(name, pid) if pid is not None else netns.add(name))
        # the rules are in place before the namespace has any interface but lo
        await netns.run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin=rules.encode())
        fd = os.open(resolv_conf(root), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(RESOLV_CONF)
    except NetnsError as exc:
        raise EgressError(f"cannot set up the job's network namespace {name}: {exc}") from exc
    except OSError as exc:
        raise EgressError(f"cannot write the job's resolv.conf: {exc}") from exc
    _LIVE[name] = await _start_slirp(name, policy.uplink)


async def _start_slirp(name: str, uplink: str | None) -> _Uplink:
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [
        *(["ip", "netns", "exec", uplink] if uplink else []),
        SLIRP,
        "--configure",
        "--disable-host-loopback",
        f"--mtu={MTU}",
        "--enable-sandbox",
        "--enable-seccomp",
        f"--ready-fd={ready_w}",
        f"--exit-fd={exit_r}",
        "--netns-type=path",
        str(netns.path(name)),
        TAP,
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(ready_w, exit_r),
            start_new_session=True,
        )
    except OSError as exc:
        os.close(ready_r)
        os.close(exit_w)
        raise EgressError(f"cannot start {SLIRP}: {exc}") from exc
    finally:
        os.close(ready_w)  # slirp4netns holds its own copies
        os.close(exit_r)
    uplink_ = _Uplink(name, proc, exit_w)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_r, 1), READY_TIMEOUT_S)
    except TimeoutError:
        ready = b""
    finally:
        os.close(ready_r)
    if ready != b"1":
        await _stop(uplink_)
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(proc.stderr.read(4000), 1.0)
        raise EgressError(
            f"{SLIRP} did not configure the job's network (exit {proc.returncode}): "
            f"{err.decode(errors='replace').strip()}"
        )
    return uplink_


async def _stop(uplink: _Uplink) -> None:
    with contextlib.suppress(OSError):
        os.close(uplink.exit_fd)
    proc = uplink.proc
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _remove(name: str) -> None:
    uplink = _LIVE.pop(name, None)
    if uplink is not None:
        await _stop(uplink)
    for pid in slirp_pids(name):  # one this process did not start (an executor that died)
        _kill_if_serving(pid, name)
    await netns.delete(name)


def _kill_if_serving(pid: int, name: str) -> None:
    """SIGKILL `pid` through a pidfd opened before its command line is checked again: a pid that was
    reused meanwhile (by another process) is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone
    try:
        if pid in slirp_pids(name, pids=[pid]):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


async def down(owner: str, label: str) -> None:
    """Remove job `label`'s network: slirp4netns and the namespace. Idempotent, never raises for 'gone'."""
    try:
        name = netns.job_netns_name(owner, label)
    except ValueError:
        return  # a name `up` refused: nothing was made
    async with _lock(name):
        await _remove(name)
    _LOCKS.pop(name, None)


def slirp_pids(name: str | None = None, pids: Iterable[int] | None = None) -> dict[int, str]:
    """Running slirp4netns processes by pid -> the namespace name they serve (only `name`'s if given;
    only among `pids` if given, else every process)."""
    found: dict[int, str] = {}
    prefix = str(netns.NETNS_DIR) + "/"
    candidates = [str(p) for p in pids] if pids is not None else [e.name for e in os.scandir("/proc")]
    for pid in candidates:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if not args or os.path.basename(args[0].decode(errors="replace")) != SLIRP:
            continue
        for arg in args:
            text = arg.decode(errors="replace")
            if text.startswith(prefix) and (name is None or text == prefix + name):
                found[int(pid)] = text[len(prefix) :]
    return found


async def sweep(owner: str, live: Callable[[], Set[str]]) -> list[str]:
    """Remove `owner`'s job namespaces (and their slirp4netns) whose job label is not live; the
    names removed. Namespaces and processes are listed before `live()` is asked, so a job that
    starts meanwhile is either not listed yet or already live."""
    found: dict[str, str] = {}  # namespace name -> job label
    for name in [*netns.list_names(), *slirp_pids().values()]:
        label = netns.job_label(owner, name)
        if label is not None:
            found[name] = label
    labels = live()
    removed: list[str] = []
    for name in sorted(n for n, label in found.items() if label not in labels):
        try:
            async with _lock(name):
                await _remove(name)
        except NetnsError as exc:
            log.warning("network janitor: cannot remove namespace %s: %s", name, exc)
            continue
        _LOCKS.pop(name, None)
        removed.append(name)
    return removed
