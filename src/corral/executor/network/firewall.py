"""The nftables ruleset loaded into a job's network namespace (deny-private), built from its policy.

Pure: text in, nothing run. The ruleset filters the namespace's *output* hook, so it applies to every
packet a job process sends, whatever the runtime (bwrap, a container sharing the namespace, a qemu
whose user-mode stack opens its sockets there). The job never holds CAP_NET_ADMIN in the namespace
(bwrap drops every capability, docker drops ALL), so it cannot change the rules.

Order of the output chain (first match wins):
1. loopback, and replies of established/related connections: accepted;
2. DNS to the one resolver the namespace has (slirp4netns' 10.0.2.3, udp and tcp 53): accepted;
3. the allow-list entries (CIDR, optionally one port, tcp and udp): accepted (they may name private
   addresses, e.g. the corral server's);
4. every blocked range (`BLOCKED_V4`, `BLOCKED_V6`: loopback, private, CGNAT, link-local with the
   metadata service 169.254.169.254, multicast, documentation and other reserved ranges, NAT64 and
   6to4, which embed IPv4 addresses; the policy's list, so `NetworkPolicy.permits` decides the same)
   and the uplink's own addresses: rejected (admin-prohibited, so a
   connect fails at once rather than timing out);
5. the rest (public addresses): accepted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from corral.executor.network.policy import (
    BLOCKED_V4,
    BLOCKED_V6,
    Allow,
    IPAddress,
    IPNetwork,
    NetworkMode,
    NetworkPolicy,
    blocked,
)

__all__ = [
    "BLOCKED_V4",
    "BLOCKED_V6",
    "DNS_ADDRESS",
    "GATEWAY_ADDRESS",
    "TABLE",
    "blocked",
    "ruleset",
]

TABLE = "corral_egress"  # `inet` table in the job's namespace
DNS_ADDRESS = ipaddress.IPv4Address("10.0.2.3")  # slirp4netns' DNS forwarder, seen from the job
GATEWAY_ADDRESS = ipaddress.IPv4Address("10.0.2.2")  # slirp4netns' gateway (the host's loopback)

_REJECT = "reject with icmpx type admin-prohibited"


def _daddr(network: IPNetwork | IPAddress) -> str:
    return f"{'ip' if network.version == 4 else 'ip6'} daddr {network}"


def _allow_rule(entry: Allow) -> str:
    if entry.port is None:
        return f"{_daddr(entry.network)} accept"
    return f"{_daddr(entry.network)} meta l4proto {{ tcp, udp }} th dport {entry.port} accept"


def _elements(networks: Iterable[str]) -> str:
    return ", ".join(networks)


def ruleset(policy: NetworkPolicy, *, uplink_addresses: Iterable[IPAddress] = ()) -> str:
    """The `nft -f` text for a job under `policy` (deny-private only: `none` gets no interface and
    `open` the runtime's ordinary network). `uplink_addresses`: the addresses of the namespace the
    user-mode stack runs in (the host's), rejected unless the allow-list names them."""
    if policy.mode is not NetworkMode.DENY_PRIVATE:
        raise ValueError(f"the egress firewall is for deny-private jobs, not {policy.mode}")
    own4 = sorted({str(a) for a in uplink_addresses if a.version == 4})
    own6 = sorted({str(a) for a in uplink_addresses if a.version == 6})
    lines = [
        f"table inet {TABLE} {{",
        "  set blocked4 {",
        "    type ipv4_addr; flags interval;",
        f"    elements = {{ {_elements(BLOCKED_V4)} }}",
        "  }",
        "  set blocked6 {",
        "    type ipv6_addr; flags interval;",
        f"    elements = {{ {_elements(BLOCKED_V6)} }}",
        "  }",
    ]
    if own4:
        lines += ["  set uplink4 {", "    type ipv4_addr;", f"    elements = {{ {_elements(own4)} }}", "  }"]
    if own6:
        lines += ["  set uplink6 {", "    type ipv6_addr;", f"    elements = {{ {_elements(own6)} }}", "  }"]
    lines += [
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        '    oifname "lo" accept',
        "    ct state established,related accept",
        "    ct state invalid drop",
        f"    ip daddr {DNS_ADDRESS} meta l4proto {{ tcp, udp }} th dport 53 accept",
        *(f"    {_allow_rule(a)}" for a in policy.allow),
        *([f"    ip daddr @uplink4 {_REJECT}"] if own4 else []),
        *([f"    ip6 daddr @uplink6 {_REJECT}"] if own6 else []),
        f"    ip daddr @blocked4 {_REJECT}",
        f"    ip6 daddr @blocked6 {_REJECT}",
        "    accept",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
