"""Registry addresses: a job-controlled image name must not make dockerd connect to a private address.

Image names are job-controlled, and dockerd pulls from the executor host's own network. Before any
pull the registry's address is checked (`check_registry_address`): registries on loopback, link-local,
private, CGNAT, unspecified, multicast or reserved addresses (IPv4 and IPv6, IPv4 embedded in IPv6,
`localhost`, the numeric IPv4 spellings inet_aton accepts such as 2130706433 or 0x7f.1) are refused
unless the operator lists them, exactly as host[:port], in EXECUTOR_DOCKER_ALLOWED_REGISTRIES.
Hostnames are resolved first and refused if any address is in those ranges. Caveats, to be closed by
an egress firewall for dockerd rather than here: dockerd resolves the name again itself (a DNS name
with a short TTL can answer a public address to us and 127.0.0.1 to dockerd: DNS rebinding), and a
registry may redirect blob downloads or name a token realm on any host, which dockerd follows. Only a
pull contacts a registry: inspecting a local image and creating a container from it do not (the
Engine API's create answers 404 for a missing image; only the CLI pulls then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from corral.errors import Reason, RuntimeFailure

__all__ = [
    "ALLOWED_REGISTRIES_SETTING",
    "DOCKER_HUB",
    "DOCKER_HUB_ALIASES",
    "canonical_registry",
    "check_registry_address",
    "literal_address",
    "refused_address",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_DOCKER_HUB_HOST = "registry-1.docker.io"  # where dockerd pulls docker.io images from
ALLOWED_REGISTRIES_SETTING = "EXECUTOR_DOCKER_ALLOWED_REGISTRIES"
RESOLVE_TIMEOUT_S = 10.0  # seconds a registry's name may take to resolve before the pull is refused


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _split_registry(registry: str) -> tuple[str, int | None]:
    """ "[::1]:5000" -> ("::1", 5000); "Reg.Example.:443" -> ("reg.example", 443). ValueError if malformed."""
    r = registry.strip()
    if r.startswith("["):
        end = r.find("]")
        if end < 0:
            raise ValueError(f"{registry!r}: unclosed [")
        host, rest = r[1:end], r[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{registry!r}: junk after ]")
        port_s = rest[1:]
    else:
        host, _, port_s = r.partition(":")
    if port_s and not (port_s.isdigit() and 0 < int(port_s) < 65536):
        raise ValueError(f"{registry!r}: bad port")
    host = host.lower().rstrip(".")
    if not host or "/" in host:
        raise ValueError(f"{registry!r}: no host")
    return host, int(port_s) if port_s else None


def canonical_registry(registry: str) -> str:
    """One spelling per host[:port] (lower case, no trailing dot, IPv6 in brackets): for allow-lists."""
    host, port = _split_registry(registry)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells without DNS: an IP literal, or any IPv4 form inet_aton accepts
    (2130706433, 0x7f.1, 0177.0.0.1, 127.1), as the C resolver does. None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or not host.isascii():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def refused_address(ip: IPAddress) -> str | None:
    """Why a registry must not be contacted at `ip` ("loopback", "private", ...), or None if it may."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and (any(ip in n for n in _NAT64) or ip in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            why = refused_address(embedded)
            if why:
                return f"{why} (IPv4 {embedded} inside {ip})"
    if not ip.is_global:
        return "non-global"
    return None


async def check_registry_address(registry: str, image: str, allowed: Iterable[str] = ()) -> None:
    """Refuse (RuntimeFailure, reason "image") a pull from a registry on a non-public address.

    `allowed`: canonical host[:port] entries (EXECUTOR_DOCKER_ALLOWED_REGISTRIES) that pass as they are.
    A hostname is resolved (off the event loop) and refused if any of its addresses is refused; a
    name that cannot be resolved is an unreachable registry (RuntimeFailure, reason "docker").
    """

    def refuse(what: str) -> RuntimeFailure:
        return RuntimeFailure(
            f"image {image!r} refused: its registry {registry} {what}; dockerd pulls from the executor "
            f"host's network, so a job may not make it connect there. An operator can allow this "
            f"registry with {ALLOWED_REGISTRIES_SETTING}={shown}",
            reason=Reason.IMAGE,
        )

    shown = registry
    try:
        shown = canonical_registry(registry)
        host, port = _split_registry(registry)
    except ValueError as exc:
        raise refuse(f"is not a valid host[:port] ({exc})") from None
    if shown in set(allowed):
        return
    if registry == DOCKER_HUB:
        host = _DOCKER_HUB_HOST
    if host == "localhost" or host.endswith(".localhost"):
        raise refuse("is loopback (localhost)")
    ip = literal_address(host)
    if ip is not None:
        why = refused_address(ip)
        if why:
            raise refuse(f"is on a {why} address ({ip})")
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        # A registry that cannot be reached is not the job's fault (issue 15): errored, retried.
        raise RuntimeFailure(
            f"image {image!r} could not be pulled: its registry {registry} cannot be resolved "
            f"({exc or 'timed out'}); this is not the job's fault, so it is retried",
            reason=Reason.DOCKER,
        ) from None
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        why = refused_address(addr)
        if why:
            raise refuse(f"resolves to a {why} address ({addr})")
