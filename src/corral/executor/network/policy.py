"""A job's network policy: the one value every runtime receives (`JobSpace.network`).

Modes:
- `none`: no network at all, only a loopback interface (the default, and today's behaviour for every
  job);
- `deny-private`: egress to public addresses, refusing loopback, private, link-local (169.254.169.254,
  the cloud metadata service), CGNAT and other non-global ranges, except the CIDR[:port] entries of
  the allow-list (e.g. the server's address);
- `open`: the runtime's ordinary network (docker's bridge, the host's namespace for shell).

`deny-private` is enforced by the egress firewall (`corral.executor.network.egress`: a namespace per
job, an nftables ruleset from `firewall`, a user-mode stack for the uplink); `filtered` says a
runtime must put the job there. `has_interface` is true only for `open`. `permits()` is the
firewall's decision in Python, pure; tests/unit/test_network_firewall.py checks the two agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BLOCKED_V4", "BLOCKED_V6", "Allow", "NetworkMode", "NetworkPolicy", "blocked"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA's special-purpose registries (RFC 6890 and successors): nothing in here is a public host.
BLOCKED_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # CGNAT (cloud internal networks, Tailscale)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, the cloud metadata service 169.254.169.254
    "172.16.0.0/12",  # private (Docker's bridges)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # TEST-NET-1
    "192.88.99.0/24",  # 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address 255.255.255.255
)
BLOCKED_V6: tuple[str, ...] = (
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped
    "64:ff9b::/96",  # NAT64 (reaches any IPv4 address through a translator)
    "64:ff9b:1::/48",  # local NAT64
    "100::/64",  # discard
    "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4 (embeds IPv4 addresses)
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)
_BLOCKED = tuple(ipaddress.ip_network(n) for n in (*BLOCKED_V4, *BLOCKED_V6))


def blocked() -> list[IPNetwork]:
    """Every blocked range as a network (v4, then v6): what deny-private refuses unless allowed."""
    return list(_BLOCKED)


class NetworkMode(StrEnum):
    NONE = "none"
    DENY_PRIVATE = "deny-private"
    OPEN = "open"


@dataclass(frozen=True)
class Allow:
    """One allow-list entry: a network, and a port (None = every port)."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Allow:
        """ "10.0.0.0/8", "10.1.2.3:443", "[fd00::/8]:443", "fd00::1". ValueError when malformed."""
        t = text.strip()
        port: str | None = None
        if t.startswith("["):
            end = t.find("]")
            if end < 0 or (t[end + 1 :] and not t[end + 1 :].startswith(":")):
                raise ValueError(f"{text!r} is not CIDR[:port] (e.g. 10.0.0.0/8:443, [fd00::/8]:443)")
            t, port = t[1:end], t[end + 2 :] or None
        elif t.count(":") == 1:
            t, port = t.split(":")
        try:
            network = ipaddress.ip_network(t, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not CIDR[:port] (e.g. 10.0.0.0/8:443, [fd00::/8]:443)") from None
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{text!r}: the port must be 1-65535")
        return cls(network, int(port) if port is not None else None)

    def matches(self, ip: IPAddress, port: int) -> bool:
        return ip.version == self.network.version and ip in self.network and self.port in (None, port)

    def __str__(self) -> str:
        net = str(self.network)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


def _public(ip: IPAddress) -> bool:
    """Outside every blocked range (IPv4-mapped IPv6 addresses are in one: ::ffff:0:0/96)."""
    return not any(ip.version == n.version and ip in n for n in _BLOCKED)


@dataclass(frozen=True)
class NetworkPolicy:
    mode: NetworkMode = NetworkMode.NONE
    allow: tuple[Allow, ...] = ()
    # EXECUTOR_NETWORK_UPLINK_NETNS: the named namespace (/run/netns) whose network deny-private jobs
    # reach the outside through (the user-mode stack runs there); None = the executor's own.
    uplink: str | None = None

    @classmethod
    def none(cls) -> NetworkPolicy:
        return cls(NetworkMode.NONE)

    @classmethod
    def open(cls) -> NetworkPolicy:
        return cls(NetworkMode.OPEN)

    @classmethod
    def deny_private(cls, allow: Iterable[str | Allow] = (), *, uplink: str | None = None) -> NetworkPolicy:
        entries = tuple(dict.fromkeys(a if isinstance(a, Allow) else Allow.parse(a) for a in allow))
        return cls(NetworkMode.DENY_PRIVATE, entries, uplink)

    @property
    def has_interface(self) -> bool:
        """Whether the sandbox gets the runtime's ordinary network (docker's bridge, the host's)."""
        return self.mode is NetworkMode.OPEN

    @property
    def filtered(self) -> bool:
        """Whether the job gets a namespace of its own behind the egress firewall (`egress`)."""
        return self.mode is NetworkMode.DENY_PRIVATE

    def permits(self, ip: IPAddress | str, port: int) -> bool:
        """Whether a connection from the job to ip:port is allowed by this policy."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if self.mode is NetworkMode.NONE:
            return False
        if self.mode is NetworkMode.OPEN:
            return True
        return any(a.matches(addr, port) for a in self.allow) or _public(addr)

    def __str__(self) -> str:
        if self.mode is NetworkMode.DENY_PRIVATE and self.allow:
            return f"{self.mode} (allow {', '.join(map(str, self.allow))})"
        return str(self.mode)
