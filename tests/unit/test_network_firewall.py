"""The egress firewall's ruleset (network/firewall.py), the namespace names (network/netns.py), the
network settings and host checks. The ruleset is also loaded by the real nft into a namespace the
test makes, so every policy's text is one nftables accepts."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from corral.errors import ConfigError
from corral.executor.hostcheck import network_findings
from corral.executor.network import firewall, netns
from corral.executor.network.policy import Allow, NetworkMode, NetworkPolicy
from corral.executor.settings import ExecutorSettings
from tests.conftest import require

BASE = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "a-long-enough-secret-for-the-tests-0123",
    "EXECUTOR_QUEUE_NAME": "batches",
}
POLICIES = [
    NetworkPolicy.deny_private(),
    NetworkPolicy.deny_private(["198.51.100.10:8080"]),
    NetworkPolicy.deny_private(["10.0.0.0/8", "192.168.1.5:443", "[fd00::/8]:443", "fe80::1"]),
]


def _output_chain(text: str) -> list[str]:
    start = text.index("chain output {")
    return [line.strip() for line in text[start : text.index("\n  }", start)].splitlines()[1:]]


def test_the_ruleset_rejects_every_blocked_range_v4_and_v6() -> None:
    text = firewall.ruleset(NetworkPolicy.deny_private())
    for network in (*firewall.BLOCKED_V4, *firewall.BLOCKED_V6):
        assert network in text
    for needed in ("10.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "fc00::/7", "fe80::/10"):
        assert needed in text
    chain = _output_chain(text)
    assert "ip daddr @blocked4 reject with icmpx type admin-prohibited" in chain
    assert "ip6 daddr @blocked6 reject with icmpx type admin-prohibited" in chain
    assert chain[-1] == "accept"  # deny-private: the rest (public addresses) passes


def test_dns_is_allowed_only_to_slirps_forwarder_before_the_blocked_ranges() -> None:
    chain = _output_chain(firewall.ruleset(NetworkPolicy.deny_private()))
    dns = "ip daddr 10.0.2.3 meta l4proto { tcp, udp } th dport 53 accept"
    assert dns in chain
    assert chain.index(dns) < chain.index("ip daddr @blocked4 reject with icmpx type admin-prohibited")
    assert sum("dport 53" in line for line in chain) == 1


def test_allow_entries_with_and_without_port_come_before_the_rejects() -> None:
    policy = NetworkPolicy.deny_private(["198.51.100.10:8080", "10.0.0.0/8", "[fd00::/8]:443", "fe80::1"])
    chain = _output_chain(firewall.ruleset(policy))
    rules = [
        "ip daddr 198.51.100.10/32 meta l4proto { tcp, udp } th dport 8080 accept",
        "ip daddr 10.0.0.0/8 accept",
        "ip6 daddr fd00::/8 meta l4proto { tcp, udp } th dport 443 accept",
        "ip6 daddr fe80::1/128 accept",
    ]
    first_reject = min(i for i, line in enumerate(chain) if "reject" in line)
    for rule in rules:
        assert rule in chain
        assert chain.index(rule) < first_reject


def test_the_uplinks_own_addresses_are_rejected() -> None:
    own = [ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")]
    text = firewall.ruleset(NetworkPolicy.deny_private(), uplink_addresses=own)
    assert "elements = { 203.0.113.7 }" in text and "elements = { 2001:db8::7 }" in text
    chain = _output_chain(text)
    assert "ip daddr @uplink4 reject with icmpx type admin-prohibited" in chain
    assert "ip6 daddr @uplink6 reject with icmpx type admin-prohibited" in chain
    assert "uplink4" not in firewall.ruleset(NetworkPolicy.deny_private())


def test_only_deny_private_has_a_ruleset() -> None:
    for policy in (NetworkPolicy.none(), NetworkPolicy.open()):
        with pytest.raises(ValueError, match="deny-private"):
            firewall.ruleset(policy)


def test_the_blocked_ranges_agree_with_the_policys_decision() -> None:
    """permits() and the nft sets say the same about each range's edges; every address Python's
    ipaddress calls non-global is blocked too (the list is, if anything, stricter)."""
    policy = NetworkPolicy.deny_private()
    for network in firewall.blocked():
        for address in (network.network_address, network.broadcast_address):
            assert not policy.permits(address, 443), address
    for public in ("1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700::1111", "2a00:1450::1"):
        ip = ipaddress.ip_address(public)
        assert policy.permits(ip, 443)
        assert not any(ip.version == n.version and ip in n for n in firewall.blocked()), public
    # every address Python calls non-global among these is in a blocked range
    for special in (
        "192.0.0.8",
        "198.18.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "64:ff9b:1::1",
        "2001:db8::1",
    ):
        ip = ipaddress.ip_address(special)
        assert not policy.permits(ip, 80)
        assert any(ip.version == n.version and ip in n for n in firewall.blocked()), special


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    require(os.geteuid() == 0 and bool(shutil.which("nft")), "root and nft are needed")
    name = f"ctn{os.getpid()}-fwtest"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_nft_loads_the_ruleset_into_a_namespace(scratch_netns: str, policy: NetworkPolicy) -> None:
    text = firewall.ruleset(policy, uplink_addresses=[ipaddress.ip_address("10.98.0.1")])
    subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "-f", "-"],
        input=text.encode(),
        check=True,
        capture_output=True,
        timeout=20,
    )
    listed = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "list", "table", "inet", firewall.TABLE],
        check=True,
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    assert "hook output" in listed and "10.0.2.3" in listed and "169.254.0.0/16" in listed
    for entry in policy.allow:
        assert str(entry.network).split("/")[0] in listed


def test_namespace_names_carry_owner_and_label() -> None:
    name = netns.job_netns_name("t123-4567", "batches-42")
    assert name == "t123-4567.batches-42"
    assert netns.job_label("t123-4567", name) == "batches-42"
    assert netns.job_label("t123", name) is None  # another owner's, even with a shared prefix
    assert netns.job_label("t123-4567", "t123-4567.x/../y") is None
    for owner, label in (("a.b", "q-1"), ("ok", "../x"), ("", "q-1")):
        with pytest.raises(ValueError):
            netns.job_netns_name(owner, label)


def test_network_settings_are_read_and_checked() -> None:
    s = ExecutorSettings.from_env(
        {
            **BASE,
            "EXECUTOR_NETWORK": "deny-private",
            "EXECUTOR_NETWORK_ALLOW": "198.51.100.10:8080, 10.1.0.0/16",
            "EXECUTOR_NETWORK_ALL_JOBS": "true",
            "EXECUTOR_NETWORK_UPLINK_NETNS": "gw",
        }
    )
    assert s.network is NetworkMode.DENY_PRIVATE
    assert [Allow.parse(a) for a in s.network_allow] == [
        Allow(ipaddress.ip_network("198.51.100.10/32"), 8080),
        Allow(ipaddress.ip_network("10.1.0.0/16")),
    ]
    assert s.network_all_jobs and s.network_uplink_netns == "gw"
    default = ExecutorSettings.from_env(BASE)
    assert default.network is NetworkMode.NONE and default.network_allow == []
    for name, value in (
        ("EXECUTOR_NETWORK", "private"),
        ("EXECUTOR_NETWORK_ALLOW", "10.0.0.0/8:99999"),
        ("EXECUTOR_NETWORK_ALLOW", "example.com"),
        ("EXECUTOR_NETWORK_UPLINK_NETNS", "../../proc/1/ns/net"),
    ):
        with pytest.raises(ConfigError, match=name):
            ExecutorSettings.from_env({**BASE, name: value})
    lone = ExecutorSettings.from_env({**BASE, "EXECUTOR_NETWORK_ALL_JOBS": "true"})
    assert any("EXECUTOR_NETWORK_ALL_JOBS" in w for w in lone.warnings)


def test_host_checks_of_the_network() -> None:
    s = ExecutorSettings.from_env(
        {**BASE, "EXECUTOR_NETWORK": "deny-private", "EXECUTOR_NETWORK_UPLINK_NETNS": f"absent{os.getpid()}"}
    )
    found = network_findings(s)
    assert any("EXECUTOR_NETWORK_UPLINK_NETNS" in p and "no such namespace" in p for p in found.problems)
    assert network_findings(ExecutorSettings.from_env(BASE)).problems == []
    opened = network_findings(ExecutorSettings.from_env({**BASE, "EXECUTOR_NETWORK": "open"}))
    assert opened.problems == [] and "unfiltered" in opened.warnings[0]
