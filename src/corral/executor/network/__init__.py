"""Network access of a job: the policy value (`policy`); the egress firewall will live here too."""

from corral.executor.network.policy import Allow, NetworkMode, NetworkPolicy

__all__ = ["Allow", "NetworkMode", "NetworkPolicy"]
