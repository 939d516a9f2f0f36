"""The network of a firecracker job: what its VM's NIC is, and the namespace behind it.

By the job's `NetworkPolicy` (README "Network"):
- `none` (the default): no NIC at all; the guest has only its loopback;
- `deny-private`: the job's namespace `<owner>.<queue>-<id>` behind the egress firewall
  (`corral.executor.network.egress`, made in prepare, removed in cleanup, swept by the janitor;
  shared with the shell sandbox that runs the job's diff), qemu run inside it with a user-mode NIC
  (`vm.Nic`): every connection of the guest is a socket qemu opens there, so the namespace's
  nftables rules decide it, and its uplink is slirp4netns in the uplink namespace. Two user-mode
  stacks in a row (qemu's, then slirp4netns'): the guest's resolver is slirp4netns' 10.0.2.3, which
  the ruleset allows on port 53 and nothing else private;
- `open`: a user-mode NIC with qemu in the executor's own namespace (the host's network, as the
  shell runtime's `open`; the guest's 10.0.3.2 is then the host's loopback).

A VM with a NIC is always booted for its job (cold): a warm VM is booted before its job is known,
without a NIC.
"""

from __future__ import annotations

import logging

from corral.errors import Reason, RuntimeFailure
from corral.executor.network import egress, firewall, netns
from corral.executor.runtimes.base import LABEL_JOB, JobSpace
from corral.executor.runtimes.firecracker.vm import Nic

__all__ = ["down", "nic", "up"]

log = logging.getLogger("corral.executor.runtimes.firecracker")


def nic(space: JobSpace) -> Nic | None:
    """The NIC the job's VM gets; None: none (the VM may then come from the warm pool)."""
    policy = space.network
    if policy.filtered:
        return Nic(netns.job_netns_name(space.owner, space.labels[LABEL_JOB]), str(firewall.DNS_ADDRESS))
    if policy.has_interface:
        return Nic()
    return None


async def up(space: JobSpace) -> None:
    """Make the job's namespace behind the firewall (deny-private jobs; idempotent per job)."""
    if not space.network.filtered:
        return
    try:
        await egress.up(space.owner, space.labels[LABEL_JOB], space.network, space.root)
    except egress.EgressError as exc:
        raise RuntimeFailure(f"cannot set up the job's network: {exc}", reason=Reason.SANDBOX) from exc


async def down(space: JobSpace) -> None:
    """Remove what `up` made. Idempotent, never raises (the janitor retries what is left)."""
    if not space.network.filtered:
        return
    try:
        await egress.down(space.owner, space.labels[LABEL_JOB])
    except netns.NetnsError as exc:
        log.warning("cannot remove the network of %s: %s (the janitor will retry)", space.name, exc)
