"""A stand-in for Sourcegraph's frontend, as an executor sees it: the executor queue API, the files
API and git over smart HTTP, answering exactly as Sourcegraph's handlers do, so that corral's
executor can be run against "a Sourcegraph" in tests.

Taken from the public snapshot sourcegraph/sourcegraph-public-snapshot:
- routes and auth: cmd/frontend/internal/executorqueue/queuehandler.go (the /.executors/ router,
  executorAuthMiddleware/validateExecutorToken, jobAuthMiddleware/validateJobRequest: statuses and
  messages), handler/routes.go (only the registered queues `batches` and `codeintel` route);
- one queue: handler/handler.go (HandleDequeue, dequeue with CheckSourcegraphVersion, the job token,
  log entries, mark* with 404 and body `null` for an unknown job, HandleHeartbeat, wrapHandler's
  400 "Failed to unmarshal payload: ..." and 500 {"error": ...});
- several queues: handler/multihandler.go (queues validated against ValidQueueNames, ids answered
  "<id>-<queue>", "queueNames must be set for multi-queue heartbeats");
- the old heartbeat answer (switchable, `old_heartbeat`): a Sourcegraph 4.x server answers a
  heartbeat without "version": "V2" with the bare array of known ids
  (enterprise/cmd/frontend/internal/executorqueue/handler/routes.go, "TODO: Remove in Sourcegraph 4.4");
- the job JSON: internal/executor/types/job.go (MarshalJSON: v2 and v1 payloads, field order,
  `null` for nil lists and maps, `files` always an object, `dockerAuthConfig` always present in
  v2) and its fixtures in job_test.go;
- the version check: lib/api/version_check.go (CheckSourcegraphVersion with date "2022-11-24" and
  the constraint of handler.go/multihandler.go's dequeue: ">= 4.3.0-0" in the newest code, "4.3.0-0"
  in older code, which Masterminds/semver reads as equality; `v2_constraint` picks one, and "dev"
  and "0.0.0+dev" pass either way);
- files: queuehandler.go routes GET/HEAD /.executors/files/batch-changes/{spec}/{file} with job auth
  for queue `batches`;
- git: /.executors/git/{RepoName}/info/refs and /git-upload-pack with job auth for the repository,
  served here by `git http-backend` (the real smart HTTP protocol) from bare repositories.

Where Sourcegraph picks among several non-empty queues at random (weighted), the stand-in takes the
first one named in the request, so tests are deterministic. Every request is recorded (`requests`).
It listens on 127.0.0.1 only (`serve`), or runs in-process behind httpx.ASGITransport (`app`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

VALID_QUEUES = ("batches", "codeintel")  # executortypes.ValidQueueNames
# handler.go / multihandler.go, dequeue: api.CheckSourcegraphVersion(version, <constraint>, "2022-11-24")
V2_CONSTRAINT = ">= 4.3.0-0"  # the newest Sourcegraph
V2_CONSTRAINT_OLD = "4.3.0-0"  # older Sourcegraph: no operator, i.e. "= 4.3.0-0"
V2_MIN_DATE = "2022-11-24"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as json.Marshal writes it
MAX_GIT_BODY = 64 * 1024 * 1024  # bytes of a git request body the stand-in reads
START_TIMEOUT = 10.0  # seconds to wait for the server to listen
GIT_TIMEOUT = 60.0  # seconds one git http-backend call may take

_SEMVER_RE = re.compile(  # Masterminds/semver v1 SemVerRegex, anchored as NewVersion uses it
    r"^v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?$"
)
_BUILD_DATE_RE = re.compile(r"^\d+_(\d{4}-\d{2}-\d{2})_[a-z0-9]{7,}$")


class VersionError(ValueError):
    """Masterminds/semver's ErrInvalidSemVer."""

    def __init__(self) -> None:
        super().__init__("Invalid Semantic Version")


def _semver(v: str) -> tuple[int, int, int, str]:
    m = _SEMVER_RE.match(v)
    if not m:
        raise VersionError
    return int(m[1]), int((m[2] or ".0")[1:]), int((m[3] or ".0")[1:]), m[5] or ""


def _compare(a: tuple[int, int, int, str], b: tuple[int, int, int, str]) -> int:
    """Masterminds/semver's Version.Compare: major, minor, patch, then SemVer 2.0 prerelease
    precedence (no prerelease sorts after any; dot-separated parts, numbers before words)."""
    if a[:3] != b[:3]:
        return 1 if a[:3] > b[:3] else -1
    if a[3] == b[3]:
        return 0
    if not a[3] or not b[3]:
        return 1 if not a[3] else -1
    pa, pb = a[3].split("."), b[3].split(".")
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return 1 if int(x) > int(y) else -1
        if x.isdigit() or y.isdigit():
            return -1 if x.isdigit() else 1
        return 1 if x > y else -1
    return (len(pa) > len(pb)) - (len(pa) < len(pb))


def check_sourcegraph_version(
    version: str, constraint: str = V2_CONSTRAINT, min_date: str = V2_MIN_DATE
) -> bool:
    """lib/api/version_check.go, CheckSourcegraphVersion, for the two constraint forms Sourcegraph's
    dequeue used: ">= X" (constraintGreaterThanEqual; X names a prerelease, so prereleases compare)
    and "X" without operator (constraintTildeOrEqual on a full version: v.Equal(X)). "dev" and
    "0.0.0+dev" are short-circuited to true before either is read."""
    if version in ("dev", "0.0.0+dev"):
        return True
    m = _BUILD_DATE_RE.match(version)
    if m:
        return m[1] >= min_date
    op, _, bound = constraint.strip().rpartition(" ")
    if op not in ("", ">="):
        raise ValueError(f"the stand-in does not model the constraint {constraint!r}")
    diff = _compare(_semver(version), _semver(bound))  # Equal/Compare ignore build metadata
    return diff >= 0 if op == ">=" else diff == 0


@dataclass
class SgFile:
    """A VirtualMachineFile as the frontend holds it (Content is []byte)."""

    content: bytes = b""
    bucket: str = ""
    key: str = ""
    modified_at: str = ZERO_TIME


@dataclass
class SgJob:
    """A record of one of the frontend's queues, with what its transformer makes of it (types.Job)."""

    id: int
    queue: str
    repository_name: str = ""
    repository_directory: str = ""
    commit: str = ""
    fetch_tags: bool = False
    shallow_clone: bool = False
    sparse_checkout: list[str] | None = None
    files: dict[str, SgFile] = field(default_factory=dict)
    docker_steps: list[dict[str, Any]] | None = None
    cli_steps: list[dict[str, Any]] | None = None
    redacted_values: dict[str, str] | None = None
    docker_auths: dict[str, Any] | None = None  # DockerAuthConfig.Auths
    # the dbworker record
    state: str = "queued"
    worker: str = ""
    cancel: bool = False
    failure: str = ""
    version: int = 0  # the payload version it was handed out with
    logs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _go_string(data: bytes) -> str:
    """string(b) as Go's json.Marshal writes it: each byte of invalid UTF-8 becomes U+FFFD."""
    out, i = [], 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                out.append(data[i : i + size].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += size
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def _step(step: dict[str, Any], cli: bool) -> dict[str, Any]:
    """DockerStep / CliStep in field order: key (omitempty), image, commands|command, dir, env."""
    out: dict[str, Any] = {}
    if step.get("key"):
        out["key"] = step["key"]
    if cli:
        out["command"] = step.get("command")
    else:
        out["image"] = step.get("image", "")
        out["commands"] = step.get("commands")
    out["dir"] = step.get("dir", "")
    out["env"] = step.get("env")
    return out


def marshal_job(job: SgJob, *, version2: bool, token: str, with_queue: bool) -> bytes:
    """types.Job.MarshalJSON: the v2Job or v1Job payload, in Go's field order."""
    out: dict[str, Any] = {}
    if version2:
        out["version"] = 2
    out["id"] = job.id
    out["token"] = token
    if with_queue:  # Queue is omitempty: only the several-queue dequeue sets it
        out["queue"] = job.queue
    out.update(
        {
            "repositoryName": job.repository_name,
            "repositoryDirectory": job.repository_directory,
            "commit": job.commit,
            "fetchTags": job.fetch_tags,
            "shallowClone": job.shallow_clone,
            "sparseCheckout": job.sparse_checkout,
        }
    )
    files: dict[str, Any] = {}
    for path, f in job.files.items():
        entry: dict[str, Any] = {}
        if f.content:  # omitempty
            entry["content"] = base64.b64encode(f.content).decode() if version2 else _go_string(f.content)
        if f.bucket:
            entry["bucket"] = f.bucket
        if f.key:
            entry["key"] = f.key
        entry["modifiedAt"] = f.modified_at  # a struct: omitempty never drops it
        files[path] = entry
    out["files"] = files  # make(map, len): {} when empty, never null
    out["dockerSteps"] = None if job.docker_steps is None else [_step(s, False) for s in job.docker_steps]
    out["cliSteps"] = None if job.cli_steps is None else [_step(s, True) for s in job.cli_steps]
    out["redactedValues"] = job.redacted_values
    if version2:  # a struct with omitempty is still written; its auths map is omitempty
        out["dockerAuthConfig"] = {"auths": job.docker_auths} if job.docker_auths else {}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def _http_error(message: str, status: int) -> Response:
    """Go's http.Error: the message and a newline, as text/plain."""
    return PlainTextResponse(message + "\n", status_code=status)


def _json(payload: Any, status: int = 200) -> Response:
    """wrapHandler's answer: the payload marshalled, no body at all for 204."""
    if status == 204:
        return Response(status_code=204)
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status)


class _Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Frontend:
    """The stand-in's state (queues, tokens, executors, files, repositories) and its ASGI app."""

    def __init__(
        self,
        access_token: str,
        *,
        prefix: str = "",
        repos_root: Path | None = None,
        old_heartbeat: bool = False,
        force_version1: bool = False,
        v2_constraint: str = V2_CONSTRAINT,
    ) -> None:
        self.access_token = access_token
        self.prefix = prefix.rstrip("/")
        self.repos_root = repos_root
        self.old_heartbeat = old_heartbeat  # answer heartbeats without "V2" as Sourcegraph 4.x did
        self.force_version1 = force_version1  # a pre-4.3 frontend: every job is v1
        self.v2_constraint = v2_constraint  # V2_CONSTRAINT_OLD: an older frontend's "= 4.3.0-0"
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, int], SgJob] = {}
        self.tokens: dict[str, tuple[int, str, str]] = {}  # token -> (job id, queue, repository)
        self.executors: dict[str, dict[str, Any]] = {}  # hostname -> its last heartbeat's telemetry
        self.files: dict[tuple[str, str], bytes] = {}  # (bucket, key) -> content
        self.requests: list[Recorded] = []
        self.app = Starlette(routes=self._routes())

    # -- what tests set up and look at ---------------------------------------------------------
    def enqueue(self, job: SgJob) -> SgJob:
        with self.lock:
            self.jobs[(job.queue, job.id)] = job
        return job

    def job(self, queue: str, job_id: int) -> SgJob:
        with self.lock:
            return self.jobs[(queue, job_id)]

    def request_cancel(self, queue: str, job_id: int) -> None:
        """The user canceled the job: the next heartbeat names it in cancelIds."""
        with self.lock:
            self.jobs[(queue, job_id)].cancel = True

    def give_away(self, queue: str, job_id: int, other: str = "another-executor") -> None:
        """The resetter took the job back and another executor dequeued it: it is no longer the
        first executor's (missing from its knownIds; its marks get 404)."""
        with self.lock:
            self.jobs[(queue, job_id)].worker = other

    def recorded(self, suffix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    # -- routing -------------------------------------------------------------------------------
    def _routes(self) -> list[BaseRoute]:
        queues = "|".join(VALID_QUEUES)
        routes: list[BaseRoute] = [
            Route("/.executors/test/auth", self._test_auth, methods=["GET"]),
            Route("/.executors/queue/dequeue", self._dequeue_many, methods=["POST"]),
            Route("/.executors/queue/heartbeat", self._heartbeat_many, methods=["POST"]),
            Route("/.executors/queue/{queue}/dequeue", self._dequeue_one, methods=["POST"]),
            Route("/.executors/queue/{queue}/heartbeat", self._heartbeat_one, methods=["POST"]),
            Route("/.executors/queue/{queue}/{op}", self._job_op, methods=["POST"]),
            Route("/.executors/files/batch-changes/{spec}/{file}", self._file, methods=["GET", "HEAD"]),
            Route("/.executors/git/{repo:path}/info/refs", self._git, methods=["GET"]),
            Route("/.executors/git/{repo:path}/git-upload-pack", self._git, methods=["POST"]),
        ]
        self._queue_re = re.compile(f"^(?:{queues})$")
        return [Mount(self.prefix, routes=routes)] if self.prefix else routes

    async def _record(self, request: Request) -> Any:
        raw = await request.body() if request.method == "POST" else b""
        try:
            body: Any = json.loads(raw) if raw and "git" not in request.url.path else None
        except ValueError:
            body = raw
        with self.lock:
            self.requests.append(Recorded(request.method, request.url.path, dict(request.headers), body))
        return body

    # -- auth (queuehandler.go) ----------------------------------------------------------------
    def _executor_auth(self, request: Request) -> None:
        """validateExecutorToken."""
        if not self.access_token:
            raise _Denied(_http_error("Executors are not configured on this instance", 500))
        token = ""
        header = request.headers.get("authorization", "")
        if header:
            parts = header.split(" ")
            if len(parts) != 2:
                raise _Denied(
                    _http_error(
                        "HTTP Authorization request header value must be of the following form: "
                        "'token-executor \"TOKEN\"'",
                        401,
                    )
                )
            if parts[0] != "token-executor":
                raise _Denied(
                    _http_error(
                        "unrecognized HTTP Authorization request header scheme "
                        '(supported values: "token-executor")',
                        401,
                    )
                )
            token = parts[1]
        if not token:
            raise _Denied(
                _http_error(
                    "no token value in the HTTP Authorization request header (recommended) or basic auth "
                    "(deprecated)",
                    401,
                )
            )
        if not hmac.compare_digest(token.encode(), self.access_token.encode()):
            raise _Denied(Response(status_code=401))

    def _job_auth(self, request: Request, *, queue: str = "", repo: str = "") -> None:
        """validateJobRequest for a route of `queue` (files: batches) or of repository `repo` (git)."""
        kind, token = "", ""
        header = request.headers.get("authorization", "")
        if header:
            parts = header.split(" ")
            if len(parts) != 2:
                raise _Denied(
                    _http_error(
                        "HTTP Authorization request header value must be of the following form: "
                        "'Bearer \"TOKEN\"' or 'token-executor TOKEN'",
                        401,
                    )
                )
            kind, token = parts
            if kind not in ("Bearer", "token-executor"):
                raise _Denied(
                    _http_error(
                        "unrecognized HTTP Authorization request header scheme "
                        '(supported values: "Bearer", "token-executor")',
                        401,
                    )
                )
        if not token:
            raise _Denied(_http_error("no token value in the HTTP Authorization request header", 401))
        if kind == "token-executor":
            if hmac.compare_digest(token.encode(), self.access_token.encode()):
                return
            raise _Denied(Response(status_code=403))
        raw_id = request.headers.get("x-sourcegraph-job-id", "")
        if not raw_id:
            raise _Denied(_http_error("job ID not provided in header 'X-Sourcegraph-Job-ID'", 400))
        if not re.fullmatch(r"[+-]?[0-9]+", raw_id):
            raise _Denied(
                _http_error(f'failed to parse Job ID: strconv.Atoi: parsing "{raw_id}": invalid syntax', 400)
            )
        executor = request.headers.get("x-sourcegraph-executor-name", "")
        if not executor:
            raise _Denied(_http_error("worker hostname cannot be empty", 400))
        with self.lock:
            found = self.tokens.get(token)
            known_executor = executor in self.executors
        if found is None:
            raise _Denied(_http_error("invalid token", 401))
        job_id, job_queue, job_repo = found
        if job_id != int(raw_id):
            raise _Denied(_http_error("invalid token", 403))
        if (repo and job_repo != repo) or (not repo and job_queue != queue):
            raise _Denied(_http_error("invalid token", 403))
        if not known_executor:
            raise _Denied(_http_error("invalid token", 401))

    # -- executor routes -----------------------------------------------------------------------
    async def _test_auth(self, request: Request) -> Response:
        await self._record(request)
        try:
            self._executor_auth(request)
        except _Denied as d:
            return d.response
        return PlainTextResponse("ok")

    async def _decode(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            msg = "EOF" if not raw.strip() else str(exc)
            raise _Denied(_http_error(f"Failed to unmarshal payload: {msg}", 400)) from None
        if not isinstance(body, dict):
            raise _Denied(_http_error("Failed to unmarshal payload: not an object", 400))
        return body

    def _version2(self, version: Any) -> bool:
        if self.force_version1 or not version:
            return False
        try:
            return check_sourcegraph_version(str(version), self.v2_constraint)
        except VersionError as exc:
            raise _Denied(
                _json({"error": f"failed to check version {json.dumps(version)}: {exc}"}, 500)
            ) from None

    def _take(self, queues: list[str], executor: str, version2: bool, with_queue: bool) -> Response:
        with self.lock:
            for q in queues:
                waiting = sorted(
                    (j for j in self.jobs.values() if j.queue == q and j.state == "queued"),
                    key=lambda j: j.id,
                )
                if not waiting:
                    continue
                job = waiting[0]
                job.state, job.worker, job.version = "processing", executor, 2 if version2 else 1
                for t, (i, jq, _r) in list(self.tokens.items()):  # Create, or Regenerate if it exists
                    if (i, jq) == (job.id, job.queue):
                        del self.tokens[t]
                token = secrets.token_hex(20)
                self.tokens[token] = (job.id, job.queue, job.repository_name)
                return Response(marshal_job(job, version2=version2, token=token, with_queue=with_queue))
        return Response(status_code=204)

    async def _dequeue_one(self, request: Request) -> Response:
        await self._record(request)
        queue = request.path_params["queue"]
        if not self._queue_re.match(queue):
            return _http_error("404 page not found", 404)
        try:
            self._executor_auth(request)
            body = await self._decode(request)
            if not body.get("executorName"):
                return _json({"error": "worker hostname cannot be empty"}, 500)
            version2 = self._version2(body.get("version", ""))
        except _Denied as d:
            return d.response
        return self._take([queue], body["executorName"], version2, with_queue=False)

    async def _dequeue_many(self, request: Request) -> Response:
        await self._record(request)
        try:
            self._executor_auth(request)
            body = await self._decode(request)
            if not body.get("executorName"):
                return _json({"error": "worker hostname cannot be empty"}, 500)
            version2 = self._version2(body.get("version", ""))
        except _Denied as d:
            return d.response
        queues = body.get("queues") or []
        if not queues:
            return Response(status_code=204)
        invalid = [q for q in queues if q not in VALID_QUEUES]
        if invalid:
            message = (
                f"Invalid queue name(s) '{', '.join(invalid)}' found. "
                f"Supported queue names are '{', '.join(VALID_QUEUES)}'."
            )
            return _json({"error": message}, 500)
        return self._take(queues, body["executorName"], version2, with_queue=True)

    def _upsert(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.executors[body["executorName"]] = body

    def _known(self, queue: str, ids: list[Any], executor: str) -> tuple[list[str], list[str]]:
        """dbworker Store.Heartbeat: the ids that are processing and this executor's, and which of
        them are to be canceled."""
        known, cancel = [], []
        with self.lock:
            for raw in ids:
                job = self.jobs.get((queue, int(float(raw)) if not isinstance(raw, str) else int(raw)))
                if job is not None and job.state == "processing" and job.worker == executor:
                    known.append(str(job.id))
                    if job.cancel:
                        cancel.append(str(job.id))
        return known, cancel

    async def _heartbeat_one(self, request: Request) -> Response:
        await self._record(request)
        queue = request.path_params["queue"]
        if not self._queue_re.match(queue):
            return _http_error("404 page not found", 404)
        try:
            self._executor_auth(request)
            body = await self._decode(request)
        except _Denied as d:
            return d.response
        if not body.get("executorName"):
            return _json({"error": "worker hostname cannot be empty"}, 500)
        self._upsert(body)
        known, cancel = self._known(queue, body.get("jobIds") or [], body["executorName"])
        if self.old_heartbeat and body.get("version") != "V2":
            return _json([int(i) for i in known] or None)  # 4.x: `return http.StatusOK, knownIDs, err`
        return _json({"knownIds": known or None, "cancelIds": cancel or None})

    async def _heartbeat_many(self, request: Request) -> Response:
        await self._record(request)
        try:
            self._executor_auth(request)
            body = await self._decode(request)
        except _Denied as d:
            return d.response
        if not body.get("executorName"):
            return _json({"error": "worker hostname cannot be empty"}, 500)
        names = body.get("queueNames") or []
        if not names:
            return _json({"error": "queueNames must be set for multi-queue heartbeats"}, 500)
        groups = body.get("jobIdsByQueue") or []
        invalid = [g.get("queueName", "") for g in groups if g.get("queueName") not in names]
        if invalid:
            return _json(
                {
                    "error": f"unsupported queue name(s) '{', '.join(invalid)}' submitted in queueJobIds, "
                    f"executor is configured for queues '{', '.join(names)}'"
                },
                500,
            )
        self._upsert(body)
        known_all: list[str] = []
        cancel_all: list[str] = []
        for g in groups:
            known, cancel = self._known(g["queueName"], g.get("jobIds") or [], body["executorName"])
            known_all += [f"{i}-{g['queueName']}" for i in known]
            cancel_all += [f"{i}-{g['queueName']}" for i in cancel]
        return _json({"knownIds": known_all or None, "cancelIds": cancel_all or None})

    # -- job routes ----------------------------------------------------------------------------
    async def _job_op(self, request: Request) -> Response:
        await self._record(request)
        queue, op = request.path_params["queue"], request.path_params["op"]
        ops = ("addExecutionLogEntry", "updateExecutionLogEntry", "markComplete", "markErrored", "markFailed")
        if not self._queue_re.match(queue) or op not in ops:
            return _http_error("404 page not found", 404)
        try:
            self._job_auth(request, queue=queue)
            body = await self._decode(request)
        except _Denied as d:
            return d.response
        executor, job_id = body.get("executorName", ""), body.get("jobId")
        with self.lock:
            job = self.jobs.get((queue, job_id)) if isinstance(job_id, int) else None
            owned = job is not None and job.state == "processing" and job.worker == executor
            if op == "addExecutionLogEntry":
                if not owned:
                    return _json({"error": "unknown job"}, 500)
                assert job is not None
                job.logs.append({k: v for k, v in body.items() if k not in ("executorName", "jobId")})
                return _json(len(job.logs))
            if op == "updateExecutionLogEntry":
                entry = body.get("entryId")
                if not owned or not isinstance(entry, int) or not 1 <= entry <= len(job.logs):  # type: ignore[union-attr]
                    return _json({"error": "unknown job"}, 500)
                assert job is not None
                job.logs[entry - 1] = {
                    k: v for k, v in body.items() if k not in ("executorName", "jobId", "entryId")
                }
                return _json(None, 204)
            if not owned:
                return _json(None, 404)
            assert job is not None
            if op == "markComplete":
                job.state = "completed"
            else:
                job.failure = body.get("errorMessage", "")
                job.state = "canceled" if job.cancel else ("errored" if op == "markErrored" else "failed")
            for t, (i, jq, _r) in list(self.tokens.items()):  # jobTokenStore.Delete
                if (i, jq) == (job.id, job.queue):
                    del self.tokens[t]
        return _json(None, 204)

    async def _file(self, request: Request) -> Response:
        await self._record(request)
        try:
            self._job_auth(request, queue="batches")
        except _Denied as d:
            return d.response
        key = f"{request.path_params['spec']}/{request.path_params['file']}"
        with self.lock:
            content = self.files.get(("batch-changes", key))
        if content is None:
            return _http_error("file does not exist", 404)
        if request.method == "HEAD":
            return Response(status_code=200)
        return Response(content, media_type="application/octet-stream")

    async def _git(self, request: Request) -> Response:
        await self._record(request)
        repo = request.path_params["repo"]
        try:
            self._job_auth(request, repo=repo)
        except _Denied as d:
            return d.response
        if self.repos_root is None:
            return _http_error("no repositories", 404)
        body = await request.body()
        if len(body) > MAX_GIT_BODY:
            return _http_error("request too large", 413)
        service = request.url.path.rsplit("/", 1)[-1] if request.method == "POST" else "info/refs"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/nonexistent",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": str(self.repos_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": f"/{repo}/{service}",
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _err = await asyncio.wait_for(proc.communicate(body), GIT_TIMEOUT)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return Response(payload, status_code=status, headers=headers)


@contextlib.contextmanager
def serve(frontend: Frontend) -> Iterator[str]:
    """Listen on 127.0.0.1 (a free port) in a thread; yields the frontend's URL, prefix included."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            frontend.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, name="sg-frontend", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Sourcegraph stand-in did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}{frontend.prefix}"
    finally:
        server.should_exit = True
        thread.join(10)


def bare_repo(root: Path, name: str, files: dict[str, str]) -> str:
    """A bare repository `name` below root (as the stand-in's git serves it) with one commit of
    `files`; returns the commit."""
    import subprocess

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    work = root / ".work" / name
    work.mkdir(parents=True)

    def git(*args: str, cwd: Path = work) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q", "-b", "main")
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git("add", "-A")
    git("commit", "-qm", "one")
    commit = git("rev-parse", "HEAD").strip()
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(target), cwd=root)
    # allow fetching a commit by id (the executor fetches `origin <commit>`)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=target)
    os.sync()
    return commit
