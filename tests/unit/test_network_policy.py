"""corral.executor.network: the policy value every runtime receives, and its decision."""

from __future__ import annotations

import pytest

from corral.executor.network import Allow, NetworkMode, NetworkPolicy
from corral.executor.runtimes.base import JobSpace


def test_default_is_no_network(tmp_path) -> None:
    space = JobSpace(job_id=1, queue="q", root=tmp_path, workspace=tmp_path / "w")
    assert space.network == NetworkPolicy.none()
    assert space.network.mode is NetworkMode.NONE and not space.network.has_interface


def test_open_gets_the_ordinary_network_and_deny_private_the_firewall() -> None:
    assert NetworkPolicy.open().has_interface and not NetworkPolicy.open().filtered
    deny = NetworkPolicy.deny_private(["10.0.0.0/8"], uplink="gw")
    assert deny.filtered and not deny.has_interface and deny.uplink == "gw"
    assert not NetworkPolicy.none().filtered and not NetworkPolicy.none().has_interface


def test_none_permits_nothing_and_open_everything() -> None:
    assert not NetworkPolicy.none().permits("93.184.216.34", 443)
    assert NetworkPolicy.open().permits("127.0.0.1", 22)


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_deny_private_refuses_non_public_addresses(ip: str) -> None:
    assert not NetworkPolicy.deny_private().permits(ip, 443)


def test_deny_private_allows_public_addresses_and_the_allow_list() -> None:
    policy = NetworkPolicy.deny_private(["10.0.0.5:3080", "[fd00::/8]:443", "192.168.1.0/24"])
    assert policy.permits("93.184.216.34", 443)
    assert policy.permits("10.0.0.5", 3080) and not policy.permits("10.0.0.5", 22)
    assert policy.permits("fd00::7", 443) and not policy.permits("fd00::7", 80)
    assert policy.permits("192.168.1.9", 5)
    assert not policy.permits("169.254.169.254", 80)
    assert str(policy) == "deny-private (allow 10.0.0.5/32:3080, [fd00::/8]:443, 192.168.1.0/24)"


@pytest.mark.parametrize(
    "bad", ["", "10.0.0.0/33", "host.example", "10.0.0.1:0", "10.0.0.1:99999", "[fd00::"]
)
def test_allow_entries_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        Allow.parse(bad)
