"""Authenticate before any body is read (pure ASGI).

A route's dependencies (the token checks in auth.py) run only after FastAPI has received and
parsed the request body, so an unauthenticated client could make the server buffer and parse up to
`max_body_bytes` (one 60 MiB JSON body took the server from 115 MB to 1.7 GB). `Gate` runs the same
checks from the headers alone, before the app sees the request, and answers 401/400/403 without
receiving a byte of the body. The routes still check again (the gate is the first line, not the only).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import ApiError
from corral.server.auth import authorize_job_or_executor, require_admin, require_executor
from corral.server.deps import ServerState
from corral.server.statuses import error_response

# Routes under /.executors/queue/ that a job token may call (the others take the executor token).
JOB_OPERATIONS = (
    "/addExecutionLogEntry",
    "/updateExecutionLogEntry",
    "/appendExecutionLogEntry",
    "/markComplete",
    "/markErrored",
    "/markFailed",
    "/uploadResult",
)


class Gate:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self.check(scope)
            except ApiError as exc:
                await error_response(exc)(scope, _no_body, send)
                return
        await self.app(scope, receive, send)

    async def check(self, scope: Scope) -> None:
        path: str = scope["path"]
        request = Request(scope)  # headers only: nothing here may read the body
        if path.startswith(("/.executors/git/", "/.executors/files/")):
            await authorize_job_or_executor(request, self.state)
        elif path.startswith("/.executors/queue/"):
            if path.endswith(JOB_OPERATIONS):
                await authorize_job_or_executor(request, self.state)
            else:
                require_executor(request, self.state)
        elif path.startswith("/.executors/"):
            require_executor(request, self.state)
        elif path == "/api/v1" or path.startswith("/api/"):
            require_admin(request, self.state)


async def _no_body() -> Message:
    """What an early answer sees if it asks for the body: nothing (the body is never received)."""
    return {"type": "http.disconnect"}
