"""The executor's HTTP client of the queue and files APIs: auth headers, retries, extension discovery.

Transient failures (connection errors, 5xx, 429) are retried with exponential backoff for a bounded
time; any other 4xx is final and raised as ServerError with the server's message.

Every answer is hostile until decoded: it is read streaming and at most its bound (MAX_ANSWER,
MAX_DEQUEUE_ANSWER; an error answer's first ERROR_BODY bytes), and anything malformed, JSON nested
past Python's recursion limit included, is a ServerError naming the call (`_answer`), never an
exception that ends a loop of the worker.

Which server it talks to: a response carrying X-Corral-Extensions comes from corral's server
(`server_is_corral`); anything else is treated as Sourcegraph's frontend. That decides the version
sent at dequeue (see SOURCEGRAPH_PROTOCOL_VERSION) and, in the handler, which CLI runs CLI steps.

Running jobs are keyed `<id>-<queue>` everywhere (`job_key`), as Sourcegraph's worker keys them
(`Job.RecordUID` in internal/executor/types/job.go): ids are only unique per queue.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from corral import __version__
from corral.errors import ServerError, StaleAttempt, VersionSkew
from corral.executor.settings import ExecutorSettings
from corral.executor.telemetry import TELEMETRY_KEYS
from corral.protocol import (
    EXECUTOR_NAME_HEADER,
    EXTENSIONS_HEADER,
    JOB_ID_HEADER,
    LOG_MAX_BYTES_HEADER,
    Job,
    KnownLogEntry,
    ReattachResponse,
)
from corral.protocol.versions import (
    MAX_VERSION_CHARS,
    SKEW_RULE,
    VERSION_HEADER,
    InvalidVersion,
    skew_problem,
)
from corral.units import format_size

__all__ = ["MAX_ANSWER", "MAX_DEQUEUE_ANSWER", "SOURCEGRAPH_PROTOCOL_VERSION", "QueueClient", "job_key"]

# The version a corral executor sends at dequeue to a server that is not corral's. Sourcegraph's
# frontend answers with a v2 job (base64 file contents, dockerAuthConfig) only when
# `api.CheckSourcegraphVersion(version, constraint, "2022-11-24")` holds (cmd/frontend/internal/
# executorqueue/handler/handler.go and multihandler.go, dequeue; lib/api/version_check.go). The
# newest Sourcegraph passes the constraint ">= 4.3.0-0", so any release from 4.3.0 on (5.2.0
# too) gets v2 there; older code wrote "4.3.0-0" without an operator, which Masterminds/semver
# reads as "=", so there only 4.3.0-0 itself does. version_check.go, in every version, answers
# true for "dev" and "0.0.0+dev" before it reads the constraint or the build-date rule: that is
# why the development version is sent. It is the one string that gets v2 jobs from every
# Sourcegraph version, and corral, being no Sourcegraph release, claims no release number or
# build date. corral's own server gets corral's real version (it checks version skew against it).
SOURCEGRAPH_PROTOCOL_VERSION = "0.0.0+dev"
# The heartbeat's "version" field: "V2" asks a Sourcegraph 4.x server for the object answer
# ({"knownIds", "cancelIds"}) instead of the bare array of known ids (queue/client.go, Heartbeat).
HEARTBEAT_API_V2 = "V2"
FILES_PATH = "/.executors/files"  # Sourcegraph's files API (apiclient/files/client.go)
FILE_CHUNK = 64 * 1024  # bytes read from the files API at a time
ERROR_BODY = 2000  # bytes of an error answer kept for the message
MAX_ANSWER = 16 * 1024 * 1024  # bytes of an answer read at most (heartbeat, cancelWatch, log entries)
# bytes of a dequeue answer read at most: a job carries up to 32 MiB of files (base64 in the JSON,
# corral.protocol.producer.MAX_FILES_BYTES) plus its redacted values and steps, so its bound is the
# server's default request body bound (max_body_bytes), the most a job could have been submitted as.
MAX_DEQUEUE_ANSWER = 64 * 1024 * 1024


def job_key(job: Job) -> str:
    """The job's key in the running set, heartbeats and cancels: `<id>-<queue>` (RecordUID)."""
    return f"{job.id}-{job.queue}"


CONNECT_TIMEOUT = 10.0  # seconds
REQUEST_TIMEOUT = 30.0  # seconds, beyond any long-poll wait
RETRY_FOR = 60.0  # seconds a job-scoped call keeps retrying a failing server
RETRY_MAX_WAIT = 5.0  # seconds between two tries at most
REATTACH_RETRY_FOR = 5.0  # seconds a reattach retries a failing server (the lease's stall window is short)


@dataclass(frozen=True)
class Answer:
    """A server's answer, read whole but never past its bound (see QueueClient._send). For a
    status >= 400, `content` is its first ERROR_BODY bytes."""

    status: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content[:ERROR_BODY].decode("utf-8", "replace").strip()


async def _read_head(r: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of the body (the rest is never read)."""
    head = bytearray()
    async for chunk in r.aiter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return bytes(head[:limit])


async def _read_at_most(r: httpx.Response, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed `limit` bytes (its Content-Length,
    else the decoded bytes read so far): memory is never spent past the bound."""
    length = r.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for chunk in r.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return (
        isinstance(exc, ServerError) and exc.status is not None and (exc.status >= 500 or exc.status == 429)
    )


class QueueClient:
    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_for: float = RETRY_FOR,
    ) -> None:
        self.settings = settings
        self.extensions: frozenset[str] = frozenset()
        self.server_is_corral = False  # set by the first answer that carries X-Corral-Extensions
        self.log_max_bytes: int | None = None  # the server's cap of one log entry (X-Corral-Log-Max-Bytes)
        self.server_version: str | None = None  # a corral server's version (X-Corral-Version)
        self.retry_for = retry_for
        self.http = httpx.AsyncClient(
            base_url=settings.frontend_url,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            transport=transport,
            headers={"User-Agent": f"corral-executor/{__version__}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def has(self, ext: str) -> bool:
        return self.settings.extensions and ext in self.extensions

    @property
    def dequeue_version(self) -> str:
        """The version sent at dequeue: corral's own to corral's server, else the one that makes
        Sourcegraph hand out v2 jobs (SOURCEGRAPH_PROTOCOL_VERSION)."""
        return __version__ if self.server_is_corral else SOURCEGRAPH_PROTOCOL_VERSION

    def _seen(self, r: httpx.Response) -> None:
        if ext := r.headers.get(EXTENSIONS_HEADER):
            self.extensions = frozenset(x.strip() for x in ext.split(","))
            self.server_is_corral = True
        if (cap := r.headers.get(LOG_MAX_BYTES_HEADER, "")).isdigit() and len(cap) < 19:
            self.log_max_bytes = int(cap)
        if (version := r.headers.get(VERSION_HEADER)) is not None:
            self.server_version = version[:MAX_VERSION_CHARS]

    def check_server_version(self) -> None:
        """The version-skew rule against a corral server that said its version (VERSION_HEADER):
        VersionSkew naming both versions and the rule. Checked on the answers of the start-up ping
        (a heartbeat) and of every dequeue, before a job is taken; a Sourcegraph frontend says no
        version and keeps Sourcegraph's rules (the dequeue's `version`)."""
        if self.server_version is None:
            return
        try:
            problem = skew_problem(__version__, self.server_version)
        except InvalidVersion:
            problem = (
                f"the server's version {self.server_version[:80]!r} is not a version (executor version "
                f"{__version__}): {SKEW_RULE}"
            )
        if problem:
            raise VersionSkew(f"refusing to work for this server: {problem}")

    # -- plumbing -----------------------------------------------------------------------------
    def _executor_headers(self) -> dict[str, str]:
        return {"Authorization": f"token-executor {self.settings.frontend_password}"}

    def _job_headers(self, job: Job) -> dict[str, str]:
        # As Sourcegraph's BaseClient.addHeaders (cmd/executor/internal/apiclient/baseclient.go): the
        # job token, or the executor token for a server that issues none, and always both headers.
        auth = f"Bearer {job.token}" if job.token else f"token-executor {self.settings.frontend_password}"
        return {"Authorization": auth, JOB_ID_HEADER: str(job.id), EXECUTOR_NAME_HEADER: self.settings.name}

    async def _send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        timeout: float | None = None,
        limit: int = MAX_ANSWER,
    ) -> Answer:
        """One request; its answer read streaming and at most `limit` bytes (ServerError past it;
        an error status keeps only the first ERROR_BODY bytes)."""
        kw: dict[str, Any] = {"json": body, "headers": headers}
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        r = await self.http.send(self.http.build_request(method, path, **kw), stream=True)
        try:
            self._seen(r)
            if r.status_code >= 400:
                return Answer(r.status_code, await _read_head(r, ERROR_BODY))
            content = await _read_at_most(r, limit)
        finally:
            await r.aclose()
        if content is None:
            raise ServerError(f"{path}: the server's answer is larger than {limit} bytes, this call's bound")
        return Answer(r.status_code, content)

    async def _once(
        self, path: str, body: Any, headers: dict[str, str], timeout: float | None, limit: int
    ) -> Answer:
        a = await self._send("POST", path, body, headers, timeout, limit)
        if a.status >= 400:
            try:
                payload = a.json()
                msg = payload.get("error", a.text) if isinstance(payload, dict) else a.text
            except (ValueError, RecursionError):  # not JSON (or a cut one), or nested too deeply
                payload, msg = None, a.text
            if a.status == 409:
                offset = payload.get("offset") if isinstance(payload, dict) else None
                raise StaleAttempt(f"{path}: {msg}", offset=offset)
            raise ServerError(f"{path}: {a.status} {msg}".strip(), status=a.status)
        return a

    def _retrying(self, retry_for: float | None) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.retry_for if retry_for is None else retry_for),
            wait=wait_exponential(multiplier=0.2, max=RETRY_MAX_WAIT),
            reraise=True,
        )

    async def _post(
        self,
        path: str,
        body: Any,
        headers: dict[str, str],
        *,
        timeout: float | None = None,
        retry_for: float | None = None,
        limit: int = MAX_ANSWER,
    ) -> Answer:
        retrying = self._retrying(retry_for)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(path, body, headers, timeout, limit)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.settings.frontend_url}: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _answer(self, what: str) -> Iterator[None]:
        """Decode a server answer: anything malformed (not JSON, JSON nested too deeply for Python's
        decoder, wrong shape, bad ids) is a ServerError naming the call, so no loop of the worker
        dies of a library error."""
        try:
            yield
        except RecursionError:  # json.loads of e.g. 100000 "[": Go's decoder refuses it too (depth 10000)
            raise ServerError(f"the server's answer to {what} is JSON nested too deeply") from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # JSON, pydantic, shapes
            raise ServerError(f"the server's answer to {what} is not what the protocol says: {exc}") from exc

    def _queue_path(self, job: Job, op: str) -> str:
        queue = job.queue or self.settings.queues[0]
        return f"/.executors/queue/{queue}/{op}"

    def _op(self, job: Job, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"executorName": self.settings.name, "jobId": job.id, **extra}
        if self.has("fencing") and job.attempt is not None:
            body["attempt"] = job.attempt
        return body

    # -- executor-scoped calls ----------------------------------------------------------------
    async def test_auth(self) -> None:
        try:
            a = await self._send("GET", "/.executors/test/auth", None, self._executor_headers())
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.settings.frontend_url}: {exc!r}") from exc
        if a.status != 200:
            raise ServerError(f"auth check failed: {a.status} {a.text}", status=a.status)

    async def dequeue(self, wait: float = 0.0) -> Job | None:
        s = self.settings
        # types.DequeueRequest (internal/executor/types/http.go): numCPUs, memory and diskSpace are
        # omitempty; memory and diskSpace are the operator's size strings (Sourcegraph sends its raw
        # EXECUTOR_JOB_MEMORY and EXECUTOR_FIRECRACKER_DISK_SPACE; its codeintel queue parses them
        # with datasize, 1024-based, into VM_MEM/VM_DISK). Here they are the configured sizes in
        # that notation ("12G" stays "12G"; 0, unbounded, is "0").
        body: dict[str, Any] = {"executorName": s.name, "version": self.dequeue_version}
        if int(s.job_num_cpus):
            body["numCPUs"] = int(s.job_num_cpus)
        body["memory"] = format_size(s.job_memory)
        body["diskSpace"] = format_size(s.job_disk_space)
        wait = wait if self.has("longpoll") else 0.0
        if wait > 0:
            body["waitSeconds"] = wait
        if s.multi_queue:
            body["queues"] = s.queues
            path = "/.executors/queue/dequeue"
        else:
            path = f"/.executors/queue/{s.queues[0]}/dequeue"
        r = await self._post(
            path,
            body,
            self._executor_headers(),
            timeout=wait + REQUEST_TIMEOUT,
            retry_for=0,
            limit=MAX_DEQUEUE_ANSWER,
        )
        self.check_server_version()  # a job a skewed server hands out is not run (the resetter requeues it)
        if r.status == 204 or not r.content:
            return None
        with self._answer("dequeue"):
            job = Job.model_validate(r.json())
        if not job.queue and not s.multi_queue:
            job.queue = s.queues[0]  # a one-queue answer may leave it out (Sourcegraph's does)
        if job.queue not in s.queues:
            # The queue names the routes of every later call and the job's directory on this host:
            # only a queue this executor asked for is taken (the job is not run; never heartbeated,
            # the server's resetter requeues it).
            raise ServerError(
                f"the server answered the dequeue with job {job.id} of queue {str(job.queue)[:80]!r}, "
                f"which this executor does not serve ({', '.join(s.queues)}); not running it"
            )
        return job

    async def heartbeat(self, jobs: list[Job], telemetry: dict[str, str]) -> tuple[set[str], set[str]]:
        """Renew leases; returns (keys the server still considers ours, keys to cancel), as
        `job_key`s. The body is Sourcegraph's (cmd/executor/internal/apiclient/queue/client.go,
        Heartbeat): one queue sends `HeartbeatRequestV1` ("version": "V2", int jobIds, null when
        there are none, as Go marshals a nil slice); several queues send `HeartbeatRequest` ("version"
        left "", jobIdsByQueue only for queues with jobs, sorted by queue, omitted when empty)."""
        s = self.settings
        body: dict[str, Any] = {"executorName": s.name}
        if s.multi_queue:
            body["version"] = ""
            groups = sorted({j.queue or s.queues[0] for j in jobs})
            if groups:
                body["jobIdsByQueue"] = [
                    {"queueName": q, "jobIds": [str(j.id) for j in jobs if (j.queue or s.queues[0]) == q]}
                    for q in groups
                ]
            body["queueNames"] = s.queues
            path = "/.executors/queue/heartbeat"
        else:
            body["version"] = HEARTBEAT_API_V2
            body["jobIds"] = [j.id for j in jobs] or None
            path = f"/.executors/queue/{s.queues[0]}/heartbeat"
        for k in TELEMETRY_KEYS:
            body[k] = telemetry.get(k, "")
        body.update({k: v for k, v in telemetry.items() if k not in body})  # corral's extensions
        r = await self._post(path, body, self._executor_headers(), retry_for=0)
        self.check_server_version()
        with self._answer("heartbeat"):
            known, cancel = _heartbeat_ids(r.content)
            return {self._key(i) for i in known}, {self._key(i) for i in cancel}

    def _key(self, wire_id: str) -> str:
        """A heartbeat answer's id as a job key: the one-queue answer names bare ids ("7"), the
        several-queue one "<id>-<queue>" (multihandler.go appends the queue)."""
        head, dash, queue = wire_id.partition("-")
        if not re.fullmatch(r"[0-9]{1,18}", head) or (dash and not queue):
            raise ValueError(f"{wire_id!r} is not a job id")
        if not dash:
            if self.settings.multi_queue:
                raise ValueError(f"{wire_id!r} names no queue (several queues answer <id>-<queue>)")
            queue = self.settings.queues[0]
        return f"{int(head)}-{queue}"

    async def cancel_watch(self, job_ids: list[int], wait: float) -> set[int]:
        body = {"executorName": self.settings.name, "jobIds": job_ids, "waitSeconds": wait}
        r = await self._post(
            "/.executors/queue/cancelWatch",
            body,
            self._executor_headers(),
            timeout=wait + REQUEST_TIMEOUT,
            retry_for=0,
        )
        with self._answer("cancelWatch"):
            return {int(x) for x in (r.json().get("cancelIds") or [])}

    async def reattach(self, queue: str, job_id: int, attempt: int) -> tuple[Job, list[KnownLogEntry]] | None:
        """corral's reattach: the job attempt this executor (by name) held before it restarted, with
        a fresh job token and the attempt's log entries as the server has them; None when the
        server no longer gives it to us (409: canceled, requeued, another executor's; 404: unknown)."""
        body = {"executorName": self.settings.name, "jobId": job_id, "attempt": attempt}
        try:
            r = await self._post(
                f"/.executors/queue/{queue}/reattach",
                body,
                self._executor_headers(),
                retry_for=REATTACH_RETRY_FOR,
                limit=MAX_DEQUEUE_ANSWER,
            )
        except StaleAttempt:
            return None
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise
        with self._answer("reattach"):
            answer = ReattachResponse.model_validate(r.json())
        job = answer.job
        if (job.id, job.attempt, job.queue) != (job_id, attempt, queue):
            raise ServerError(f"the server answered the reattach of job {job_id} with another job attempt")
        return job, answer.entries

    # -- job-scoped calls ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def fetch_file(
        self, job: Job, bucket: str, key: str
    ) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        """GET <frontend>/.executors/files/<bucket>/<key> with the job's headers, as Sourcegraph's
        files client (cmd/executor/internal/apiclient/files/client.go, Get); yields (the announced
        Content-Length or None, the body as chunks). A status other than 200 is a ServerError
        (Sourcegraph: "unexpected status code"); connection errors and 5xx are retried before any
        byte arrives. The caller bounds the size."""
        path = f"{FILES_PATH}/{_path_segment(bucket)}/{'/'.join(_path_segment(p) for p in key.split('/'))}"
        headers = self._job_headers(job)
        try:
            async for attempt in self._retrying(None):
                with attempt:
                    request = self.http.build_request("GET", path, headers=headers)
                    r = await self.http.send(request, stream=True)
                    self._seen(r)
                    if r.status_code != 200:
                        head = await _read_head(r, ERROR_BODY)  # the server's message, bounded
                        await r.aclose()
                        text = head.decode("utf-8", "replace").strip()
                        raise ServerError(f"GET {path}: {r.status_code} {text}".strip(), status=r.status_code)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.settings.frontend_url}: {exc!r}") from exc
        length = r.headers.get("content-length", "")
        try:
            yield (int(length) if length.isdigit() else None), r.aiter_bytes(FILE_CHUNK)
        except httpx.HTTPError as exc:
            raise ServerError(f"GET {path}: the download broke off: {exc!r}") from exc
        finally:
            await r.aclose()

    async def add_log_entry(
        self, job: Job, key: str, command: list[str], start_time: str, out: str = ""
    ) -> int:
        body = self._op(job, key=key, command=command, startTime=start_time, out=out)
        r = await self._post(self._queue_path(job, "addExecutionLogEntry"), body, self._job_headers(job))
        with self._answer("addExecutionLogEntry"):
            return int(r.json())

    async def update_log_entry(
        self,
        job: Job,
        entry_id: int,
        key: str,
        command: list[str],
        start_time: str,
        out: str,
        exit_code: int | None = None,
        duration_ms: int | None = None,
    ) -> None:
        body = self._op(job, entryId=entry_id, key=key, command=command, startTime=start_time, out=out)
        if exit_code is not None:
            body["exitCode"] = exit_code
            body["durationMs"] = duration_ms or 0
        await self._post(self._queue_path(job, "updateExecutionLogEntry"), body, self._job_headers(job))

    async def append_log(
        self,
        job: Job,
        entry_id: int,
        offset: int,
        data: str,
        exit_code: int | None = None,
        duration_ms: int | None = None,
    ) -> int:
        body = self._op(job, entryId=entry_id, offset=offset, data=data)
        if exit_code is not None:
            body["exitCode"] = exit_code
            body["durationMs"] = duration_ms or 0
        r = await self._post(self._queue_path(job, "appendExecutionLogEntry"), body, self._job_headers(job))
        with self._answer("appendExecutionLogEntry"):
            return int(r.json()["offset"])

    async def upload_result(
        self, job: Job, exit_codes: list[int], diff: str, files: dict[str, str], outcome: str
    ) -> None:
        body = self._op(job, exitCodes=exit_codes, diff=diff, files=files, outcome=outcome)
        await self._post(self._queue_path(job, "uploadResult"), body, self._job_headers(job))

    async def mark_complete(self, job: Job) -> None:
        await self._post(self._queue_path(job, "markComplete"), self._op(job), self._job_headers(job))

    async def mark_errored(self, job: Job, message: str) -> None:
        body = self._op(job, errorMessage=message)
        await self._post(self._queue_path(job, "markErrored"), body, self._job_headers(job))

    async def mark_failed(self, job: Job, message: str) -> None:
        body = self._op(job, errorMessage=message)
        await self._post(self._queue_path(job, "markFailed"), body, self._job_headers(job))


def _path_segment(part: str) -> str:
    """One segment of a files-API path, escaped as Go's url.URL.EscapedPath escapes a path; a segment
    that could change the path (empty, ".", "..") is refused."""
    if part in ("", ".", "..") or "\0" in part:
        raise ValueError(f"{part!r} is not a valid files-API path segment")
    return quote(part, safe="$&+,:;=@!'()*")


def _wire_ids(value: Any) -> list[str]:
    """Ids of a heartbeat answer as strings: numbers or strings, as Sourcegraph's decoder accepts
    them (HeartbeatResponse.UnmarshalJSON, internal/executor/types/http.go); null is none."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"ids must be a list, not {type(value).__name__}")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise ValueError(f"{x!r} is not a job id")
        if isinstance(x, float):
            if not x.is_integer():
                raise ValueError(f"{x!r} is not a job id")
            x = int(x)
        out.append(str(x))
    return out


def _heartbeat_ids(content: bytes) -> tuple[list[str], list[str]]:
    """(known ids, cancel ids) of a heartbeat answer, in either form a Sourcegraph server sends:
    the object {"knownIds": [...], "cancelIds": [...]} (field names matched case-insensitively, the
    last one winning, as Go's encoding/json does), or the bare array of known ids that a 4.x
    server answers a heartbeat without "version": "V2" (enterprise/cmd/frontend/internal/
    executorqueue/handler/routes.go: "TODO: Remove in Sourcegraph 4.4"). `null` means none known."""
    if not content.strip():
        raise ValueError("the answer is empty")
    try:
        data = json.loads(content)
    except RecursionError:  # a hostile answer nested past Python's decoder: not a heartbeat answer
        raise ValueError("the answer is JSON nested too deeply") from None
    if data is None:
        return [], []
    if isinstance(data, list):
        return _wire_ids(data), []
    if not isinstance(data, dict):
        raise ValueError("the answer is neither an object nor an array of ids")
    fields: dict[str, Any] = {}
    for k, v in json.loads(content, object_pairs_hook=list):  # the top level's pairs, in order
        fields[k.lower()] = v
    return _wire_ids(fields.get("knownids")), _wire_ids(fields.get("cancelids"))
