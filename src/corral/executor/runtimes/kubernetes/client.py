"""A thin client for the few Kubernetes API calls the kubernetes runtime makes, on kubernetes_asyncio.

kubernetes_asyncio does the connection: the configuration (a kubeconfig from
EXECUTOR_KUBERNETES_CONFIG_PATH, or the pod's service account inside a cluster, with its token
refreshed), TLS, authentication and the aiohttp session. The calls themselves go through its
`ApiClient.call_api` with `_preload_content=False` and speak plain JSON dicts: the manifests are
dicts (manifests.py), and reading answers as dicts (not the generated models) keeps a field the
models do not know, or an answer without a field they require, from breaking the runtime.

Every call is counted by verb and resource (`calls`: "create jobs", "watch pods", "get pods/log"),
for the benchmark and the tests (fewer is better: the runtime watches, it never polls). Every
failure is a `KubernetesAPIError` carrying the HTTP status (0: the API could not be reached) and the
API's own message; the runtime maps it to a RuntimeFailure at its seam.

Bounds: an answer (or one watch event) larger than MAX_ANSWER is refused; logs are read in chunks
as they come (the caller bounds what it keeps).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.config.config_exception import ConfigException

from corral.errors import ConfigError, KubernetesAPIError

__all__ = [
    "KINDS",
    "MAX_ANSWER",
    "Kind",
    "KubeClient",
    "WatchEvent",
    "load_configuration",
]

MAX_ANSWER = 16 * 1024 * 1024  # bytes of one answer, or of one watch event
REQUEST_TIMEOUT_S = 30.0  # seconds for an ordinary (non-streaming) call
WATCH_TIMEOUT_S = 300  # seconds a watch is held by the API server before it ends (then renewed)
CONNECT_TIMEOUT_S = 10.0  # seconds to connect for a streaming call (watch, log follow)


@dataclass(frozen=True)
class Kind:
    """One resource the runtime uses: its API group path and plural name."""

    prefix: str  # "/api/v1" or "/apis/batch/v1"
    plural: str

    def path(self, namespace: str, name: str = "", sub: str = "") -> str:
        p = f"{self.prefix}/namespaces/{_segment(namespace)}/{self.plural}"
        if name:
            p += f"/{_segment(name)}"
        if sub:
            p += f"/{sub}"
        return p


KINDS = {
    "jobs": Kind("/apis/batch/v1", "jobs"),
    "pods": Kind("/api/v1", "pods"),
    "secrets": Kind("/api/v1", "secrets"),
    "persistentvolumeclaims": Kind("/api/v1", "persistentvolumeclaims"),
    "events": Kind("/api/v1", "events"),
}


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: dict[str, Any]


def _segment(part: str) -> str:
    if not part or "/" in part or part in (".", ".."):
        raise ValueError(f"{part[:80]!r} is not a Kubernetes object name")
    return part


async def load_configuration(config_path: str, *, in_cluster: bool) -> kclient.Configuration:
    """The API's address and credentials: the pod's service account inside a cluster (Sourcegraph's
    rule: KUBERNETES_SERVICE_HOST and _PORT set, KubernetesSettings.in_cluster), else the kubeconfig
    at `config_path` (EXECUTOR_KUBERNETES_CONFIG_PATH). ConfigError in plain words when there is none
    or it cannot be used."""
    configuration = kclient.Configuration()
    if in_cluster:
        try:
            kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise ConfigError(f"in-cluster Kubernetes configuration (service account): {exc}") from None
        return configuration
    path = os.path.expanduser(config_path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"no kubeconfig at {path} (EXECUTOR_KUBERNETES_CONFIG_PATH): point it at one, or run the "
            "executor in a pod of the cluster (its service account is used there)"
        )
    try:
        await kconfig.load_kube_config(config_file=path, client_configuration=configuration)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"EXECUTOR_KUBERNETES_CONFIG_PATH={path}: cannot use this kubeconfig: {exc}"
        ) from None
    return configuration


class KubeClient:
    """The runtime's calls, in one namespace. One instance serves every job (concurrent calls are
    fine: aiohttp's session pools connections)."""

    def __init__(self, api: kclient.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.calls: Counter[str] = Counter()

    @classmethod
    async def connect(cls, config_path: str, namespace: str, *, in_cluster: bool) -> KubeClient:
        configuration = await load_configuration(config_path, in_cluster=in_cluster)
        return cls(kclient.ApiClient(configuration), namespace)

    @property
    def host(self) -> str:
        return str(self.api.configuration.host or "")

    async def close(self) -> None:
        await self.api.close()

    # --- the calls --------------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        return await self._json("GET", "/version", counted="get version")

    async def create(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", KINDS[kind].path(self.namespace), body=body, counted=f"create {kind}")

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return await self._json("GET", KINDS[kind].path(self.namespace, name), counted=f"get {kind}")
        except KubernetesAPIError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: str, name: str, *, propagation: str | None = None) -> bool:
        """Delete the object; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            await self._json(
                "DELETE", KINDS[kind].path(self.namespace, name), body=body, counted=f"delete {kind}"
            )
        except KubernetesAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list_all(
        self, kind: str, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """The objects and the list's resourceVersion (to watch from)."""
        query = _selectors(label_selector, field_selector)
        path = KINDS[kind].path(self.namespace)
        answer = await self._json("GET", path, query=query, counted=f"list {kind}")
        items = answer.get("items") or []
        version = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        return [i for i in items if isinstance(i, dict)], version

    async def watch(
        self,
        kind: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        timeout_s: int = WATCH_TIMEOUT_S,
    ) -> AsyncIterator[WatchEvent]:
        """Events of `kind` from `resource_version` on, until the API server ends the watch."""
        query = _selectors(label_selector, field_selector)
        query += [("watch", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version:
            query += [("resourceVersion", resource_version), ("allowWatchBookmarks", "true")]
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=timeout_s + 30)
        path = KINDS[kind].path(self.namespace)
        async with self._stream("GET", path, query, timeout, f"watch {kind}") as r:
            buf = bytearray()
            async for chunk in r.content.iter_any():
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf = bytes(buf[:nl]), buf[nl + 1 :]
                    if line.strip():
                        yield _event(line)
                if len(buf) > MAX_ANSWER:
                    raise KubernetesAPIError(0, f"a watch event of {kind} is larger than {MAX_ANSWER} bytes")
            if buf.strip():
                yield _event(bytes(buf))

    async def log(
        self, pod: str, container: str, *, follow: bool, limit_bytes: int = 0
    ) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr, as the kubelet keeps it), as it comes when
        `follow`; at most `limit_bytes` when > 0 (the API server cuts it)."""
        query = [("container", container)]
        if follow:
            query.append(("follow", "true"))
        if limit_bytes > 0:
            query.append(("limitBytes", str(limit_bytes)))
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S)
        path = KINDS["pods"].path(self.namespace, pod, "log")
        async with self._stream("GET", path, query, timeout, "get pods/log") as r:
            async for chunk in r.content.iter_any():
                yield chunk

    # --- plumbing ---------------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        counted: str,
        body: Mapping[str, Any] | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        self.calls[counted] += 1
        try:
            r = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(self.host, exc) from None
        try:
            data = await _read_bounded(r)
        finally:
            r.release()
        if not 200 <= r.status <= 299:
            raise _api_error(r.status, data)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            raise KubernetesAPIError(r.status, f"{method} {path}: the API's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise KubernetesAPIError(r.status, f"{method} {path}: the API's answer is not a JSON object")
        return answer

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        timeout: aiohttp.ClientTimeout,
        counted: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        self.calls[counted] += 1
        try:
            r = await self.api.call_api(
                path,
                method,
                query_params=query,
                header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(self.host, exc) from None
        try:
            if not 200 <= r.status <= 299:
                raise _api_error(r.status, await _read_bounded(r))
            try:
                yield r
            except (aiohttp.ClientError, OSError) as exc:
                raise KubernetesAPIError(0, f"the stream from the Kubernetes API broke: {exc}") from None
        finally:
            r.release()


async def _read_bounded(r: aiohttp.ClientResponse) -> bytes:
    buf = bytearray()
    try:
        async for chunk in r.content.iter_any():
            buf += chunk
            if len(buf) > MAX_ANSWER:
                raise KubernetesAPIError(r.status, f"the API's answer is larger than {MAX_ANSWER} bytes")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise KubernetesAPIError(0, f"reading the Kubernetes API's answer failed: {exc}") from None
    return bytes(buf)


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


def _event(line: bytes) -> WatchEvent:
    try:
        data = json.loads(line)
    except ValueError:
        raise KubernetesAPIError(0, "a watch event is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise KubernetesAPIError(0, "a watch event is not an object with an object")
    kind = str(data.get("type") or "")
    if kind == "ERROR":  # e.g. 410 Gone: the resourceVersion is too old
        status = data["object"]
        raise KubernetesAPIError(int(status.get("code") or 0), str(status.get("message") or "watch error"),
                                 reason=str(status.get("reason") or ""))
    return WatchEvent(kind, data["object"])


def _api_error(status: int, data: bytes) -> KubernetesAPIError:
    """The API's Status object as an error: its message and reason (Forbidden, NotFound, ...)."""
    message, reason = "", ""
    try:
        answer = json.loads(data)
        if isinstance(answer, dict):
            message, reason = str(answer.get("message") or ""), str(answer.get("reason") or "")
    except ValueError:
        message = data[:500].decode("utf-8", "replace").strip()
    return KubernetesAPIError(status, message or f"HTTP {status}", reason=reason)


def _unreachable(host: str, exc: BaseException) -> KubernetesAPIError:
    why = str(exc) or type(exc).__name__
    return KubernetesAPIError(0, f"the Kubernetes API at {host} cannot be reached: {why}")
