"""Named network namespaces (/run/netns/<name>, as iproute2 keeps them), and commands run inside one.

Names of job namespaces are ``<owner>.<queue>-<id>`` (`job_netns_name`): the owner is
EXECUTOR_VM_PREFIX (``[a-z0-9_-]``), the dot cannot occur in it, so a janitor finds exactly its own
namespaces (``<owner>.`` prefix) and reads the job label (``<queue>-<id>``) back from the name.
Everything here shells out to `ip` and `nft` (iproute2, nftables) with a bounded time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from corral.executor.network.policy import IPAddress

__all__ = [
    "NETNS_DIR",
    "NetnsError",
    "add",
    "addresses",
    "attach",
    "delete",
    "exists",
    "job_label",
    "job_netns_name",
    "list_names",
    "path",
    "run",
]

NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT_S = 20.0  # seconds any one ip/nft command may take
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class NetnsError(Exception):
    """A namespace command failed; the message says which and why."""


def job_netns_name(owner: str, label: str) -> str:
    """``<owner>.<label>``; ValueError unless both are names of [a-z0-9_-]."""
    for what, part in (("owner", owner), ("job label", label)):
        if not _NAME.fullmatch(part):
            raise ValueError(f"{what} {part[:80]!r} is not a name of [a-z0-9_-]")
    return f"{owner}.{label}"


def job_label(owner: str, name: str) -> str | None:
    """The job label of `owner`'s namespace `name`, None when it is not one of `owner`'s."""
    prefix = f"{owner}."
    if not name.startswith(prefix):
        return None
    label = name[len(prefix) :]
    return label if _NAME.fullmatch(label) else None


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def list_names() -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(NETNS_DIR) if not e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


async def run(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command to its end; its stdout. NetnsError (with its stderr) when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NetnsError(f"cannot run {argv[0]}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NetnsError(f"`{' '.join(argv[:4])} ...` did not end within {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()[:2000]
        raise NetnsError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {text}")
    return out.decode(errors="replace")


async def add(name: str) -> None:
    """A new empty namespace `name` with its loopback up."""
    await run(["ip", "netns", "add", name])
    await run(["ip", "-n", name, "link", "set", "lo", "up"])


async def attach(name: str, pid: int) -> None:
    """Name the network namespace of process `pid` (e.g. a container's) `name`; loopback up."""
    await run(["ip", "netns", "attach", name, str(pid)])
    await run(["ip", "-n", name, "link", "set", "lo", "up"])


async def delete(name: str) -> None:
    """Remove the name (the namespace goes when nothing uses it any more). Gone already: no error."""
    if not exists(name):
        return
    try:
        await run(["ip", "netns", "delete", name])
    except NetnsError:
        if exists(name):
            raise


async def addresses(name: str | None) -> list[IPAddress]:
    """Every address configured in namespace `name` (None: the executor's own), loopback included."""
    argv = ["ip", "-j", "addr", "show"] if name is None else ["ip", "-n", name, "-j", "addr", "show"]
    found: list[IPAddress] = []
    try:
        links = json.loads(await run(argv))
    except ValueError as exc:
        raise NetnsError(f"`{' '.join(argv)}` gave no JSON: {exc}") from exc
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info") or []:
            local = info.get("local")
            if isinstance(local, str):
                try:
                    found.append(ipaddress.ip_address(local.split("%")[0]))
                except ValueError:
                    continue
    return found
