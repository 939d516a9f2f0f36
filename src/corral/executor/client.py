"""The executor's HTTP client of the queue API: auth headers, retries, extension discovery.

Transient failures (connection errors, 5xx, 429) are retried with exponential backoff for a bounded
time; any other 4xx is final and raised as ServerError with the server's message.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from corral import __version__
from corral.errors import ServerError, StaleAttempt
from corral.executor.settings import ExecutorSettings
from corral.protocol import EXECUTOR_NAME_HEADER, EXTENSIONS_HEADER, JOB_ID_HEADER, Job

CONNECT_TIMEOUT = 10.0  # seconds
REQUEST_TIMEOUT = 30.0  # seconds, beyond any long-poll wait
RETRY_FOR = 60.0  # seconds a job-scoped call keeps retrying a failing server
RETRY_MAX_WAIT = 5.0  # seconds between two tries at most


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

    # -- plumbing -----------------------------------------------------------------------------
    def _executor_headers(self) -> dict[str, str]:
        return {"Authorization": f"token-executor {self.settings.frontend_password}"}

    def _job_headers(self, job: Job) -> dict[str, str]:
        if not job.token:
            return self._executor_headers()
        return {
            "Authorization": f"Bearer {job.token}",
            JOB_ID_HEADER: str(job.id),
            EXECUTOR_NAME_HEADER: self.settings.name,
        }

    async def _once(
        self, path: str, body: Any, headers: dict[str, str], timeout: float | None
    ) -> httpx.Response:
        kw: dict[str, Any] = {"json": body, "headers": headers}
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        r = await self.http.post(path, **kw)
        if ext := r.headers.get(EXTENSIONS_HEADER):
            self.extensions = frozenset(x.strip() for x in ext.split(","))
        if r.status_code >= 400:
            try:
                payload = r.json()
                msg = payload.get("error", r.text) if isinstance(payload, dict) else r.text
            except ValueError:
                payload, msg = None, r.text
            if r.status_code == 409:
                offset = payload.get("offset") if isinstance(payload, dict) else None
                raise StaleAttempt(f"{path}: {msg}", offset=offset)
            raise ServerError(f"{path}: {r.status_code} {msg}".strip(), status=r.status_code)
        return r

    async def _post(
        self,
        path: str,
        body: Any,
        headers: dict[str, str],
        *,
        timeout: float | None = None,
        retry_for: float | None = None,
    ) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.retry_for if retry_for is None else retry_for),
            wait=wait_exponential(multiplier=0.2, max=RETRY_MAX_WAIT),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(path, body, headers, timeout)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.settings.frontend_url}: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _answer(self, what: str) -> Iterator[None]:
        """Decode a server answer: anything malformed (not JSON, wrong shape, bad ids) is a ServerError
        naming the call, so no loop of the worker dies of a library error."""
        try:
            yield
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
            r = await self.http.get("/.executors/test/auth", headers=self._executor_headers())
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.settings.frontend_url}: {exc!r}") from exc
        if r.status_code != 200:
            raise ServerError(f"auth check failed: {r.status_code} {r.text.strip()}", status=r.status_code)

    async def dequeue(self, wait: float = 0.0) -> Job | None:
        s = self.settings
        body: dict[str, Any] = {
            "executorName": s.name,
            "version": __version__,
            "numCPUs": int(s.job_num_cpus),
            "memory": f"{s.job_memory // 1024**2}M",
        }
        wait = wait if self.has("longpoll") else 0.0
        if wait > 0:
            body["waitSeconds"] = wait
        if s.multi_queue:
            body["queues"] = s.queues
            path = "/.executors/queue/dequeue"
        else:
            path = f"/.executors/queue/{s.queues[0]}/dequeue"
        r = await self._post(
            path, body, self._executor_headers(), timeout=wait + REQUEST_TIMEOUT, retry_for=0
        )
        if r.status_code == 204 or not r.content:
            return None
        with self._answer("dequeue"):
            job = Job.model_validate(r.json())
        if job.queue is None:
            job.queue = s.queues[0]
        return job

    async def heartbeat(self, jobs: list[Job], telemetry: dict[str, str]) -> tuple[set[int], set[int]]:
        """Renew leases; returns (ids the server still considers ours, ids to cancel)."""
        s = self.settings
        body: dict[str, Any] = {
            "executorName": s.name,
            "os": platform.system().lower(),
            "architecture": platform.machine(),
            "executorVersion": __version__,
            **telemetry,
        }
        if s.multi_queue:
            body["version"] = "V2"
            body["queueNames"] = s.queues
            body["jobIdsByQueue"] = [
                {"queueName": q, "jobIds": [str(j.id) for j in jobs if j.queue == q]} for q in s.queues
            ]
            path = "/.executors/queue/heartbeat"
        else:
            body["jobIds"] = [j.id for j in jobs]
            path = f"/.executors/queue/{s.queues[0]}/heartbeat"
        r = await self._post(path, body, self._executor_headers(), retry_for=0)

        def ids(data: dict[str, Any], key: str) -> set[int]:
            return {
                int(str(x).split("-", 1)[0])
                for x in (data.get(key) or data.get(key.replace("Ids", "IDs")) or [])
            }

        with self._answer("heartbeat"):
            data = r.json() or {}
            return ids(data, "knownIds"), ids(data, "cancelIds")

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

    # -- job-scoped calls ---------------------------------------------------------------------
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
