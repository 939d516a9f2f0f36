"""A thin client of the producer API, used by the CLI, `corral batch` and `corral demo`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from corral.errors import ServerError

TIMEOUT = 30.0  # seconds per request (log streams have no read timeout)


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
            raise ServerError(f"{method} {path}: {r.status_code} {msg}", status=r.status_code)
        return r.json() if r.content else None

    def add_repo(self, name: str, path: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/repos", json={"name": name, "path": path})

    def list_repos(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/repos")

    def submit(self, queue: str, job: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/queues/{queue}/jobs", json=job)

    def get(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/jobs/{job_id}")

    def list(self, **params: Any) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/jobs", params={k: v for k, v in params.items() if v is not None})

    def logs(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/jobs/{job_id}/logs")

    def result(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/jobs/{job_id}/result")

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/jobs/{job_id}/cancel")

    def executors(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/executors")

    def queues(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/queues")

    def stream_logs(self, job_id: int) -> Iterator[dict[str, Any]]:
        """Events of the job's log stream until the job ends (see the API's NDJSON stream)."""
        try:
            with self.http.stream(
                "GET", f"/api/v1/jobs/{job_id}/logs/stream", timeout=httpx.Timeout(TIMEOUT, read=None)
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ServerError(
                        f"log stream of job {job_id}: {r.status_code} {r.text}", status=r.status_code
                    )
                for line in r.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise ServerError(f"log stream of job {job_id} broke: {exc}") from exc
