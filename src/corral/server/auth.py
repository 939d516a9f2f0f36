"""Who is calling: the executor secret, a job token, or the admin token (constant-time compares)."""

from __future__ import annotations

import hmac

from fastapi import Request

from corral.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from corral.server.deps import ServerState
from corral.server.store import JobAuth, JobRow, JobState

CORRAL_EXECUTOR_AGENT = "corral-executor/"  # the User-Agent prefix of corral's own executor


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_corral_executor(request: Request) -> bool:
    """A request from corral's own executor (its User-Agent `corral-executor/<version>`). Only it
    gets corral's fields in a job and the version-skew rule; anything else is served as Sourcegraph's
    frontend serves a Sourcegraph executor (whose User-Agent is its own, `Go-http-client/...`)."""
    return request.headers.get("user-agent", "").startswith(CORRAL_EXECUTOR_AGENT)


def require_executor(request: Request, state: ServerState) -> None:
    """`Authorization: token-executor <secret>` or 401 (500 when no secret is configured)."""
    secret = state.settings.executors_access_token
    if not secret:
        raise NotConfigured("Executors are not configured on this instance")
    parts = request.headers.get("authorization", "").split(" ")
    if len(parts) != 2 or parts[0] != "token-executor" or not parts[1] or not _equal(parts[1], secret):
        raise Unauthorized("invalid or missing executor token (Authorization: token-executor <secret>)")


async def authorize_job_or_executor(request: Request, state: ServerState) -> JobAuth | None:
    """A job-scoped call: the job's Bearer token (returns who it is) or the executor token (None)."""
    header = request.headers.get("authorization", "")
    if header.startswith("token-executor "):
        # validateJobRequest (cmd/frontend/internal/executorqueue/queuehandler.go): on a job route a
        # wrong executor token is 403, not the executor routes' 401.
        try:
            require_executor(request, state)
        except Unauthorized:
            raise Forbidden("invalid executor token (Authorization: token-executor <secret>)") from None
        return None
    parts = header.split(" ")
    if len(parts) != 2 or parts[0] != "Bearer" or not parts[1]:
        raise Unauthorized("missing job token (Authorization: Bearer <job token>)")
    raw_id = request.headers.get(JOB_ID_HEADER, "")
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):  # a 64-bit id, ASCII digits
        raise BadRequest(f"{JOB_ID_HEADER} header is missing or not a number")
    name = request.headers.get(EXECUTOR_NAME_HEADER, "")
    if not name:
        raise BadRequest(f"{EXECUTOR_NAME_HEADER} header is missing")
    auth = await state.db(state.store.job_auth, parts[1])
    if auth is None:
        raise Unauthorized("invalid job token")
    if auth.job_id != int(raw_id):
        raise Forbidden("the job token belongs to another job")
    if auth.executor_name != name:
        raise Forbidden("the job token belongs to another executor")
    return auth


async def live_job(state: ServerState, who: JobAuth) -> JobRow:
    """The job of a job token whose attempt is still running, or 401: a token dies when its
    attempt ends (marked, canceled, lost and requeued, released); a requeued job's next attempt
    has a token of its own. (The queue routes get the same answer from the store's fence, 409.)"""
    job = await state.db(state.store.get_job, who.job_id)
    if job.state != JobState.PROCESSING or job.attempt != who.attempt:
        raise Unauthorized("the job token is no longer valid: its attempt has ended")
    return job


def require_admin(request: Request, state: ServerState) -> None:
    parts = request.headers.get("authorization", "").split(" ")
    token = state.settings.admin_token
    if len(parts) != 2 or parts[0] != "Bearer" or not token or not _equal(parts[1], token):
        raise Unauthorized("invalid or missing admin token (Authorization: Bearer <CORRAL_ADMIN_TOKEN>)")


def require_metrics(request: Request, state: ServerState) -> None:
    """/metrics: the admin token or the metrics token (Bearer), unless the operator made it public."""
    s = state.settings
    if s.metrics_public:
        return
    parts = request.headers.get("authorization", "").split(" ")
    given = parts[1] if len(parts) == 2 and parts[0] == "Bearer" else ""
    ok = [t for t in (s.admin_token, s.metrics_token) if t and given and _equal(given, t)]
    if not ok:
        raise Unauthorized(
            "invalid or missing metrics token (Authorization: Bearer <CORRAL_METRICS_TOKEN or admin "
            "token>; CORRAL_METRICS_PUBLIC=true opens /metrics)",
        )
