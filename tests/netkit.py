"""A network topology built from namespaces the test creates (machine-notes §5), never linked to the
host's own network, for the egress firewall's tests:

    <p>-gw  (the uplink: where slirp4netns runs; NO default route)  10.98.0.1/24 on v-h
      └─ veth ── <p>-hosts   10.98.0.2/24 plus, on the same interface,
                             10.99.0.10      fake internal host
                             169.254.169.254 fake metadata service
                             198.51.100.10   the allowed host (TEST-NET-2)
                             10.98.0.53      a fake DNS resolver (answers every A query)

Every host runs a TCP server on each of PORTS that answers "hello from <address>:<port>\\n". The gw
namespace's /etc/netns/<p>-gw/resolv.conf names the fake resolver, so `ip netns exec <p>-gw
slirp4netns` forwards the jobs' DNS there. `topology()` deletes every namespace and process it made,
also when the test fails. Names are unique to the test process (pid), so concurrent runs never meet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

INTERNAL = "10.99.0.10"
METADATA = "169.254.169.254"
ALLOWED = "198.51.100.10"
GW_ADDRESS = "10.98.0.1"
DNS = "10.98.0.53"
PORTS = (8080, 8081)
DNS_NAME = "allowed.corral.test"  # the fake resolver answers ALLOWED for this name (every name)
SERVER_LIFETIME_S = 600  # seconds after which the topology's servers exit by themselves

_SERVER = textwrap.dedent(
    """
    import socket, socketserver, sys, threading, time
    class H(socketserver.StreamRequestHandler):
        def handle(self):
            a, p = self.server.server_address[:2]
            self.wfile.write(f"hello from {a}:{p}\\n".encode())
    class S(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
    class D(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            if len(data) < 12:
                return
            ans = bytes([*data[:2], 0x81, 0x80]) + data[4:6] + b"\\x00\\x01\\x00\\x00\\x00\\x00"
            q = data[12:]
            ans += q + b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04"
            ans += socket.inet_aton(sys.argv[2])
            sock.sendto(ans, self.client_address)
    ports = [int(p) for p in sys.argv[3].split(",")]
    for addr in sys.argv[1].split(","):
        for port in ports:
            s = S((addr, port), H)
            threading.Thread(target=s.serve_forever, daemon=True).start()
    u = socketserver.ThreadingUDPServer((sys.argv[4], 53), D)
    threading.Thread(target=u.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(float(sys.argv[5]))
    """
)


@dataclass
class Topology:
    gw: str  # the uplink namespace's name (EXECUTOR_NETWORK_UPLINK_NETNS)
    hosts: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def probe(self, ns: str, address: str, port: int) -> str:
        """Connect from namespace `ns` (e.g. the gw) to address:port: what it answered, or the error."""
        code = (
            "import socket,sys\n"
            "try:\n"
            f"  s=socket.create_connection(({address!r},{port}),timeout=3)\n"
            "  print(s.recv(100).decode().strip())\n"
            "except OSError as e: print('error', e)\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, timeout=20
        )
        return out.stdout.decode().strip()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def available() -> str | None:
    """Why the topology cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "slirp4netns"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/setup.sh)"
    return None


@contextmanager
def topology(prefix: str | None = None) -> Iterator[Topology]:
    p = prefix or f"ctn{os.getpid()}"
    topo = Topology(gw=f"{p}-gw", hosts=f"{p}-hosts")
    etc = Path("/etc/netns") / topo.gw
    try:
        _ip("netns", "add", topo.gw)
        _ip("netns", "add", topo.hosts)
        _ip(
            "link",
            "add",
            "v-h",
            "netns",
            topo.gw,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            topo.hosts,
        )
        _ip("-n", topo.gw, "addr", "add", f"{GW_ADDRESS}/24", "dev", "v-h")
        for ns in (topo.gw, topo.hosts):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", topo.gw, "link", "set", "v-h", "up")
        _ip("-n", topo.hosts, "addr", "add", "10.98.0.2/24", "dev", "eth0")
        for extra in (INTERNAL, METADATA, ALLOWED, DNS):
            _ip("-n", topo.hosts, "addr", "add", f"{extra}/32", "dev", "eth0")
        _ip("-n", topo.hosts, "link", "set", "eth0", "up")
        _ip("-n", topo.hosts, "route", "add", "default", "via", GW_ADDRESS)  # replies to the gw only
        for extra in (INTERNAL, METADATA, ALLOWED, DNS):
            _ip("-n", topo.gw, "route", "add", f"{extra}/32", "via", "10.98.0.2")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS}\n")
        server = subprocess.Popen(
            [
                "ip", "netns", "exec", topo.hosts, sys.executable, "-c", _SERVER,
                ",".join((INTERNAL, METADATA, ALLOWED, "10.98.0.2")),
                ALLOWED, ",".join(map(str, PORTS)), DNS, str(SERVER_LIFETIME_S),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        topo.procs.append(server)
        assert server.stdout is not None
        line = server.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(
                f"the topology's servers did not start: {server.stderr and server.stderr.read()!r}"
            )
        gw_server = subprocess.Popen(
            [
                "ip", "netns", "exec", topo.gw, sys.executable, "-c", _SERVER,
                GW_ADDRESS, ALLOWED, ",".join(map(str, PORTS)), GW_ADDRESS, str(SERVER_LIFETIME_S),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        topo.procs.append(gw_server)
        assert gw_server.stdout is not None
        if gw_server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the gw's server did not start")
        yield topo
    finally:
        for proc in topo.procs:
            proc.kill()
            proc.wait(timeout=10)
        for ns in (topo.gw, topo.hosts):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            Path("/run/netns", ns).exists() for ns in (topo.gw, topo.hosts)
        ):
            time.sleep(0.05)
