"""The corral server's address as allow-list entries, for jobs whose CLI steps talk to it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from corral.executor.network.policy import Allow

__all__ = ["server_allow"]

RESOLVE_TIMEOUT_S = 10.0  # seconds the server's name may take to resolve


async def server_allow(frontend_url: str) -> list[Allow]:
    """One entry per address of EXECUTOR_FRONTEND_URL's host, each with its port (80/443 by default).
    A name that does not resolve gives no entry: the job then cannot reach the server, as any
    other private address (the server's own CLI steps then fail saying so)."""
    parts = urlsplit(frontend_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        return [Allow(ipaddress.ip_network(host), port)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return []
    found: dict[Allow, None] = {}
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        found[Allow(ipaddress.ip_network(ip), port)] = None
    return list(found)
