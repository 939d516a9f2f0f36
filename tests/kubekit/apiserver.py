"""The API server of the stand-in: kmock's KubernetesEmulator (its aiohttp server, request parsing,
discovery and Status errors, its ObjectsArray keeping every version of every object for assertions)
with the semantics kmock lacks added in `_handle`:

* bearer-token authentication (401 without a known token) and RBAC for the executor's identity (403
  Forbidden as a Status; the request is recorded as a `Violation` the fixture fails the test with);
* every request recorded as a `Call` (identity, verb, resource, subresource, watch or not, status);
* resourceVersions (one counter, like etcd's revision), uid/creationTimestamp/generateName, the
  validation and defaulting of `validation.py` (422 Invalid), 404/409 Status answers;
* list with labelSelector/fieldSelector/limit/continue and the list's resourceVersion;
* watch from a resourceVersion (replayed from an event history; 410 Expired when it is older), with
  selectors (an object leaving a label selector is DELETED for that watch), timeoutSeconds;
* merge PATCH (strategic merge patch is applied as a JSON merge patch: lists are replaced), PUT with
  resourceVersion preconditions (409 Conflict);
* DELETE with propagationPolicy (Foreground: the owner stays with deletionTimestamp and the
  foregroundDeletion finalizer until its dependents are gone; Background; Orphan, the default for Jobs
  as in batch/v1), graceful deletion of bound pods (the kubelet removes them once their containers
  are gone), gracePeriodSeconds=0 removing at once;
* pods/log served by the kubelet (`log_server`).

In-process components (the Job controller, the kubelet) change objects through `create`, `replace`,
`remove`, `delete` and learn of changes through `hooks` (called synchronously, in order, on the loop).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock
from aiohttp.web_request import BaseRequest

from corral.executor.runtimes.kubernetes.rbac import Rule
from tests.kubekit import selectors, validation

__all__ = ["KINDS", "Call", "Identity", "Kind", "KubeAPI", "LargeBodyServer", "Violation", "now", "rules_of"]

HISTORY_EVENTS = 20_000  # watch events kept for resuming from a resourceVersion
MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's request body limit (3 MiB)
FOREGROUND = "foregroundDeletion"
PVC_PROTECTION = "kubernetes.io/pvc-protection"  # a claim in use by a pod stays until the pod ends


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)


KINDS: dict[tuple[str, str], Kind] = {
    (k.group, k.plural): k
    for k in (
        Kind("", "v1", "pods", "Pod"),
        Kind("batch", "v1", "jobs", "Job"),
        Kind("", "v1", "secrets", "Secret"),
        Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
        Kind("", "v1", "events", "Event"),
        Kind("", "v1", "configmaps", "ConfigMap"),
        Kind("", "v1", "serviceaccounts", "ServiceAccount"),
        Kind("", "v1", "namespaces", "Namespace", namespaced=False),
        Kind("", "v1", "nodes", "Node", namespaced=False),
    )
}
POD = KINDS[("", "pods")]
JOB = KINDS[("batch", "jobs")]
SECRET = KINDS[("", "secrets")]
PVC = KINDS[("", "persistentvolumeclaims")]
EVENT = KINDS[("", "events")]
NODE = KINDS[("", "nodes")]


def rules_of(role: Mapping[str, Any]) -> list[Rule]:
    """The rules of a Role manifest (a test's own Role; the shipped one is rbac.load_role())."""
    return [
        Rule(
            api_groups=tuple(raw.get("apiGroups") or ()),
            resources=tuple(raw.get("resources") or ()),
            verbs=tuple(raw.get("verbs") or ()),
            resource_names=tuple(raw.get("resourceNames") or ()),
        )
        for raw in role.get("rules") or []
    ]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Identity:
    user: str  # e.g. system:serviceaccount:corral:corral-executor
    rbac: bool  # True: every request is checked against the Role


@dataclass(frozen=True)
class Call:
    user: str
    verb: str  # get list watch create update patch delete deletecollection (or the HTTP method)
    group: str
    resource: str  # plural, or the path for non-resource requests
    subresource: str | None
    namespace: str | None
    name: str | None
    watch: bool
    status: int = 0
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    call: Call
    reason: str


class LargeBodyServer(aiohttp.test_utils.RawTestServer):
    """kmock's server class with kube-apiserver's body limit (aiohttp's default is 1 MiB: a Secret near
    the 1 MiB data limit is larger than that once base64-encoded)."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        runner = await super()._make_runner(debug=debug, **kwargs)
        server = runner._web_server

        def factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            return BaseRequest(
                message, payload, protocol, writer, task, server._loop, client_max_size=MAX_BODY_BYTES
            )

        server.request_factory = factory
        return runner


class StatusError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})


def _status(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": dict(details or {}),
            "code": code,
        },
        status=code,
    )


def _not_found(kind: Kind, name: str) -> StatusError:
    return StatusError(
        404, "NotFound", f'{kind.plural} "{name}" not found', {"name": name, "kind": kind.plural}
    )


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    if method == "GET":
        if (params.get("watch") or "").lower() in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())


Hook = Callable[[str, Kind, dict[str, Any], dict[str, Any] | None], None]
LogServer = Callable[
    [aiohttp.web.BaseRequest, dict[str, Any], Mapping[str, str]], Awaitable[aiohttp.web.StreamResponse]
]


@attrs.define(kw_only=True)
class KubeAPI(kmock.KubernetesEmulator):
    tokens: dict[str, Identity] = attrs.field(factory=dict)
    rules: list[Rule] = attrs.field(factory=list)
    rbac_namespace: str = "default"
    calls: list[Call] = attrs.field(factory=list, init=False)
    violations: list[Violation] = attrs.field(factory=list, init=False)
    hooks: list[Hook] = attrs.field(factory=list, init=False)
    log_server: LogServer | None = attrs.field(default=None, init=False)
    _rv: int = attrs.field(default=1, init=False)
    _history: collections.deque[tuple[int, Kind, str, dict[str, Any], dict[str, Any] | None]] = attrs.field(
        factory=lambda: collections.deque(maxlen=HISTORY_EVENTS), init=False
    )
    _oldest_rv: int = attrs.field(default=1, init=False)
    _tick: asyncio.Event | None = attrs.field(default=None, init=False)
    _closing: asyncio.Event | None = attrs.field(default=None, init=False)

    # --- the store (synchronous: one loop, no await inside a change) -----------------------------

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return (kind.resource, namespace if kind.namespaced else None, name)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = self._key(kind, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list_objects(self, kind: Kind, namespace: str | None = None) -> list[dict[str, Any]]:
        out = []
        for (res, ns, _name), obj in self.objects.items():
            if res == kind.resource and not obj.deleted and (namespace is None or ns == namespace):
                out.append(copy.deepcopy(obj.raw))
        return out

    def _notify(self, kind: Kind, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if len(self._history) == self._history.maxlen:
            self._oldest_rv = self._history[0][0] + 1
        self._history.append((self._rv, kind, type_, copy.deepcopy(obj), old))
        if self._tick is not None:
            self._tick.set()
            self._tick = asyncio.Event()
        for hook in list(self.hooks):
            hook(type_, kind, copy.deepcopy(obj), old)

    def _store(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key in self.objects:
            self.objects[key].create(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)
        return obj

    def create(self, kind: Kind, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        """Validate, default and store a new object; StatusError as the API server would answer."""
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError(400, "BadRequest", "metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise StatusError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + validation.random_suffix()
        for drop in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(drop, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        try:
            if kind is JOB:
                validation.validate(kind.kind, obj)
                validation.default_job(obj)
            else:
                validation.validate(kind.kind, obj)
        except validation.Invalid as exc:
            name = meta.get("name") or ""
            raise StatusError(
                422,
                "Invalid",
                f'{kind.kind} "{name}" is invalid: {exc}',
                {"name": name, "kind": kind.kind, "causes": [{"field": exc.field, "message": exc.message}]},
            ) from exc
        if self.get(kind, meta.get("namespace"), meta["name"]) is not None:
            raise StatusError(
                409,
                "AlreadyExists",
                f'{kind.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": kind.plural},
            )
        if kind in (JOB, POD):
            meta["generation"] = 1
        if kind is POD:
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        elif kind is PVC:
            obj["status"] = {"phase": "Pending"}
            meta["finalizers"] = [*(meta.get("finalizers") or []), PVC_PROTECTION]
        self._store(kind, obj)
        self._notify(kind, "ADDED", obj, None)
        return copy.deepcopy(obj)

    def replace(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new version of an existing object (the in-process components' write)."""
        meta = obj["metadata"]
        old = self.get(kind, meta.get("namespace"), meta["name"])
        if old is None:
            raise _not_found(kind, meta["name"])
        obj = copy.deepcopy(obj)
        self._store(kind, obj)
        self._notify(kind, "MODIFIED", obj, old)
        self._maybe_finalised(kind, obj)
        return copy.deepcopy(obj)

    def remove(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Remove the object now (after its finalizers are done); DELETED to watchers."""
        key = self._key(kind, namespace, name)
        old = self.get(kind, namespace, name)
        if old is None:
            return None
        self._rv += 1
        old["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[key].delete()
        self._notify(kind, "DELETED", old, old)
        self._released(old)
        return old

    def owned_by(self, uid: str) -> list[tuple[Kind, dict[str, Any]]]:
        out = []
        for kind in KINDS.values():
            for obj in self.list_objects(kind):
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                    out.append((kind, obj))
        return out

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace: int | None = None,
    ) -> dict[str, Any]:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise _not_found(kind, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        policy = propagation or ("Orphan" if kind is JOB else "Background")
        if policy not in ("Foreground", "Background", "Orphan"):
            raise StatusError(
                422,
                "Invalid",
                f"Unsupported value: {policy!r}: supported values: Foreground, Background, Orphan",
            )
        dependents = self.owned_by(meta["uid"])
        if kind is POD and (obj.get("spec") or {}).get("nodeName") and grace != 0:
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = (
                grace
                if grace is not None
                else (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            )
            return self.replace(kind, obj)  # the kubelet stops the containers, then removes the pod
        if policy == "Foreground" and dependents:
            meta["deletionTimestamp"] = now()
            meta["finalizers"] = [*(meta.get("finalizers") or []), FOREGROUND]
            stored = self.replace(kind, obj)
            for dep_kind, dep in dependents:
                self.delete(
                    dep_kind,
                    dep["metadata"].get("namespace"),
                    dep["metadata"]["name"],
                    propagation="Background",
                )
            return stored
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = now()
            return self.replace(kind, obj)
        self.remove(kind, namespace, name)
        for dep_kind, dep in dependents:
            if policy == "Background":
                self.delete(
                    dep_kind,
                    dep["metadata"].get("namespace"),
                    dep["metadata"]["name"],
                    propagation="Background",
                )
            else:
                dep["metadata"]["ownerReferences"] = [
                    r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != meta["uid"]
                ]
                self.replace(dep_kind, dep)
        return obj

    def _released(self, gone: dict[str, Any]) -> None:
        """A dependent is gone: an owner in foreground deletion with no dependent left goes too."""
        for ref in gone["metadata"].get("ownerReferences") or []:
            kind = next((k for k in KINDS.values() if k.kind == ref.get("kind")), None)
            if kind is None:
                continue
            owner = self.get(kind, gone["metadata"].get("namespace"), ref.get("name", ""))
            if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
                continue
            if FOREGROUND in (owner["metadata"].get("finalizers") or []) and not self.owned_by(
                owner["metadata"]["uid"]
            ):
                owner["metadata"]["finalizers"] = [
                    f for f in owner["metadata"]["finalizers"] if f != FOREGROUND
                ]
                self.replace(kind, owner)

    def _maybe_finalised(self, kind: Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and kind is not POD:
            self.remove(kind, meta.get("namespace"), meta["name"])

    def record_event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "kubelet",
    ) -> dict[str, Any]:
        """A core/v1 Event about `involved`; a repeat (same object, reason, message) bumps the count."""
        meta = involved["metadata"]
        ns = meta.get("namespace") or "default"
        for event in self.list_objects(EVENT, ns):
            io = event.get("involvedObject") or {}
            if (
                io.get("uid") == meta.get("uid")
                and event.get("reason") == reason
                and event.get("message") == message
            ):
                event["count"] = int(event.get("count") or 1) + 1
                event["lastTimestamp"] = now()
                return self.replace(EVENT, event)
        stamp = now()
        return self.create(
            EVENT,
            ns,
            {
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
                "involvedObject": {
                    "kind": involved.get("kind"),
                    "apiVersion": involved.get("apiVersion"),
                    "name": meta["name"],
                    "namespace": ns,
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "count": 1,
                "source": {"component": component},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "reportingComponent": component,
            },
        )

    # --- HTTP --------------------------------------------------------------------------------------

    def _identify(self, headers: Mapping[str, str]) -> Identity | None:
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.get(token.strip())

    def take_violations(self) -> list[Violation]:
        out, self.violations[:] = list(self.violations), []
        return out

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self._tick is None:
            self._tick, self._closing = asyncio.Event(), asyncio.Event()
        params = dict(request.params)
        res = request.resource
        resource_request = res is not None and bool(res.plural)
        verb = _verb(str(request.method.value), request.name, params)
        call = Call(
            user="",
            verb=verb,
            group=res.group if resource_request and res is not None else "",
            resource=(res.plural if resource_request and res is not None else request.url.path) or "",
            subresource=request.subresource,
            namespace=request.namespace,
            name=request.name,
            watch=verb == "watch",
            params=params,
        )
        identity = self._identify(request.headers)
        if identity is None:
            self.violations.append(Violation(call, "no or unknown bearer token"))
            self.calls.append(call)
            return _status(401, "Unauthorized", "Unauthorized")
        call = attrs_evolve(call, user=identity.user)
        if not resource_request:
            self.calls.append(call)
            return await kmock.RawHandler._handle(self, request)
        assert res is not None
        kind = KINDS.get((str(res.group), str(res.plural)))
        if identity.rbac:
            denied = self._denied(call)
            if denied:
                self.violations.append(Violation(call, denied))
                self.calls.append(attrs_evolve(call, status=403))
                return _status(403, "Forbidden", denied, {"name": request.name or "", "kind": res.plural})
        index = len(self.calls)
        self.calls.append(attrs_evolve(call, status=200 if verb == "watch" else 0))  # a watch may never end
        try:
            if kind is None:
                raise StatusError(404, "NotFound", "the server could not find the requested resource")
            response = await self._serve(request, kind, verb, params)
        except StatusError as exc:
            self.calls[index] = attrs_evolve(call, status=exc.code)
            return _status(exc.code, exc.reason, exc.message, exc.details)
        except selectors.SelectorError as exc:
            self.calls[index] = attrs_evolve(call, status=400)
            return _status(400, "BadRequest", str(exc))
        self.calls[index] = attrs_evolve(call, status=response.status)
        return response

    def _denied(self, call: Call) -> str | None:
        where = f'in the namespace "{call.namespace}"' if call.namespace else "at the cluster scope"
        what = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        message = (
            f"{what} {'' if not call.name else repr(call.name).replace(chr(39), chr(34)) + ' '}is forbidden: "
            f'User "{call.user}" cannot {call.verb} resource "{what}" in API group "{call.group}" {where}'
        )
        if call.namespace != self.rbac_namespace:
            return message
        if not any(
            r.allows(call.verb, call.group, call.resource, call.subresource or "", call.name or "")
            for r in self.rules
        ):
            return message
        return None

    async def _serve(
        self, request: kmock.Request, kind: Kind, verb: str, params: dict[str, str]
    ) -> aiohttp.web.StreamResponse:
        ns = request.namespace if kind.namespaced else None
        name = request.name
        sub = request.subresource
        if sub == "log" and kind is POD and verb == "get" and name:
            pod = self.get(POD, ns, name)
            if pod is None:
                raise _not_found(POD, name)
            if self.log_server is None:
                raise StatusError(400, "BadRequest", f'pod "{name}" has no node: no kubelet serves its log')
            raw = request._raw_request
            assert raw is not None
            return await self.log_server(raw, pod, params)
        if sub not in (None, "status"):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if verb == "watch":
            return await self._watch(request, kind, ns, name, params)
        if verb == "list":
            return aiohttp.web.json_response(self._list_body(kind, ns, params))
        if verb == "get" and name:
            obj = self.get(kind, ns, name)
            if obj is None:
                raise _not_found(kind, name)
            return aiohttp.web.json_response(obj)
        if verb == "create" and sub is None:
            if not isinstance(request.data, dict):
                raise StatusError(400, "BadRequest", "the body of the request was in an unknown format")
            return aiohttp.web.json_response(self.create(kind, ns, request.data), status=201)
        if verb == "patch" and name:
            return aiohttp.web.json_response(self._patch(request, kind, ns, name, sub))
        if verb == "update" and name:
            return aiohttp.web.json_response(self._update(request, kind, ns, name, sub))
        if verb == "delete" and name and sub is None:
            body = request.data if isinstance(request.data, dict) else {}
            propagation = body.get("propagationPolicy") or params.get("propagationPolicy")
            if propagation is None and (
                body.get("orphanDependents") is True
                or (params.get("orphanDependents") or "").lower() == "true"
            ):
                propagation = "Orphan"
            grace_raw = body.get("gracePeriodSeconds", params.get("gracePeriodSeconds"))
            grace = int(grace_raw) if grace_raw is not None else None
            return aiohttp.web.json_response(
                self.delete(kind, ns, name, propagation=propagation, grace=grace)
            )
        raise StatusError(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the requested resource ({verb})",
        )

    def _matching(
        self, kind: Kind, ns: str | None, name: str | None, params: Mapping[str, str]
    ) -> Callable[[dict[str, Any]], bool]:
        labels = selectors.label_matcher(params.get("labelSelector"))
        fields = selectors.field_matcher(params.get("fieldSelector"))

        def match(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            if ns is not None and meta.get("namespace") != ns:
                return False
            if name is not None and meta.get("name") != name:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        return match

    def _list_body(self, kind: Kind, ns: str | None, params: Mapping[str, str]) -> dict[str, Any]:
        match = self._matching(kind, ns, None, params)
        items = [o for o in self.list_objects(kind, ns) if match(o)]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        start = int(params.get("continue") or 0)
        limit = int(params.get("limit") or 0)
        if limit > 0:
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta, "items": items}

    def _patch(
        self, request: kmock.Request, kind: Kind, ns: str | None, name: str, sub: str | None
    ) -> dict[str, Any]:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise StatusError(
                415, "UnsupportedMediaType", f"the stand-in applies merge patches only, not {ctype!r}"
            )
        obj = self.get(kind, ns, name)
        if obj is None:
            raise _not_found(kind, name)
        patch = request.data if isinstance(request.data, dict) else {}
        if sub == "status":
            patch = {"status": patch.get("status")}
        else:
            patch.pop("status", None)
        merged = _merge(obj, patch)
        merged["metadata"]["name"], merged["metadata"]["uid"] = name, obj["metadata"]["uid"]
        merged["metadata"]["namespace"] = obj["metadata"].get("namespace")
        return self.replace(kind, merged)

    def _update(
        self, request: kmock.Request, kind: Kind, ns: str | None, name: str, sub: str | None
    ) -> dict[str, Any]:
        obj = self.get(kind, ns, name)
        if obj is None:
            raise _not_found(kind, name)
        new = request.data if isinstance(request.data, dict) else {}
        want = (new.get("metadata") or {}).get("resourceVersion")
        if want and want != obj["metadata"]["resourceVersion"]:
            raise StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        if sub == "status":
            obj["status"] = new.get("status")
        else:
            status = obj.get("status")
            keep = {
                k: obj["metadata"][k]
                for k in ("uid", "creationTimestamp", "namespace", "name")
                if k in obj["metadata"]
            }
            obj = copy.deepcopy(new)
            obj.setdefault("metadata", {}).update(keep)
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            if status is not None:
                obj["status"] = status
        return self.replace(kind, obj)

    async def _watch(
        self, request: kmock.Request, kind: Kind, ns: str | None, name: str | None, params: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        match = self._matching(kind, ns, name, params)
        raw = request._raw_request
        assert raw is not None and self._closing is not None
        loop = asyncio.get_running_loop()
        timeout = params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        since = params.get("resourceVersion") or ""
        if since and since != "0" and not since.isdigit():
            raise StatusError(400, "BadRequest", f"invalid resource version {since!r}")
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = "application/json"
        await response.prepare(raw)

        async def send(type_: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            if not since or since == "0":
                cursor = self._rv
                for obj in sorted(
                    self.list_objects(kind, ns), key=lambda o: int(o["metadata"]["resourceVersion"])
                ):
                    if match(obj):
                        await send("ADDED", obj)
            else:
                cursor = int(since)
                if cursor + 1 < self._oldest_rv:
                    await send(
                        "ERROR",
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": f"too old resource version: {cursor} ({self._oldest_rv - 1})",
                            "reason": "Expired",
                            "code": 410,
                        },
                    )
                    return response
            while not self._closing.is_set():
                pending = [e for e in self._history if e[0] > cursor and e[1] is kind]
                for rv, _k, type_, obj, old in pending:
                    cursor = rv
                    now_in = match(obj)
                    was_in = old is not None and match(old)
                    if type_ == "MODIFIED" and was_in and not now_in:
                        await send("DELETED", obj)
                    elif type_ == "MODIFIED" and now_in and not was_in:
                        await send("ADDED", obj)
                    elif now_in:
                        await send(type_, obj)
                if pending:
                    cursor = max(cursor, pending[-1][0])
                assert self._tick is not None
                tick, closing = (
                    asyncio.ensure_future(self._tick.wait()),
                    asyncio.ensure_future(self._closing.wait()),
                )
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    done, _ = await asyncio.wait(
                        {tick, closing}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for fut in (tick, closing):
                        fut.cancel()
                if not done:
                    break
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        return response

    def close_watches(self) -> None:
        if self._closing is not None:
            self._closing.set()


def attrs_evolve(call: Call, **changes: Any) -> Call:
    from dataclasses import replace

    return replace(call, **changes)
