"""The executor queue API, as Sourcegraph's executors speak it, plus corral's optional extensions.

Sourcegraph's: dequeue, heartbeat (one queue or several), add/update execution log entries,
markComplete / markErrored / markFailed, and the auth check. corral's (advertised in the
X-Corral-Extensions header; off with `extensions=false`): long-poll dequeue (`waitSeconds`),
appendExecutionLogEntry (byte offsets), uploadResult, cancelWatch, attempt fencing, and reattach
(an executor that restarted takes back a job attempt still leased to it).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from corral import __version__
from corral.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    TooLarge,
    VersionSkew,
)
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
    KnownLogEntry,
    MarkErrorRequest,
    ReattachRequest,
    UpdateLogEntryRequest,
)
from corral.protocol.versions import InvalidVersion, job_version_for, skew_problem, version_error
from corral.server.auth import authorize_job_or_executor, is_corral_executor, require_executor
from corral.server.bodies import BoundedJsonRoute
from corral.server.deps import ServerState, StateDep
from corral.server.jobview import dump_job, executor_job
from corral.server.routers.secrets import SecretsUnavailable, hand_off
from corral.server.store import JobAuth, MarkOutcome, Telemetry
from corral.server.uploads import check_result

router = APIRouter(prefix="/.executors", tags=["executor queue"], route_class=BoundedJsonRoute)
RECHECK = 1.0  # seconds: a long-poll looks again this often (retry backoffs end without a wake-up)
JOB_ID_RE = re.compile(r"[0-9]{1,18}")  # a job id on the wire (a 64-bit integer column)


def check_version_skew(executor_version: str) -> None:
    """corral's executors: corral.protocol.versions.skew_problem (at most one minor version apart,
    dev builds exempt). A version that is no semver is refused as Sourcegraph refuses it."""
    try:
        problem = skew_problem(executor_version, __version__)
    except InvalidVersion as exc:
        raise ApiError(version_error(executor_version, exc)) from None  # 500, as Sourcegraph's dequeue
    if problem:
        raise VersionSkew(problem)


def _job_version(request: Request, version: str) -> int:
    """The Job payload version for this dequeue. Sourcegraph's executors get what Sourcegraph's
    frontend gives them (corral.protocol.versions: v1 without a version, an error for a bad one);
    corral's own executor (its User-Agent) speaks v2 and is held to the version-skew rule."""
    if is_corral_executor(request):
        if version:  # as Sourcegraph's: no version, no check
            check_version_skew(version)
        return 2
    try:
        return job_version_for(version)
    except InvalidVersion as exc:
        raise ApiError(version_error(version, exc)) from None


@router.get("/test/auth", response_class=PlainTextResponse)
async def test_auth(request: Request, state: StateDep) -> str:
    require_executor(request, state)
    return "ok"


async def _dequeue(
    request: Request, state: ServerState, queues: list[str], req: DequeueRequest, with_queue: bool
) -> Response:
    version = _checked(request, req)
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
    corral = state.settings.extensions and is_corral_executor(request)
    try:
        job = executor_job(row, token, version=version, with_queue=with_queue, corral=corral)
        job = await hand_off(state, row, job, req.executor_name)  # the job's executor secrets
    except SecretsUnavailable:  # hand_off errored the attempt (retried later): no job to run now
        return Response(status_code=204)
    except Invalid as exc:
        # As Sourcegraph's dequeue when its RecordTransformer fails: the record is marked failed
        # ("failed to transform record: ...") and the executor gets a 500.
        await state.db(
            state.store.mark,
            row.id,
            row.attempt,
            req.executor_name,
            MarkOutcome.FAILED,
            f"failed to transform record: {exc.message}",
        )
        state.log_written(row.id)
        raise ApiError(f"RecordTransformer: {exc.message}") from None
    state.metrics.dequeued.labels(row.queue).inc()
    return Response(dump_job(job), media_type="application/json")


def _checked(request: Request, req: DequeueRequest) -> int:
    """What every dequeue checks first, in Sourcegraph's order (handler.go/multihandler.go,
    dequeue): the executor's name, then its version; returns the job version it gets."""
    if not req.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    return _job_version(request, req.version)


NO_JOB: dict[int | str, dict[str, Any]] = {204: {"description": "No job is waiting"}}


@router.post("/queue/dequeue", response_model=Job, responses=NO_JOB)
async def dequeue_many(request: Request, body: DequeueRequest, state: StateDep) -> Response:
    require_executor(request, state)
    _checked(request, body)  # before the queues, as Sourcegraph: no queues with a bad name is an error
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
        "kubernetes_version": body.kubernetes_version,
        "hostname": body.hostname,
    }


def _int_ids(ids: list[str]) -> list[int]:
    """Heartbeat ids (strings, numbers already read as Go reads them: 18.0 is "18") as job ids. Go's
    store casts them to integers (`id = ANY(...)`); one that is not a whole number is refused."""
    out = []
    for i in ids:
        if not JOB_ID_RE.fullmatch(i):
            raise BadRequest(f"job ids must be whole numbers: {i[:40]!r} is not")
        out.append(int(i))
    return out


@router.post("/queue/{queue}/heartbeat")
async def heartbeat_one(
    queue: str, request: Request, body: HeartbeatRequest, state: StateDep
) -> HeartbeatResponse:
    """As Sourcegraph's HandleHeartbeat and dbworker Store.Heartbeat: no ids is `[]` and `[]`;
    otherwise each list is null when nothing is in it."""
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    await state.require_queue(queue)
    ids = _int_ids(body.job_ids)
    rows, cancel = await state.db(state.store.heartbeat, body.executor_name, _telemetry(body), ids, [queue])
    if not ids:
        return HeartbeatResponse(known_ids=[], cancel_ids=[])
    known = [str(r.id) for r in rows if r.queue == queue]
    cancel_ids = [str(i) for i in cancel if str(i) in known]
    return HeartbeatResponse(known_ids=known or None, cancel_ids=cancel_ids or None)


@router.post("/queue/heartbeat")
async def heartbeat_many(request: Request, body: HeartbeatRequest, state: StateDep) -> HeartbeatResponse:
    """As Sourcegraph's MultiHandler.HandleHeartbeat: ids answered "<id>-<queue>", each list null
    when nothing is in it (no running jobs: both null)."""
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("worker hostname cannot be empty (executorName)")
    if not body.queue_names:
        raise BadRequest("queueNames must be set for multi-queue heartbeats (the executor's queues)")
    for q in body.queue_names:
        await state.require_queue(q)
    groups = body.job_ids_by_queue or []
    unsupported = [g.queue_name[:80] for g in groups if g.queue_name not in body.queue_names]
    if unsupported:  # multihandler.go's words (which say queueJobIds for the field jobIdsByQueue)
        raise BadRequest(
            f"unsupported queue name(s) '{', '.join(unsupported[:20])}' submitted in jobIdsByQueue, "
            f"executor is configured for queues '{', '.join(body.queue_names)}'"
        )
    pairs: list[tuple[int, str]] = []
    for group in groups:
        pairs += [(i, group.queue_name) for i in _int_ids(group.job_ids)]
    rows, cancel = await state.db(
        state.store.heartbeat, body.executor_name, _telemetry(body), [i for i, _ in pairs], body.queue_names
    )
    wanted = set(pairs)
    known = [f"{r.id}-{r.queue}" for r in rows if (r.id, r.queue) in wanted]
    cancel_set = set(cancel)
    cancel_ids = [k for k in known if int(k.split("-", 1)[0]) in cancel_set]
    return HeartbeatResponse(known_ids=known or None, cancel_ids=cancel_ids or None)


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
    job = await state.db(state.store.get_job, body.job_id)
    await asyncio.to_thread(check_result, body, job.spec)  # decodes up to 16 MiB of base64
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


@router.post("/queue/{queue}/reattach")
async def reattach(queue: str, request: Request, body: ReattachRequest, state: StateDep) -> Response:
    """An executor that restarted asks for a job attempt it held before (the kubernetes runtime's
    Jobs outlive their executor): granted only while that attempt is still leased to this executor
    name (processing on that attempt, not canceled, heartbeat within `stalled_after`; else 409, an
    unknown job 404). The answer is the job as dequeue gave it, with a fresh job token for the same
    attempt (the server keeps only tokens' hashes; the old token stops working), and the attempt's
    log entries (their stored lengths and exit codes: where the executor's writes resume). The
    lease is renewed with it; the executor's heartbeats carry it on."""
    _extensions_on(state)
    require_executor(request, state)
    if not body.executor_name:
        raise BadRequest("executorName is required")
    if body.attempt is None:
        raise BadRequest("attempt is required")
    await state.require_queue(queue)
    row = await state.db(state.store.get_job, body.job_id)
    if row.queue != queue:
        raise NotFound(f"unknown job {body.job_id} in queue {queue!r}")
    token = secrets.token_urlsafe(32)
    stalled = state.settings.stalled_after
    row = await state.db(state.store.reattach, body.job_id, body.attempt, body.executor_name, token, stalled)
    try:
        job = executor_job(row, token, version=2, with_queue=True, corral=True)
        job = await hand_off(state, row, job, body.executor_name)  # the job's executor secrets again
    except SecretsUnavailable as exc:  # hand_off errored the attempt: there is nothing to reattach
        raise Conflict(f"the job's secrets cannot be handed out: {exc}") from None
    except Invalid as exc:
        raise Conflict(f"the job cannot be handed out: {exc.message}") from None
    heads = await state.db(state.store.log_heads, body.job_id, body.attempt)
    entries = [
        KnownLogEntry(entry_id=e.entry_id, key=e.key, out_len=e.out_len, exit_code=e.exit_code) for e in heads
    ]
    answer = {"job": job, "entries": [e.model_dump(by_alias=True) for e in entries]}
    # ReattachResponse, written as dump_job writes the Job (the payload can be large: no model round trip)
    body_out = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body_out, media_type="application/json")
