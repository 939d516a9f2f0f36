"""The producer API (`/api/v1`, admin token): repositories, queues, jobs, logs, results, executors.

Every body in and out is a model of corral.protocol.producer. Besides the routes listed there:
`DELETE /repos?name=N` forgets a repository (and removes its mirror), `POST /repos/refresh?name=N`
fetches its source again, `POST /jobs/{id}/retry` submits a finished job again (a new job, as
GitLab and Buildkite retry), `GET /jobs?repository=N` filters by repository.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.errors import BadRequest, Conflict, Invalid, NotFound
from corral.protocol import (
    QUEUE_NAME_RE,
    EntryEvent,
    ExecutorView,
    ExitEvent,
    JobIn,
    JobLogs,
    JobView,
    LogEntryView,
    OutputEvent,
    QueueView,
    RepoAdded,
    RepoIn,
    RepoView,
    ResultView,
    StateEvent,
)
from corral.server import repos as repomod
from corral.server.auth import require_admin
from corral.server.bodies import BoundedJsonRoute
from corral.server.deps import ServerState, StateDep
from corral.server.jobview import iso, producer_job
from corral.server.routers.files import job_files
from corral.server.routers.secrets import check_job
from corral.server.store import DEQUEUEABLE, TERMINAL, JobRow, JobState, LogEntry, log_key


async def _admin(request: Request, state: StateDep) -> None:
    require_admin(request, state)


router = APIRouter(
    prefix="/api/v1", tags=["producer API"], dependencies=[Depends(_admin)], route_class=BoundedJsonRoute
)
FOLLOW_RECHECK = 2.0  # seconds: a log follower looks again this often when no write woke it
FOLLOW_MAX = 24 * 3600  # seconds a log stream stays open at most
ACTIVE_WITHIN = 30.0  # seconds: an executor seen this recently counts as active
MAX_RESUME_ENTRIES = 10_000  # entries a resumed log stream may name in `from`
RESUME_RE = re.compile(r"(\d{1,9}):(\d{1,15})\Z")
STATES = ", ".join(s.value for s in JobState)


def mirrors(request: Request) -> repomod.Mirrors:
    m: repomod.Mirrors = request.app.state.mirrors
    return m


@router.get("/queues")
async def list_queues(state: StateDep) -> list[QueueView]:
    return [QueueView(name=q.name, counts=q.counts) for q in await state.db(state.store.list_queues)]


@router.post("/repos", status_code=201)
async def add_repo(body: RepoIn, request: Request, response: Response, state: StateDep) -> RepoAdded:
    repomod.check_repo_name(body.name)
    dest = await asyncio.to_thread(mirrors(request).refresh, body.name, body.path)
    rel = str(dest.relative_to(state.settings.repos_dir))
    created = await state.db(state.store.upsert_repo, body.name, rel, body.path)
    if not created:
        response.status_code = 200
    return RepoAdded(name=body.name, source=body.path, created=created)


@router.get("/repos")
async def list_repos(state: StateDep) -> list[RepoView]:
    rows = await state.db(state.store.list_repos)
    return [RepoView(name=r.name, source=r.source, updated_at=iso(r.updated_at)) for r in rows]


@router.post("/repos/refresh")
async def refresh_repo(name: str, request: Request, state: StateDep) -> RepoView:
    """Fetch the repository's source again (what `HEAD` and branches name moves with it)."""
    repo = await state.db(state.store.get_repo, name)
    await asyncio.to_thread(mirrors(request).refresh, repo.name, repo.source)
    await state.db(state.store.upsert_repo, repo.name, repo.path, repo.source)
    repo = await state.db(state.store.get_repo, name)
    return RepoView(name=repo.name, source=repo.source, updated_at=iso(repo.updated_at))


@router.delete("/repos", status_code=204)
async def remove_repo(name: str, request: Request, state: StateDep) -> Response:
    """Forget a repository and remove its mirror; refused while jobs of it wait or run (they would
    fail to clone)."""
    await state.db(state.store.get_repo, name)  # 404 for an unknown name
    waiting: list[int] = []
    for st in (*DEQUEUEABLE, JobState.PROCESSING):
        rows = await state.db(state.store.list_jobs, state=st.value, repository=name, limit=20)
        waiting += [r.id for r in rows]
    if waiting:
        ids = ", ".join(str(i) for i in sorted(waiting)[:20])
        raise Conflict(f"repository {name!r} has jobs that are queued or running ({ids}): cancel them first")
    repo = await state.db(state.store.remove_repo, name)
    mirrors(request).forget(name)
    await asyncio.to_thread(repomod.remove_mirror, state.settings.repos_dir, repo.path)
    return Response(status_code=204)


@router.post("/queues/{queue}/jobs", status_code=201)
async def submit_job(queue: str, body: JobIn, request: Request, state: StateDep) -> JobView:
    if not QUEUE_NAME_RE.match(queue):
        raise BadRequest(f"invalid queue name {queue!r}: use 1-64 characters of [a-z0-9_-]")
    spec = body.model_dump(by_alias=True, exclude_none=True, exclude={"files", "priority", "max_attempts"})
    spec["files"] = await job_files(state, body.files)  # stored files by bucket/key must exist
    await check_job(state, body)  # the secrets it names exist (their values never enter the spec)
    if body.repository_name:
        spec["commit"] = await _resolve(request, state, body.repository_name, body.commit or "HEAD")
    elif body.commit:
        raise BadRequest("commit given without repositoryName")
    row = await _enqueue(state, queue, spec, body.priority, body.max_attempts or state.settings.max_attempts)
    return producer_job(row)


async def _resolve(request: Request, state: ServerState, name: str, commit: str) -> str:
    """The full commit id `commit` names now: a moving name (HEAD, a branch, a tag) is looked up in
    a mirror refreshed from the repository's source first (see corral.server.repos)."""
    repo = await state.db(state.store.get_repo, name)
    bare = state.settings.repos_dir / repo.path
    if not repomod.is_full_commit(commit):
        try:
            await asyncio.to_thread(mirrors(request).refresh, repo.name, repo.source)
        except Invalid as exc:
            raise Invalid(
                f"cannot refresh repository {name!r} to resolve {commit!r}: {exc.message} "
                "(name a full commit id, or add the repository again from where it is now)"
            ) from None
    return await asyncio.to_thread(repomod.resolve_commit, bare, commit, name)


async def _enqueue(
    state: ServerState, queue: str, spec: dict[str, object], priority: int, attempts: int
) -> JobRow:
    row = await state.db(state.store.enqueue, queue, dict(spec), priority=priority, max_attempts=attempts)
    state.metrics.enqueued.labels(queue).inc()
    await state.wake(queue, wake=1)  # one job: one long-polling executor is enough
    return row


@router.get("/jobs")
async def list_jobs(
    state: StateDep,
    queue: str | None = None,
    state_: str | None = Query(default=None, alias="state"),
    limit: int = Query(default=50, ge=1, le=500),
    before: int | None = None,
    repository: str | None = None,
) -> list[JobView]:
    if state_ is not None and state_ not in JobState.__members__.values():
        raise BadRequest(f"unknown job state {state_!r}: use one of {STATES}")
    rows = await state.db(
        state.store.list_jobs, queue=queue, state=state_, limit=limit, before_id=before, repository=repository
    )
    return [producer_job(r) for r in rows]


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, state: StateDep) -> JobView:
    return producer_job(await state.db(state.store.get_job, job_id))


@router.post("/jobs/{job_id}/retry", status_code=201)
async def retry_job(job_id: int, state: StateDep) -> JobView:
    """Submit a finished job again, as a new job with the same spec (commit, steps, files, secrets):
    its own log and result; the old job stays as it ended."""
    old = await state.db(state.store.get_job, job_id)
    if old.state not in TERMINAL:
        raise Conflict(f"job {job_id} is still {old.state.value}: only a finished job can be retried")
    row = await _enqueue(state, old.queue, old.spec, old.priority, old.max_attempts)
    return producer_job(row)


def _entry_view(e: LogEntry) -> LogEntryView:
    return LogEntryView(
        entry_id=e.entry_id,
        attempt=e.attempt,
        key=e.key,
        command=e.command,
        start_time=e.start_time,
        exit_code=e.exit_code,
        duration_ms=e.duration_ms,
        out=e.out_bytes.decode("utf-8", "replace"),
    )


@router.get("/jobs/{job_id}/logs")
async def get_logs(job_id: int, state: StateDep) -> JobLogs:
    entries = await state.db(state.store.get_logs, job_id)
    return JobLogs(job_id=job_id, entries=[_entry_view(e) for e in entries])


@router.get("/jobs/{job_id}/logs/stream")
async def stream_logs(
    job_id: int, request: Request, from_: str = Query(default="", alias="from")
) -> StreamingResponse:
    """NDJSON: `entry` when a log entry starts, `output` with new text, `exit` when it ends, and a
    final `state` line once the job is finished and everything was sent.

    Output is sent in whole UTF-8 characters (a character split between two writes is held back
    until its end arrives), and each `output` carries `offset`, the entry's bytes up to the end of
    its data. A follower that lost its connection resumes with `?from=<entryId>:<offset>,...`: the
    entries it names are continued from there without their `entry` event; the others are sent
    whole. (An `exit` may come again for an entry that had ended: followers keep the first.)

    A follower reads only what it has not seen (the store reads by offset) and sleeps until a write
    to the job's log (or its end) wakes it, on any replica; it looks again after FOLLOW_RECHECK
    seconds anyway, in case a wake-up was lost."""
    state: ServerState = request.app.state.corral
    resume = _resume_points(from_)
    await state.db(state.store.get_job, job_id)  # 404 before the stream starts
    keys = [log_key(job_id)]

    async def lines() -> AsyncIterator[bytes]:
        offsets: dict[int, int] = dict(resume)  # bytes read from the store, per entry
        decoders: dict[int, codecs.IncrementalDecoder] = {}
        exited: set[int] = set()
        deadline = time.monotonic() + FOLLOW_MAX
        while time.monotonic() < deadline:
            woken = state.notifier.register(keys)  # before the look: a write after it is not missed
            try:
                job_state, error = await state.db(state.store.job_state, job_id)
                entries = await state.db(state.store.get_logs, job_id, offsets=offsets)
                for e in entries:
                    eid = e.entry_id
                    if eid not in offsets:
                        offsets[eid] = 0
                        yield _line(EntryEvent(entry_id=eid, key=e.key, command=e.command, attempt=e.attempt))
                    decoder = decoders.setdefault(eid, codecs.getincrementaldecoder("utf-8")("replace"))
                    ended = e.exit_code is not None
                    if e.out_bytes or ended:
                        offsets[eid] += len(e.out_bytes)
                        text = decoder.decode(e.out_bytes, final=ended)
                        if text:
                            held = len(decoder.getstate()[0])
                            yield _line(OutputEvent(entry_id=eid, data=text, offset=offsets[eid] - held))
                    if ended and eid not in exited:
                        exited.add(eid)
                        yield _line(ExitEvent(entry_id=eid, exit_code=e.exit_code, duration_ms=e.duration_ms))
                if job_state in TERMINAL:
                    if error:  # as the job view shows it: with the job's secrets replaced
                        error = producer_job(await state.db(state.store.get_job, job_id)).error
                    yield _line(StateEvent(state=job_state.value, error=error))
                    return
                if await request.is_disconnected() or state.notifier.closed:
                    return
                await state.notifier.wait(woken, FOLLOW_RECHECK)
            finally:
                state.notifier.unregister(keys, woken)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _resume_points(raw: str) -> dict[int, int]:
    """`?from=3:1024,4:0` -> {3: 1024, 4: 0}; a malformed or oversized value is a 400."""
    points: dict[int, int] = {}
    parts = [p for p in raw.split(",") if p] if raw else []
    if len(parts) > MAX_RESUME_ENTRIES:
        raise BadRequest(f"from names {len(parts)} entries, over the limit of {MAX_RESUME_ENTRIES}")
    for part in parts:
        m = RESUME_RE.match(part)
        if not m:
            raise BadRequest(f"invalid resume point {part[:40]!r} in from: use <entryId>:<offset>,...")
        points[int(m[1])] = int(m[2])
    return points


def _line(event: BaseModel) -> bytes:
    return json.dumps(event.model_dump(by_alias=True)).encode() + b"\n"


@router.get("/jobs/{job_id}/result")
async def get_result(job_id: int, state: StateDep) -> ResultView:
    job = await state.db(state.store.get_job, job_id)
    res = await state.db(state.store.get_result, job_id)
    if res is None:
        raise NotFound(f"job {job_id} has no result yet (state {job.state.value})")
    return ResultView(
        job_id=job_id, attempt=res.attempt, exit_codes=res.exit_codes, diff=res.diff, files=res.files
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: int, state: StateDep) -> JobView:
    row = await state.db(state.store.request_cancel, job_id)
    if row.executor_name:
        await state.wake(f"cancel:{row.executor_name}")
    else:
        state.log_written(job_id)  # canceled at once: its log followers see the end
    return producer_job(row)


@router.get("/executors")
async def list_executors(state: StateDep) -> list[ExecutorView]:
    now = state.store.clock()
    rows = await state.db(state.store.list_executors)
    return [
        ExecutorView(
            name=r.name,
            hostname=r.hostname,
            queues=r.queues,
            os=r.os,
            architecture=r.architecture,
            executor_version=r.executor_version,
            git_version=r.git_version,
            docker_version=r.docker_version,
            src_cli_version=r.src_cli_version,
            qemu_version=r.qemu_version,
            kubernetes_version=r.kubernetes_version,
            running_job_ids=r.running_job_ids,
            first_seen_at=iso(r.first_seen_at),
            last_seen_at=iso(r.last_seen_at),
            active=now - r.last_seen_at < ACTIVE_WITHIN,
        )
        for r in rows
    ]


def executors_active(state: ServerState) -> int:
    now = state.store.clock()
    return sum(1 for r in state.store.list_executors() if now - r.last_seen_at < ACTIVE_WITHIN)
