"""The Service-like forwarder of a stand-in pod: a listening socket made INSIDE the pod's network
namespace (a short-lived thread enters it with setns(2) and binds 127.0.0.1:<port> there; a socket
stays in the namespace it was made in), served on the kit's event loop, which runs in the host's
namespace and relays each connection to the host's 127.0.0.1:<port>, the test's corral server. Only
that loopback address is ever connected to; connections per pod are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading

__all__ = ["Forwarder", "listen_in_netns"]

CLONE_NEWNET = 0x40000000
MAX_CONNECTIONS = 64  # concurrent relayed connections per forwarder
CHUNK_BYTES = 64 * 1024


def listen_in_netns(pid: int, port: int) -> socket.socket:
    """A non-blocking socket listening on 127.0.0.1:port in the network namespace of process `pid`."""
    result: dict[str, object] = {}

    def enter_and_listen() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into the network namespace of pid {pid}: {os.strerror(err)}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
            result["sock"] = sock
        except BaseException as exc:  # reported to the caller's thread
            result["error"] = exc
        finally:
            os.close(fd)
        # this thread now lives in the pod's namespace: it ends here and is never reused

    thread = threading.Thread(target=enter_and_listen, name=f"kubekit-netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    sock = result["sock"]
    assert isinstance(sock, socket.socket)
    return sock


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


class Forwarder:
    """Relays 127.0.0.1:port inside a pod's namespace to 127.0.0.1:port on the host."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = listen_in_netns(self.pid, self.port)
        self._server = await asyncio.start_server(self._relay, sock=sock)

    async def _relay(self, pod_reader: asyncio.StreamReader, pod_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._slots.locked():
                return
            async with self._slots:
                try:
                    host_reader, host_writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    return
                try:
                    await asyncio.gather(_pump(pod_reader, host_writer), _pump(host_reader, pod_writer))
                finally:
                    host_writer.close()
        finally:
            pod_writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
