"""The producer API (`/api/v1`, admin token): repositories, queues, jobs, logs, results, executors."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.protocol import QUEUE_NAME_RE, ZERO_TIME, CliStep, DockerStep, check_workspace_path
from corral.server import repos as repomod
from corral.server.auth import require_admin
from corral.server.bodies import BoundedJsonRoute
from corral.server.deps import ApiError, ServerState, StateDep
from corral.server.jobview import iso, producer_job
from corral.server.store.store import TERMINAL


async def _admin(request: Request, state: StateDep) -> None:
    require_admin(request, state)


router = APIRouter(
    prefix="/api/v1", tags=["producer API"], dependencies=[Depends(_admin)], route_class=BoundedJsonRoute
)
STREAM_POLL = 0.2  # seconds between looks at the store while streaming logs
MAX_TIMEOUT = 7 * 24 * 3600  # seconds
ACTIVE_WITHIN = 30.0  # seconds: an executor seen this recently counts as active
# Bounds on what one job may carry (checked at submit; the executor builds a redactor from the
# redacted values on every attempt and writes every file, so these bound its work too).
MAX_REDACTED_VALUES = 1_000  # entries of redactedValues
MAX_REDACTED_BYTES = 1024 * 1024  # bytes of redactedValues keys and values together (UTF-8)
MAX_FILES = 1_000  # files written into the workspace
MAX_FILES_BYTES = 32 * 1024 * 1024  # bytes of all files' contents together, decoded
MAX_STEPS = 100  # dockerSteps and cliSteps together
MAX_OUTPUTS = 1_000  # output paths


class Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class RepoIn(Model):
    name: str
    path: str


class FileIn(Model):
    """A file to write into the workspace: text `content`, or bytes as `contentBase64`."""

    content: str | None = None
    content_base64: str | None = Field(default=None, alias="contentBase64")
    modified_at: str | None = Field(default=None, alias="modifiedAt")

    @model_validator(mode="after")
    def _one(self) -> FileIn:
        if self.content is not None and self.content_base64 is not None:
            raise ValueError("give either content or contentBase64, not both")
        if self.content_base64 is not None:
            try:
                base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("contentBase64 is not valid base64") from None
        return self

    def decoded_size(self) -> int:
        if self.content_base64 is not None:
            b64 = self.content_base64
            return len(b64) * 3 // 4 - b64[-2:].count("=")
        return len((self.content or "").encode())

    def as_base64(self) -> str:
        if self.content_base64 is not None:
            return self.content_base64
        return base64.b64encode((self.content or "").encode()).decode()


class JobIn(Model):
    repository_name: str = Field(default="", alias="repositoryName")
    commit: str = ""
    repository_directory: str = Field(default="", alias="repositoryDirectory")
    fetch_tags: bool = Field(default=False, alias="fetchTags")
    shallow_clone: bool = Field(default=False, alias="shallowClone")
    sparse_checkout: list[str] | None = Field(default=None, alias="sparseCheckout")
    files: dict[str, FileIn] = Field(default_factory=dict)
    docker_steps: list[DockerStep] = Field(default_factory=list, alias="dockerSteps")
    cli_steps: list[CliStep] = Field(default_factory=list, alias="cliSteps")
    redacted_values: dict[str, str] | None = Field(default=None, alias="redactedValues")
    docker_auth_config: dict[str, Any] | None = Field(default=None, alias="dockerAuthConfig")
    namespace: str | None = None
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds", gt=0, le=MAX_TIMEOUT)
    priority: int = 0
    outputs: list[str] | None = None
    max_attempts: int | None = Field(default=None, alias="maxAttempts", ge=1, le=20)

    @field_validator("files")
    @classmethod
    def _paths(cls, v: dict[str, FileIn]) -> dict[str, FileIn]:
        return {check_workspace_path(p): f for p, f in v.items()}

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str] | None) -> list[str] | None:
        return [check_workspace_path(p) for p in v] if v else v

    @model_validator(mode="after")
    def _bounds(self) -> JobIn:
        values = self.redacted_values or {}
        if len(values) > MAX_REDACTED_VALUES:
            raise ValueError(
                f"redactedValues has {len(values)} entries, over the limit of {MAX_REDACTED_VALUES}"
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
        if size > MAX_REDACTED_BYTES:
            raise ValueError(
                f"redactedValues total {size} bytes, over the limit of {MAX_REDACTED_BYTES} bytes"
            )
        if len(self.files) > MAX_FILES:
            raise ValueError(f"the job has {len(self.files)} files, over the limit of {MAX_FILES}")
        size = sum(f.decoded_size() for f in self.files.values())
        if size > MAX_FILES_BYTES:
            raise ValueError(f"the job's files total {size} bytes, over the limit of {MAX_FILES_BYTES} bytes")
        steps = len(self.docker_steps) + len(self.cli_steps)
        if steps > MAX_STEPS:
            raise ValueError(f"the job has {steps} steps, over the limit of {MAX_STEPS}")
        if len(self.outputs or []) > MAX_OUTPUTS:
            raise ValueError(
                f"the job names {len(self.outputs or [])} outputs, over the limit of {MAX_OUTPUTS}"
            )
        return self

    @model_validator(mode="after")
    def _steps(self) -> JobIn:
        if not self.docker_steps and not self.cli_steps:
            raise ValueError("a job needs at least one step (dockerSteps or cliSteps)")
        for s in self.docker_steps:
            if not s.image.strip():
                raise ValueError("every docker step needs an image")
        for s in [*self.docker_steps, *self.cli_steps]:
            for e in s.env or []:
                if "=" not in e:
                    raise ValueError(f"step env entry {e!r} is not NAME=value")
            if s.dir:
                check_workspace_path(s.dir)
        if self.repository_directory:
            check_workspace_path(self.repository_directory)
        for p in self.sparse_checkout or []:
            if p.startswith("-"):
                raise ValueError(f"sparse checkout pattern {p!r} may not start with '-'")
        return self


@router.get("/queues")
async def list_queues(state: StateDep) -> list[dict[str, Any]]:
    return await state.db(state.store.list_queues)


@router.post("/repos", status_code=201)
async def add_repo(body: RepoIn, response: Response, state: StateDep) -> dict[str, Any]:
    repomod.check_repo_name(body.name)
    dest = await asyncio.to_thread(repomod.mirror, state.settings.repos_dir, body.name, body.path)
    rel = str(dest.relative_to(state.settings.repos_dir))
    created = await state.db(state.store.upsert_repo, body.name, rel, body.path)
    if not created:
        response.status_code = 200
    return {"name": body.name, "source": body.path, "created": created}


@router.get("/repos")
async def list_repos(state: StateDep) -> list[dict[str, Any]]:
    rows = await state.db(state.store.list_repos)
    return [{"name": r["name"], "source": r["source"], "updatedAt": iso(r["updated_at"])} for r in rows]


@router.post("/queues/{queue}/jobs", status_code=201)
async def submit_job(queue: str, body: JobIn, state: StateDep) -> dict[str, Any]:
    if not QUEUE_NAME_RE.match(queue):
        raise ApiError(400, f"invalid queue name {queue!r}: use 1-64 characters of [a-z0-9_-]")
    spec = body.model_dump(by_alias=True, exclude_none=True, exclude={"files", "priority", "max_attempts"})
    spec["files"] = {
        p: {"content": f.as_base64(), "modifiedAt": f.modified_at or ZERO_TIME} for p, f in body.files.items()
    }
    if body.repository_name:
        repo = await state.db(state.store.get_repo, body.repository_name)
        bare = state.settings.repos_dir / repo["path"]
        spec["commit"] = await asyncio.to_thread(
            repomod.resolve_commit, bare, body.commit or "HEAD", body.repository_name
        )
    elif body.commit:
        raise ApiError(400, "commit given without repositoryName")
    row = await state.db(
        state.store.enqueue,
        queue,
        spec,
        priority=body.priority,
        max_attempts=body.max_attempts or state.settings.max_attempts,
    )
    state.metrics.enqueued.labels(queue).inc()
    await state.wake(queue, wake=1)  # one job: one long-polling executor is enough
    return producer_job(row | {"exit_codes": []})


@router.get("/jobs")
async def list_jobs(
    state: StateDep,
    queue: str | None = None,
    state_: str | None = Query(default=None, alias="state"),
    limit: int = Query(default=50, ge=1, le=500),
    before: int | None = None,
) -> list[dict[str, Any]]:
    rows = await state.db(state.store.list_jobs, queue=queue, state=state_, limit=limit, before_id=before)
    return [producer_job(r | {"exit_codes": []}) for r in rows]


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, state: StateDep) -> dict[str, Any]:
    return producer_job(await state.db(state.store.get_job, job_id))


def _entry_view(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "entryId": e["entry_id"],
        "attempt": e["attempt"],
        "key": e["key"],
        "command": e["command"],
        "startTime": e["start_time"],
        "exitCode": e["exit_code"],
        "durationMs": e["duration_ms"],
        "out": e["out_bytes"].decode("utf-8", "replace"),
    }


@router.get("/jobs/{job_id}/logs")
async def get_logs(job_id: int, state: StateDep) -> dict[str, Any]:
    entries = await state.db(state.store.get_logs, job_id)
    return {"jobId": job_id, "entries": [_entry_view(e) for e in entries]}


@router.get("/jobs/{job_id}/logs/stream")
async def stream_logs(job_id: int, request: Request) -> StreamingResponse:
    """NDJSON: `entry` when a log entry starts, `output` with new bytes, `exit` when it ends, and a
    final `state` line once the job is finished and everything was sent."""
    state: ServerState = request.app.state.corral
    await state.db(state.store.get_job, job_id)  # 404 before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        offsets: dict[int, int] = {}
        exited: set[int] = set()
        deadline = time.monotonic() + 24 * 3600
        while time.monotonic() < deadline:
            job = await state.db(state.store.get_job, job_id)
            entries = await state.db(state.store.get_logs, job_id, offsets=offsets)
            for e in entries:
                eid = e["entry_id"]
                if eid not in offsets:
                    offsets[eid] = 0
                    yield _line({"type": "entry", "entryId": eid, "key": e["key"], "command": e["command"]})
                if e["out_bytes"]:
                    offsets[eid] += len(e["out_bytes"])
                    yield _line(
                        {"type": "output", "entryId": eid, "data": e["out_bytes"].decode("utf-8", "replace")}
                    )
                if e["exit_code"] is not None and eid not in exited:
                    exited.add(eid)
                    yield _line(
                        {
                            "type": "exit",
                            "entryId": eid,
                            "exitCode": e["exit_code"],
                            "durationMs": e["duration_ms"],
                        }
                    )
            if job["state"] in TERMINAL:
                yield _line({"type": "state", "state": job["state"], "error": job["failure_message"]})
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(STREAM_POLL)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@router.get("/jobs/{job_id}/result")
async def get_result(job_id: int, state: StateDep) -> dict[str, Any]:
    job = await state.db(state.store.get_job, job_id)
    res = await state.db(state.store.get_result, job_id)
    if res is None:
        raise ApiError(404, f"job {job_id} has no result yet (state {job['state']})")
    return {
        "jobId": job_id,
        "attempt": res["attempt"],
        "exitCodes": res["exit_codes"],
        "diff": res["diff"],
        "files": res["files"],
    }


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: int, state: StateDep) -> dict[str, Any]:
    row = await state.db(state.store.request_cancel, job_id)
    if row["executor_name"]:
        await state.wake(f"cancel:{row['executor_name']}")
    return producer_job(row | {"exit_codes": []})


@router.get("/executors")
async def list_executors(state: StateDep) -> list[dict[str, Any]]:
    now = state.store.clock()
    rows = await state.db(state.store.list_executors)
    return [
        {
            "name": r["name"],
            "hostname": r["hostname"],
            "queues": r["queues"],
            "os": r["os"],
            "architecture": r["architecture"],
            "executorVersion": r["executor_version"],
            "gitVersion": r["git_version"],
            "dockerVersion": r["docker_version"],
            "srcCliVersion": r["src_cli_version"],
            "qemuVersion": r["qemu_version"],
            "runningJobIds": r["running_job_ids"],
            "firstSeenAt": iso(r["first_seen_at"]),
            "lastSeenAt": iso(r["last_seen_at"]),
            "active": now - r["last_seen_at"] < ACTIVE_WITHIN,
        }
        for r in rows
    ]


def executors_active(state: ServerState) -> int:
    now = state.store.clock()
    return sum(1 for r in state.store.list_executors() if now - r["last_seen_at"] < ACTIVE_WITHIN)
