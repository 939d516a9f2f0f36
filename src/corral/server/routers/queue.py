"""The executor queue API, as Sourcegraph's executors speak it, plus corral's optional extensions.

Sourcegraph's: dequeue, heartbeat (one queue or several), add/update execution log entries,
markComplete / markErrored / markFailed, and the auth check. corral's (advertised in the
X-Corral-Extensions header; off with `extensions=false`): long-poll dequeue (`waitSeconds`),
appendExecutionLogEntry (byte offsets), uploadResult, cancelWatch, and attempt fencing.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from corral import __version__
from corral.errors import BadRequest, Conflict, Forbidden, Gone, TooLarge, VersionSkew
from corral.protocol import (
    AddLogEntryRequest,
    AppendLogRequest,
    AppendLogResponse,
    CancelWatchRequest,
    CancelWatchResponse,
    DequeueRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    Job,
    JobOperation,
    JobResult,
    MarkErrorRequest,
    UpdateLogEntryRequest,
)
from corral.server.auth import authorize_job_or_executor, require_executor
from corral.server.bodies import BoundedJsonRoute
from corral.server.deps import ServerState, StateDep
from corral.server.jobview import dump_job, executor_job, is_dev, job_version_for, parse_version
from corral.server.store import JobAuth, MarkOutcome, Telemetry

router = APIRouter(prefix="/.executors", tags=["executor queue"], route_class=BoundedJsonRoute)
RECHECK = 1.0  # seconds: a long-poll looks again this often (retry backoffs end without a wake-up)


def check_version_skew(executor_version: str) -> None:
    """Executor and server at most one minor version apart (dev builds are exempt)."""
    if is_dev(executor_version) or is_dev(__version__):
        return
    ours, theirs = parse_version(__version__), parse_version(executor_version)
    if theirs is None:
        raise BadRequest(f"failed to check version {executor_version!r}: Invalid Semantic Version")
    assert ours is not None
    if theirs[0] != ours[0] or abs(theirs[1] - ours[1]) > 1:
        raise VersionSkew(
            f"executor version {executor_version} is too far from server version {__version__}: "
            "they may be at most one minor version apart; upgrade the older one"
        )


@router.get("/test/auth", response_class=PlainTextResponse)
async def test_auth(request: Request, state: StateDep) -> str:
    require_executor(request, state)
    return "ok"


async def _dequeue(
    request: Request, state: ServerState, queues: list[str], req: DequeueRequest, with_queue: bool
) -> Response:
    if not req.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    if request.headers.get("user-agent", "").startswith("corral-executor/"):
        check_version_skew(req.version)
    for q in queues:
        await state.require_queue(q)
    wait = min(req.wait_seconds or 0.0, state.settings.long_poll_max) if state.settings.extensions else 0.0
    deadline = time.monotonic() + wait
    token = secrets.token_urlsafe(32)
    while True:
        fut = state.notifier.register(queues) if wait > 0 else None
        try:
            row = await state.db(state.store.dequeue, queues, req.executor_name, token)
            remaining = deadline - time.monotonic()
            if row is not None or fut is None or remaining <= 0 or state.notifier.closed:
                break
            await state.notifier.wait(fut, min(remaining, RECHECK))
        finally:
            if fut is not None:
                state.notifier.unregister(queues, fut)
        if await request.is_disconnected():  # the executor gave up waiting: take nothing for it
            return Response(status_code=204)
    if row is None:
        return Response(status_code=204)
    if wait > 0 and await request.is_disconnected():
        # Handed out to a client that is gone: give the job back at once instead of letting it
        # stall for `stalled_after` and count as a reset.
        await state.db(state.store.release, row.id, row.attempt)
        await state.wake(row.queue, wake=1)
        return Response(status_code=204)
    state.metrics.dequeued.labels(row.queue).inc()
    job = executor_job(row, token, version=job_version_for(req.version), with_queue=with_queue)
    return Response(dump_job(job), media_type="application/json")


NO_JOB: dict[int | str, dict[str, Any]] = {204: {"description": "No job is waiting"}}


@router.post("/queue/dequeue", response_model=Job, responses=NO_JOB)
async def dequeue_many(request: Request, body: DequeueRequest, state: StateDep) -> Response:
    require_executor(request, state)
    if not body.queues:
        return Response(status_code=204)
    return await _dequeue(request, state, list(dict.fromkeys(body.queues)), body, with_queue=True)


@router.post("/queue/{queue}/dequeue", response_model=Job, responses=NO_JOB)
async def dequeue_one(queue: str, request: Request, body: DequeueRequest, state: StateDep) -> Response:
    require_executor(request, state)
    return await _dequeue(request, state, [queue], body, with_queue=False)


def _telemetry(body: HeartbeatRequest) -> Telemetry:
    return {
        "os": body.os,
        "architecture": body.architecture,
        "executor_version": body.executor_version,
        "git_version": body.git_version,
        "docker_version": body.docker_version,
        "src_cli_version": body.src_cli_version,
        "qemu_version": body.qemu_version,
        "hostname": body.hostname,
    }


def _int_ids(ids: list[str]) -> list[int]:
    try:
        return [int(str(i).split("-", 1)[0]) for i in ids]
    except ValueError as exc:
        raise BadRequest(f"job ids must be numbers: {exc}") from None


@router.post("/queue/{queue}/heartbeat")
async def heartbeat_one(
    queue: str, request: Request, body: HeartbeatRequest, state: StateDep
) -> HeartbeatResponse:
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    await state.require_queue(queue)
    ids = _int_ids(body.job_ids)
    rows, cancel = await state.db(state.store.heartbeat, body.executor_name, _telemetry(body), ids, [queue])
    known = [str(r.id) for r in rows if r.queue == queue]
    return HeartbeatResponse(known_ids=known, cancel_ids=[str(i) for i in cancel if str(i) in known])


@router.post("/queue/heartbeat")
async def heartbeat_many(request: Request, body: HeartbeatRequest, state: StateDep) -> HeartbeatResponse:
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    if not body.queue_names:
        raise BadRequest("queueNames must name the executor's queues")
    for q in body.queue_names:
        await state.require_queue(q)
    pairs: list[tuple[int, str]] = []
    for group in body.job_ids_by_queue or []:
        if group.queue_name not in body.queue_names:
            raise BadRequest(f"queue {group.queue_name!r} is not one of the executor's queueNames")
        pairs += [(i, group.queue_name) for i in _int_ids(group.job_ids)]
    rows, cancel = await state.db(
        state.store.heartbeat, body.executor_name, _telemetry(body), [i for i, _ in pairs], body.queue_names
    )
    wanted = set(pairs)
    known = [f"{r.id}-{r.queue}" for r in rows if (r.id, r.queue) in wanted]
    cancel_set = set(cancel)
    cancel_ids = [k for k in known if int(k.split("-", 1)[0]) in cancel_set]
    return HeartbeatResponse(known_ids=known, cancel_ids=cancel_ids)


async def _job_call(
    request: Request, state: ServerState, queue: str, op: JobOperation
) -> tuple[int | None, str]:
    """Authorize a job-scoped call; returns (attempt to fence on, executor name)."""
    who: JobAuth | None = await authorize_job_or_executor(request, state)
    if who is not None:
        if who.queue != queue:
            raise Forbidden(f"the job token is not for queue {queue!r}")
        if who.job_id != op.job_id:
            raise Forbidden("the job token belongs to another job")
        if op.attempt is not None and op.attempt != who.attempt:
            raise Conflict(f"stale attempt {op.attempt}: this token is for attempt {who.attempt}")
        return who.attempt, who.executor_name
    if not op.executor_name:
        raise BadRequest("executorName is required")
    return (op.attempt if state.settings.extensions else None), op.executor_name


@router.post("/queue/{queue}/addExecutionLogEntry")
async def add_log_entry(queue: str, request: Request, body: AddLogEntryRequest, state: StateDep) -> int:
    """Sourcegraph's add: answers the new entry's number."""
    attempt, name = await _job_call(request, state, queue, body)
    _check_log_size(state, body.out)
    entry_id = await state.db(state.store.add_log_entry, body.job_id, attempt, name, _entry(body))
    state.log_written(body.job_id)
    return entry_id


def _check_log_size(state: ServerState, out: str) -> None:
    if len(out.encode()) > state.settings.max_log_bytes:
        raise TooLarge(f"log output exceeds the server's cap of {state.settings.max_log_bytes} bytes")


def _entry(body: AddLogEntryRequest) -> dict[str, object]:
    """What the store keeps of a log entry request (its field names, not the wire's)."""
    return body.model_dump(include={"key", "command", "start_time", "exit_code", "duration_ms", "out"})


@router.post("/queue/{queue}/updateExecutionLogEntry", status_code=204)
async def update_log_entry(
    queue: str, request: Request, body: UpdateLogEntryRequest, state: StateDep
) -> Response:
    attempt, name = await _job_call(request, state, queue, body)
    _check_log_size(state, body.out)
    await state.db(state.store.update_log_entry, body.job_id, attempt, name, body.entry_id, _entry(body))
    state.log_written(body.job_id)
    return Response(status_code=204)


async def _mark(
    queue: str, request: Request, body: JobOperation, state: ServerState, outcome: MarkOutcome
) -> Response:
    attempt, name = await _job_call(request, state, queue, body)
    message = body.error_message if isinstance(body, MarkErrorRequest) else ""
    new_state = await state.db(
        state.store.mark,
        body.job_id,
        attempt,
        name,
        outcome,
        message,
        retry_backoff=state.settings.retry_backoff,
    )
    state.metrics.finished.labels(queue, new_state.value).inc()
    state.log_written(body.job_id)  # a follower of its log sees the end
    return Response(status_code=204)


@router.post("/queue/{queue}/markComplete", status_code=204)
async def mark_complete(queue: str, request: Request, body: JobOperation, state: StateDep) -> Response:
    return await _mark(queue, request, body, state, MarkOutcome.COMPLETE)


@router.post("/queue/{queue}/markErrored", status_code=204)
async def mark_errored(queue: str, request: Request, body: MarkErrorRequest, state: StateDep) -> Response:
    return await _mark(queue, request, body, state, MarkOutcome.ERRORED)


@router.post("/queue/{queue}/markFailed", status_code=204)
async def mark_failed(queue: str, request: Request, body: MarkErrorRequest, state: StateDep) -> Response:
    return await _mark(queue, request, body, state, MarkOutcome.FAILED)


# -- corral extensions -------------------------------------------------------------------------
def _extensions_on(state: ServerState) -> None:
    if not state.settings.extensions:
        raise Gone("corral protocol extensions are switched off on this server")


@router.post("/queue/{queue}/appendExecutionLogEntry")
async def append_log_entry(
    queue: str, request: Request, body: AppendLogRequest, state: StateDep
) -> AppendLogResponse:
    _extensions_on(state)
    attempt, name = await _job_call(request, state, queue, body)
    data = body.data.encode()
    offset = await state.db(
        state.store.append_log,
        body.job_id,
        attempt,
        name,
        body.entry_id,
        body.offset,
        data,
        exit_code=body.exit_code,
        duration_ms=body.duration_ms,
        max_bytes=state.settings.max_log_bytes,
    )
    state.log_written(body.job_id)
    return AppendLogResponse(offset=offset)


@router.post("/queue/{queue}/uploadResult", status_code=204)
async def upload_result(queue: str, request: Request, body: JobResult, state: StateDep) -> Response:
    _extensions_on(state)
    attempt, name = await _job_call(request, state, queue, body)
    result = {"exit_codes": body.exit_codes, "diff": body.diff, "files": body.files, "outcome": body.outcome}
    await state.db(state.store.put_result, body.job_id, attempt, name, result)
    return Response(status_code=204)


@router.post("/queue/cancelWatch")
async def cancel_watch(request: Request, body: CancelWatchRequest, state: StateDep) -> CancelWatchResponse:
    """Answer as soon as one of the executor's jobs is canceled, or after waitSeconds with none."""
    _extensions_on(state)
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("executorName is required")
    key = [f"cancel:{body.executor_name}"]
    deadline = time.monotonic() + min(max(body.wait_seconds, 0.0), state.settings.long_poll_max)
    while True:
        fut = state.notifier.register(key)
        try:
            ids = await state.db(state.store.cancel_requested, body.executor_name, body.job_ids)
            remaining = deadline - time.monotonic()
            if ids or remaining <= 0 or state.notifier.closed:
                return CancelWatchResponse(cancel_ids=ids)
            await state.notifier.wait(fut, min(remaining, RECHECK * 5))
        finally:
            state.notifier.unregister(key, fut)
