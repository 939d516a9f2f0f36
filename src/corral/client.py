"""A thin client of the producer API, used by the CLI, `corral batch` and `corral demo`.

Requests are built from, and answers parsed by, the producer API's models (corral.protocol.producer),
so both sides hold one contract. The typed methods (`submit_job`, `job`, `job_result`, ...) answer
models; the plain ones answer the same JSON as dicts, for callers that print or pass it on.
Every failure is a ServerError (with the HTTP status when there was one).
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from corral.errors import ServerError
from corral.protocol import (
    EntryEvent,
    ExecutorView,
    ExitEvent,
    JobIn,
    JobLogs,
    JobView,
    LogEvent,
    OutputEvent,
    QueueView,
    RepoAdded,
    RepoIn,
    RepoView,
    ResultView,
    StateEvent,
)
from corral.protocol.secrets import ReencryptView, SecretAccessView, SecretIn, SecretValueIn, SecretView

TIMEOUT = 30.0  # seconds per request (log streams have no read timeout)
RECONNECT_FOR = 300.0  # seconds `follow` keeps trying to reach a server that went away
RECONNECT_WAIT = (0.5, 5.0)  # seconds between reconnects: first, then doubling up to this
M = TypeVar("M", bound=BaseModel)
_EVENT: TypeAdapter[LogEvent] = TypeAdapter(LogEvent)


class ProducerClient:
    def __init__(self, url: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the corral server at {self.http.base_url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            # the server's words first (they are what a person acts on), then where they came from
            raise ServerError(f"{msg} (HTTP {r.status_code} from {method} {path})", status=r.status_code)
        try:
            return r.json() if r.content else None
        except ValueError as exc:
            raise ServerError(f"{method} {path}: the server answered with invalid JSON: {exc}") from exc

    def _one(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        return _parse(model, self._call(method, path, **kw), path)

    def _many(self, model: type[M], method: str, path: str, **kw: Any) -> list[M]:
        data = self._call(method, path, **kw)
        if not isinstance(data, list):
            raise ServerError(f"{method} {path}: expected a list, the server answered {type(data).__name__}")
        return [_parse(model, item, path) for item in data]

    # -- typed ------------------------------------------------------------------------------------
    def add_repository(self, repo: RepoIn) -> RepoAdded:
        return self._one(RepoAdded, "POST", "/api/v1/repos", json=_body(repo))

    def repositories(self) -> list[RepoView]:
        return self._many(RepoView, "GET", "/api/v1/repos")

    def submit_job(self, queue: str, job: JobIn) -> JobView:
        return self._one(JobView, "POST", f"/api/v1/queues/{queue}/jobs", json=_body(job))

    def job(self, job_id: int) -> JobView:
        return self._one(JobView, "GET", f"/api/v1/jobs/{job_id}")

    def jobs(self, **params: Any) -> list[JobView]:
        query = {k: v for k, v in params.items() if v is not None}
        return self._many(JobView, "GET", "/api/v1/jobs", params=query)

    def job_logs(self, job_id: int) -> JobLogs:
        return self._one(JobLogs, "GET", f"/api/v1/jobs/{job_id}/logs")

    def job_result(self, job_id: int) -> ResultView:
        return self._one(ResultView, "GET", f"/api/v1/jobs/{job_id}/result")

    def cancel_job(self, job_id: int) -> JobView:
        return self._one(JobView, "POST", f"/api/v1/jobs/{job_id}/cancel")

    def executor_list(self) -> list[ExecutorView]:
        return self._many(ExecutorView, "GET", "/api/v1/executors")

    def queue_list(self) -> list[QueueView]:
        return self._many(QueueView, "GET", "/api/v1/queues")

    def remove_repository(self, name: str) -> None:
        self._call("DELETE", "/api/v1/repos", params={"name": name})

    def refresh_repository(self, name: str) -> RepoView:
        return self._one(RepoView, "POST", "/api/v1/repos/refresh", params={"name": name})

    def retry_job(self, job_id: int) -> JobView:
        return self._one(JobView, "POST", f"/api/v1/jobs/{job_id}/retry")

    # executor secrets (values go in, never come out)
    def add_secret(self, secret: SecretIn) -> SecretView:
        return self._one(SecretView, "POST", "/api/v1/secrets", json=_body(secret))

    def secret_list(self, namespace: str | None = None, *, global_only: bool = False) -> list[SecretView]:
        params = {"scope": "global"} if global_only else {"namespace": namespace} if namespace else {}
        return self._many(SecretView, "GET", "/api/v1/secrets", params=params)

    def set_secret(self, secret_id: int, value: SecretValueIn) -> SecretView:
        return self._one(SecretView, "PUT", f"/api/v1/secrets/{secret_id}", json=_body(value))

    def remove_secret(self, secret_id: int) -> None:
        self._call("DELETE", f"/api/v1/secrets/{secret_id}")

    def secret_accesses(self, secret_id: int, limit: int = 100) -> list[SecretAccessView]:
        return self._many(
            SecretAccessView, "GET", f"/api/v1/secrets/{secret_id}/accesses", params={"limit": limit}
        )

    def reencrypt_secrets(self) -> ReencryptView:
        return self._one(ReencryptView, "POST", "/api/v1/secrets/reencrypt")

    def follow(
        self,
        job_id: int,
        *,
        on_reconnect: Callable[[str], None] | None = None,
        reconnect_for: float = RECONNECT_FOR,
    ) -> Iterator[LogEvent]:
        """The job's log events until it ends, across lost connections (a server restart): the
        stream is resumed where it broke (`?from=`, by byte offset per entry), so nothing is shown
        twice or lost. `on_reconnect(why)` is told of each break. Gives up (ServerError) when the
        server stays unreachable for `reconnect_for` seconds, or at once on a 4xx answer."""
        seen: dict[int, int] = {}  # entry -> bytes received
        exited: set[int] = set()
        wait, down_since = RECONNECT_WAIT[0], None
        while True:
            try:
                for ev in self.events(job_id, resume=dict(seen)):
                    down_since, wait = None, RECONNECT_WAIT[0]
                    if isinstance(ev, EntryEvent):
                        if ev.entry_id in seen:
                            continue
                        seen[ev.entry_id] = 0
                    elif isinstance(ev, OutputEvent):
                        if ev.offset is not None:
                            seen[ev.entry_id] = ev.offset
                    elif isinstance(ev, ExitEvent):
                        if ev.entry_id in exited:
                            continue
                        exited.add(ev.entry_id)
                    yield ev
                    if isinstance(ev, StateEvent):
                        return
                raise ServerError(f"log stream of job {job_id} ended before the job did")
            except ServerError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since > reconnect_for:
                    raise ServerError(
                        f"gave up following job {job_id}: no answer from {self.http.base_url} "
                        f"for {reconnect_for:.0f}s ({exc.message})"
                    ) from exc
                if on_reconnect is not None:
                    on_reconnect(exc.message)
                time.sleep(wait)
                wait = min(wait * 2, RECONNECT_WAIT[1])

    def events(self, job_id: int, *, resume: Mapping[int, int] | None = None) -> Iterator[LogEvent]:
        """Events of the job's log stream until the job ends (see the API's NDJSON stream); with
        `resume` (entry -> byte offset) the stream continues from there."""
        params = {"from": ",".join(f"{k}:{v}" for k, v in sorted(resume.items()))} if resume else None
        try:
            with self.http.stream(
                "GET",
                f"/api/v1/jobs/{job_id}/logs/stream",
                params=params,
                timeout=httpx.Timeout(TIMEOUT, read=None),
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ServerError(
                        f"log stream of job {job_id}: {r.status_code} {r.text}", status=r.status_code
                    )
                for line in r.iter_lines():
                    if line:
                        yield _event(line, job_id)
        except httpx.HTTPError as exc:
            raise ServerError(f"log stream of job {job_id} broke: {exc}") from exc

    # -- the same answers as JSON dicts ------------------------------------------------------------
    def add_repo(self, name: str, path: str) -> dict[str, Any]:
        return _dict(self.add_repository(RepoIn(name=name, path=path)))

    def list_repos(self) -> list[dict[str, Any]]:
        return [_dict(r) for r in self.repositories()]

    def submit(self, queue: str, job: JobIn | Mapping[str, Any]) -> dict[str, Any]:
        """Submit `job` (a JobIn, or its JSON as a mapping: the server checks it)."""
        if isinstance(job, JobIn):
            return _dict(self.submit_job(queue, job))
        path = f"/api/v1/queues/{queue}/jobs"
        return _dict(_parse(JobView, self._call("POST", path, json=dict(job)), path))

    def get(self, job_id: int) -> dict[str, Any]:
        return _dict(self.job(job_id))

    def logs(self, job_id: int) -> dict[str, Any]:
        return _dict(self.job_logs(job_id))

    def result(self, job_id: int) -> dict[str, Any]:
        return _dict(self.job_result(job_id))

    def cancel(self, job_id: int) -> dict[str, Any]:
        return _dict(self.cancel_job(job_id))

    def executors(self) -> list[dict[str, Any]]:
        return [_dict(e) for e in self.executor_list()]

    def queues(self) -> list[dict[str, Any]]:
        return [_dict(q) for q in self.queue_list()]

    def stream_logs(self, job_id: int) -> Iterator[dict[str, Any]]:
        for ev in self.events(job_id):
            yield _dict(ev)

    def list(self, **params: Any) -> builtins.list[dict[str, Any]]:  # last: it shadows `list` here
        return [_dict(j) for j in self.jobs(**params)]


def _body(model: BaseModel) -> dict[str, Any]:
    """A request body: the fields the caller set, by their wire names."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _dict(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def _parse(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ServerError(f"{what}: the server's answer does not match the protocol: {exc}") from exc


def _event(line: str, job_id: int) -> LogEvent:
    try:
        return _EVENT.validate_python(json.loads(line))
    except (ValueError, ValidationError) as exc:
        raise ServerError(f"log stream of job {job_id}: not a protocol event: {exc}") from exc
