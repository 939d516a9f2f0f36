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

__all__ = ["Allow", "NetworkMode", "NetworkPolicy"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _public(ip.ipv4_mapped)
    return ip.is_global and not ip.is_multicast


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
