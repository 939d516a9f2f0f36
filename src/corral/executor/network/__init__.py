"""Network access of a job: the policy value (`policy`), the nftables ruleset of a deny-private job
(`firewall`), its namespace and user-mode uplink (`netns`, `egress`), and the server's address as an
allow-list entry (`server`). Shared by every runtime that runs job processes on this host."""

from corral.executor.network.policy import Allow, NetworkMode, NetworkPolicy
from corral.executor.network.server import server_allow

__all__ = ["Allow", "NetworkMode", "NetworkPolicy", "server_allow"]
