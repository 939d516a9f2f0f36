"""A small async client for the Docker Engine HTTP API, spoken directly over its unix socket with httpx.

Only the calls the docker runtime needs are here. Every failure is a `DockerAPIError` carrying the HTTP
status (0 when the daemon could not be reached at all) and the engine's own message, so callers can map
it to a plain-language error without knowing httpx.

API version: the first request of each client asks the daemon for its version (`GET /version`, which
needs no version prefix) and then uses min(daemon's version, API_VERSION_MAX). Daemons older than
API_VERSION_MIN are refused with a clear message.

Output of a container (`attach`) comes multiplexed: each frame is an 8-byte header (stream type: 1 =
stdout, 2 = stderr; three zero bytes; the payload length as a big-endian uint32) followed by the payload.
`FrameDecoder` undoes that incrementally.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from corral.errors import DockerAPIError, Reason, RuntimeFailure

__all__ = [
    "API_VERSION_MAX",
    "API_VERSION_MIN",
    "DEFAULT_SOCKET",
    "DockerAPI",
    "DockerAPIError",
    "FrameDecoder",
    "docker_failure",
    "socket_from_env",
]

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION_MIN = "1.41"  # Docker 20.10
API_VERSION_MAX = "1.47"  # newest API whose request and response shapes this client was checked against
CONNECT_TIMEOUT_S = 5.0  # seconds to connect to the socket
REQUEST_TIMEOUT_S = (
    60.0  # seconds for an ordinary (non-streaming) request; create/remove can be slow under load
)
HEADER_LEN_BYTES = 8  # multiplexed stream frame header
MAX_KEEPALIVE = 32  # idle connections kept to the daemon


def docker_failure(exc: DockerAPIError, doing: str) -> RuntimeFailure:
    """The runtime seam's error for a failed Engine call: what we were doing, then the engine's words."""
    return RuntimeFailure(f"{doing}: {exc.message}", reason=Reason.DOCKER)


def socket_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The socket path from DOCKER_HOST (unix://PATH), else the default one.

    Raises ValueError for a DOCKER_HOST that is not a unix socket (tcp://, ssh://, npipe://).
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "").strip()
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    raise ValueError(
        f"DOCKER_HOST={host} is not supported: corral talks to the Docker Engine over a unix socket only "
        "(set DOCKER_HOST=unix:///path/to/docker.sock or unset it)"
    )


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


class FrameDecoder:
    """Incremental decoder of Docker's multiplexed stdout/stderr stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the complete frames now available as (stream, payload)."""
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buf) >= HEADER_LEN_BYTES:
            stream = self._buf[0]
            (size,) = struct.unpack(">I", self._buf[4:HEADER_LEN_BYTES])
            end = HEADER_LEN_BYTES + size
            if len(self._buf) < end:
                break
            frames.append((stream, bytes(self._buf[HEADER_LEN_BYTES:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)


def _engine_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    text = resp.text.strip()
    return text or f"HTTP {resp.status_code}"


def _path(name: str) -> str:
    """Quote an image or container name for use in a URL path (slashes and tags stay readable)."""
    return quote(name, safe="/:@")


class DockerAPI:
    """Docker Engine API client. One instance may serve many concurrent jobs.

    An httpx client belongs to one event loop; a new one is made when used from another loop (tests run
    each case in its own loop). Call `aclose()` when done.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefix: str | None = None  # "/v1.41", once negotiated

    # --- plumbing ---------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
            self._http = httpx.AsyncClient(
                transport=transport,
                base_url="http://docker",
                timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=MAX_KEEPALIVE),
            )
            self._loop = loop
            self._prefix = None
        return self._http

    def _unreachable(self, exc: Exception) -> DockerAPIError:
        detail = str(exc) or type(exc).__name__
        return DockerAPIError(0, f"cannot reach the Docker Engine at unix://{self.socket_path}: {detail}")

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None
        self._loop = None
        self._prefix = None

    async def _versioned(self, path: str) -> str:
        if self._prefix is None:
            version = (await self.version()).get("ApiVersion", "")
            if _version_tuple(version) < _version_tuple(API_VERSION_MIN):
                raise DockerAPIError(
                    0,
                    f"the Docker Engine's API version {version or '(unknown)'} is too old: "
                    f"corral needs {API_VERSION_MIN} (Docker 20.10) or newer",
                )
            use = min(version, API_VERSION_MAX, key=_version_tuple)
            self._prefix = f"/v{use}"
        return self._prefix + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        versioned: bool = True,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request; statuses >= 400 and transport failures raise DockerAPIError."""
        client = self._client()
        url = await self._versioned(path) if versioned else path
        kwargs: dict[str, Any] = {"params": params, "json": json_body, "headers": headers}
        if content is not None:
            kwargs["content"] = content
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise DockerAPIError(resp.status_code, _engine_message(resp))
        return resp

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streaming request; the body is read by the caller. Errors as in `request`."""
        client = self._client()
        url = await self._versioned(path)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=read_timeout)
        try:
            async with client.stream(method, url, params=params, headers=headers, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise DockerAPIError(resp.status_code, _engine_message(resp))
                yield resp
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # --- system -----------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.request("GET", "/_ping", versioned=False, timeout=httpx.Timeout(10.0, connect=3.0))

    async def version(self) -> dict[str, Any]:
        resp = await self.request("GET", "/version", versioned=False)
        data: dict[str, Any] = resp.json()
        return data

    async def info(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.request("GET", "/info")).json()
        return data

    # --- images -----------------------------------------------------------------------------------

    async def image_inspect(self, name: str) -> dict[str, Any] | None:
        """The image's details, or None when it is not present locally."""
        try:
            data: dict[str, Any] = (await self.request("GET", f"/images/{_path(name)}/json")).json()
        except DockerAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return data

    async def image_pull(self, repo: str, tag: str, *, registry_auth: str | None = None) -> None:
        """Pull repo:tag (tag may be a digest). Progress is discarded; an error in the stream raises.

        The engine answers 200 and reports most failures inside the JSON progress stream
        (`{"error": ..., "errorDetail": ...}`), so the whole stream is read.
        """
        headers = {"X-Registry-Auth": registry_auth} if registry_auth else None
        params = {"fromImage": repo, "tag": tag}
        decoder = json.JSONDecoder()
        buf = ""
        error: str | None = None
        async with self.stream("POST", "/images/create", params=params, headers=headers) as resp:
            async for chunk in resp.aiter_text():
                buf += chunk
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        obj, end = decoder.raw_decode(buf)
                    except ValueError:
                        break  # incomplete object: wait for more
                    buf = buf[end:]
                    if isinstance(obj, dict) and obj.get("error"):
                        error = str(obj["error"])
        if error is not None:
            raise DockerAPIError(200, error)

    async def image_remove(self, name: str) -> None:
        await self.request("DELETE", f"/images/{_path(name)}")

    # --- containers -------------------------------------------------------------------------------

    async def container_create(self, name: str, config: Mapping[str, Any]) -> str:
        resp = await self.request("POST", "/containers/create", params={"name": name}, json_body=config)
        return str(resp.json()["Id"])

    async def container_start(self, cid: str) -> None:
        await self.request("POST", f"/containers/{_path(cid)}/start")

    @asynccontextmanager
    async def attach(self, cid: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Attach to stdout+stderr (before start, so nothing is missed); yields the payloads as they arrive.

        Payloads of all frames that arrived together are joined, stdout and stderr in arrival order.
        The iterator ends when the container's output closes (it exited).
        """
        params = {"stream": 1, "stdout": 1, "stderr": 1}
        async with self.stream("POST", f"/containers/{_path(cid)}/attach", params=params) as resp:

            async def payloads() -> AsyncGenerator[bytes]:
                decoder = FrameDecoder()
                try:
                    async for chunk in resp.aiter_raw():
                        data = b"".join(p for _, p in decoder.feed(chunk))
                        if data:
                            yield data
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from exc

            gen = payloads()
            try:
                yield gen
            finally:
                await gen.aclose()  # also when the caller stopped early (its sink raised, it was cancelled)

    async def container_wait(self, cid: str) -> int:
        """Block until the container stops; its exit code."""
        client = self._client()
        url = await self._versioned(f"/containers/{_path(cid)}/wait")
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=None)
        try:
            resp = await client.post(url, timeout=timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise DockerAPIError(resp.status_code, _engine_message(resp))
        body = resp.json()
        err = body.get("Error") or {}
        if err.get("Message"):
            raise DockerAPIError(resp.status_code, f"waiting for the container failed: {err['Message']}")
        return int(body["StatusCode"])

    async def container_inspect(self, cid: str, *, size: bool = False) -> dict[str, Any] | None:
        """The container's details (with SizeRw/SizeRootFs when `size`: the daemon then walks the
        writable layer's files, ~3.5 us per file), or None when it does not exist."""
        params = {"size": 1} if size else None
        try:
            resp = await self.request("GET", f"/containers/{_path(cid)}/json", params=params)
            data: dict[str, Any] = resp.json()
        except DockerAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return data

    async def container_kill(self, cid: str, signal: str = "KILL") -> None:
        """Send `signal`; a container that is gone or no longer running is fine."""
        try:
            await self.request("POST", f"/containers/{_path(cid)}/kill", params={"signal": signal})
        except DockerAPIError as exc:
            if exc.status not in (404, 409):
                raise

    async def container_stop(self, cid: str, grace_s: int) -> None:
        """SIGTERM (the image's stop signal), then SIGKILL after `grace_s` seconds. Gone or stopped: fine."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S + grace_s, connect=CONNECT_TIMEOUT_S)
        try:
            await self.request(
                "POST", f"/containers/{_path(cid)}/stop", params={"t": grace_s}, timeout=timeout
            )
        except DockerAPIError as exc:
            if exc.status not in (304, 404):
                raise

    async def container_remove(self, cid: str) -> bool:
        """Force-remove (kill if running) with its anonymous volumes. False when it was already gone."""
        try:
            await self.request("DELETE", f"/containers/{_path(cid)}", params={"force": 1, "v": 1})
        except DockerAPIError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409 and "already in progress" in exc.message:
                return False
            raise
        return True

    async def containers_list(self, labels: list[str]) -> list[dict[str, Any]]:
        """All containers (running or not) carrying every label in `labels` ("key=value" or "key")."""
        params = {"all": 1, "filters": json.dumps({"label": labels})}
        data: list[dict[str, Any]] = (await self.request("GET", "/containers/json", params=params)).json()
        return data
