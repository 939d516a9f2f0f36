"""A stand-in for Firecracker's API socket (no Firecracker binary or KVM here): an asyncio unix-socket
HTTP/1.1 server that records every request and answers as Firecracker's swagger says (204 for a
pre-boot PUT, 400 with {"fault_message": ...} for a refusal, GET / the instance info).

In-process: `async with FakeFirecracker(path) as fake: ...`. As a process standing in for the
`firecracker` binary: `python tests/fckit.py --api-sock PATH --id ID` (`fake_binary(dir)` writes a
script that runs that; REFUSE_ENV holds its refusals): after InstanceStart it prints CONSOLE on
stdout (the guest's serial console) and ends, as a VM that powered off.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

CONSOLE = b"[    0.000000] Linux version fake-firecracker\nhello from the guest\n"
PRE_BOOT = ("/machine-config", "/boot-source", "/drives/", "/vsock", "/network-interfaces/", "/serial")
REFUSE_ENV = "FAKE_FIRECRACKER_REFUSE"  # the stand-in binary's `refuse`, as JSON
AFTER_START = "The requested operation is not supported after starting the microVM."  # Firecracker's words


@dataclass
class Request:
    method: str
    path: str
    body: Any


@dataclass
class FakeFirecracker:
    socket_path: Path
    instance_id: str = "anonymous-instance"
    refuse: dict[str, str] = field(default_factory=dict)  # path -> fault_message (400)
    requests: list[Request] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeFirecracker:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def puts(self) -> list[tuple[str, Any]]:
        return [(r.path, r.body) for r in self.requests if r.method == "PUT"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else None
                self.requests.append(Request(method, path, body))
                status, answer = self._answer(method, path, body)
                data = json.dumps(answer).encode() if answer is not None else b""
                reason = {200: "OK", 204: "No Content", 400: "Bad Request"}[status]
                head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(data)}\r\n"
                if data:
                    head += "Content-Type: application/json\r\n"
                writer.write(head.encode() + b"\r\n" + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path in self.refuse:
            return 400, {"fault_message": self.refuse[path]}
        if method == "GET" and path == "/":
            state = "Running" if self.started.is_set() else "Not started"
            info = {"id": self.instance_id, "state": state, "vmm_version": "1.7.0"}
            return 200, {**info, "app_name": "Firecracker"}
        if method != "PUT" or not isinstance(body, dict):
            return 400, {"fault_message": f"Invalid request method and/or path: {method} {path}."}
        if path.startswith(PRE_BOOT) and self.started.is_set():
            return 400, {"fault_message": AFTER_START}
        if path == "/machine-config":
            vcpus = body.get("vcpu_count")
            if not isinstance(vcpus, int) or not 1 <= vcpus <= 32 or "mem_size_mib" not in body:
                return 400, {"fault_message": "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."}  # noqa: E501
        if path == "/boot-source" and "kernel_image_path" not in body:
            return 400, {"fault_message": "missing field `kernel_image_path`"}
        if path.startswith("/drives/") and body.get("drive_id") != path.removeprefix("/drives/"):
            return 400, {"fault_message": "The id from the path does not match the id from the body!"}
        if path == "/actions":
            if body.get("action_type") != "InstanceStart":
                return 400, {"fault_message": f"unknown action {body.get('action_type')!r}"}
            if not any(r.path == "/boot-source" for r in self.requests):
                return 400, {"fault_message": "Cannot start microvm without kernel configuration."}
            self.started.set()
        return 204, None


def fake_binary(directory: Path) -> Path:
    """An executable that stands in for `firecracker` (this module run as a script)."""
    script = directory / "firecracker"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} "$@"\n')
    script.chmod(0o755)
    return script


async def _main(argv: list[str]) -> None:
    sock = Path(argv[argv.index("--api-sock") + 1])
    ident = argv[argv.index("--id") + 1] if "--id" in argv else "anonymous-instance"
    refuse = json.loads(os.environ.get(REFUSE_ENV, "{}"))
    async with FakeFirecracker(sock, instance_id=ident, refuse=refuse) as fake:
        await asyncio.wait_for(fake.started.wait(), 60)
        await asyncio.sleep(0.05)  # the InstanceStart answer is written first
        sys.stdout.buffer.write(CONSOLE)
        sys.stdout.flush()
        (sock.parent / "requests.json").write_text(json.dumps([r.__dict__ for r in fake.requests]))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
