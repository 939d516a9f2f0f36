"""The server's app factory. Nothing is built at import time: `create_app(settings)` makes one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral import __version__
from corral.errors import CorralError
from corral.protocol import EXTENSIONS, EXTENSIONS_HEADER, LOG_MAX_BYTES_HEADER
from corral.protocol.versions import VERSION_HEADER
from corral.server.auth import require_metrics
from corral.server.bodies import BodyClass, body_class, limit_for
from corral.server.deps import ServerState
from corral.server.gate import Gate
from corral.server.repos import Mirrors
from corral.server.routers import api, files, git, queue, secrets
from corral.server.secretbox import Keyring
from corral.server.settings import ServerSettings
from corral.server.statuses import error_response
from corral.server.store import SqlStore, Store

log = logging.getLogger("corral.server")
JSON_PATHS = ("/.executors/queue/", "/api/")
DOCS_ASSETS = "/docs/assets"  # Swagger UI's and ReDoc's scripts, served by the server itself


class BodyLimit:
    """Refuse a request body over its route's bound (bodies.BODY_LIMITS) with 413, as it arrives
    and before a route reads it (pure ASGI). `max_body_bytes` bounds the big routes."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, extensions: bool, max_log_bytes: int | None = None
    ) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.ext_headers = (
            [(EXTENSIONS_HEADER.lower().encode(), ",".join(EXTENSIONS).encode())] if extensions else []
        )
        # corral's version, with extensions or without: corral's executor checks the skew rule on it
        self.ext_headers.append((VERSION_HEADER.lower().encode(), __version__.encode()))
        if extensions and max_log_bytes is not None:  # so that executors cap their logs within ours
            self.ext_headers.append((LOG_MAX_BYTES_HEADER.lower().encode(), str(max_log_bytes).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["path"].startswith(JSON_PATHS) and headers.get(b"content-type") != b"application/json":
            # These routes take only JSON, whatever the client labelled it (as Sourcegraph's server does).
            kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        cls = body_class(scope["method"], scope["path"])
        limit = limit_for(cls, self.max_body_bytes)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(scope, receive, send, limit, cls)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit, cls)
            return msg

        async def send_with_header(msg: Message) -> None:
            if (
                msg["type"] == "http.response.start"
                and self.ext_headers
                and scope["path"].startswith("/.executors")
            ):
                msg["headers"] = [*msg.get("headers", []), *self.ext_headers]
            await send(msg)

        try:
            await self.app(scope, limited, send_with_header)
        except _TooLarge:
            await _too_large(scope, receive, send_with_header, limit, cls)


def _too_large_message(limit: int, cls: BodyClass) -> str:
    return f"request body exceeds the limit of {limit} bytes (for {cls.value} requests)"


class _TooLarge(StarletteHTTPException):
    def __init__(self, limit: int, cls: BodyClass) -> None:
        super().__init__(413, _too_large_message(limit, cls))


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int, cls: BodyClass) -> None:
    resp = JSONResponse({"error": _too_large_message(limit, cls)}, status_code=413)
    await resp(scope, receive, send)


async def _resetter(state: ServerState) -> None:
    s = state.settings
    while True:
        try:
            requeued, failed = await state.db(state.store.reset_stalled, s.stalled_after, s.max_resets)
            if requeued or failed:
                log.warning(
                    "resetter: requeued %s, failed %s (no heartbeat for %.0fs)",
                    requeued,
                    failed,
                    s.stalled_after,
                )
                state.metrics.resets.inc(len(requeued) + len(failed))
                for q in {r.name for r in await state.db(state.store.list_queues)}:
                    await state.wake(q)
                for job_id in (*requeued, *failed):  # followers see the end, or the requeue marker
                    state.log_written(job_id)
        except Exception:
            log.exception("resetter sweep failed; retrying")
        await asyncio.sleep(s.resetter_interval)


class Server(uvicorn.Server):
    """uvicorn's server, which also ends held long-polls as soon as a stop signal arrives (they
    answer "no job" and executors reconnect) instead of cutting them at the graceful timeout."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "corral", None)
        if state is not None and hasattr(self, "_loop"):
            self._loop.call_soon_threadsafe(state.notifier.close)
        super().handle_exit(sig, frame)


def run(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    uvicorn_config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5
    )
    Server(uvicorn_config).run()


def _private_dir(path: Path) -> None:
    """The data dir holds the database (every job's secrets), mirrors and the admin token: owner only.

    Made 0700; an existing one that others can enter is tightened (and said), so that a process of
    another uid on the host, a job that got out of its sandbox included, cannot read the database.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("data dir %s was mode %o; making it 0700 (it holds the job database)", path, mode)
        os.chmod(path, 0o700)


def _app(docs: bool, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> FastAPI:
    """The FastAPI app; with `docs`, Swagger UI at /docs and ReDoc at /redoc, their scripts, styles
    and icon served from DOCS_ASSETS out of the fastapi-offline package (no CDN: the pages work on a
    server without internet access, and a browser fetches nothing from elsewhere)."""
    if not docs:
        return FastAPI(title="corral", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app: FastAPI = FastAPIOffline(
        title="corral", version=__version__, lifespan=lifespan, static_url=DOCS_ASSETS
    )
    return app


def create_app(settings: ServerSettings, store: Store | None = None) -> FastAPI:
    settings.check()
    settings.ensure_admin_token()
    _private_dir(settings.data_dir)
    settings.repos_dir.mkdir(parents=True, exist_ok=True)
    store = store or SqlStore(settings.db_url)
    store.migrate()
    keyring = Keyring.load(  # executor secrets (secretbox.py): refuses keys that open no stored secret
        settings.data_dir, shared=store.shared, stored=store.secrets.key_counts()
    )
    state = ServerState(settings=settings, store=store, keyring=keyring)
    state.metrics.watch_store(lambda: (store.list_queues(), api.executors_active(state)))
    state.metrics.long_polls.set_function(state.notifier.waiting)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_resetter(state)), asyncio.create_task(store.listen(state.heard))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = _app(settings.docs, lifespan)
    app.state.corral = state
    app.state.mirrors = Mirrors(settings.repos_dir)
    app.include_router(queue.router)
    app.include_router(git.router)
    app.include_router(api.router)
    app.include_router(files.router)
    app.include_router(secrets.router)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(CorralError)
    async def _domain_error(_r: Request, exc: CorralError) -> Response:
        return error_response(exc)  # the one status table: corral.server.statuses

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_r: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, status_code=400)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        require_metrics(request, state)
        body = await asyncio.to_thread(state.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4")

    # The last added runs first: BodyLimit (size bounds, content type, extension header), then Gate
    # (tokens from the headers alone), then the routes; neither reads a body before the routes do.
    app.add_middleware(Gate, state=state)
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        extensions=settings.extensions,
        max_log_bytes=settings.max_log_bytes,
    )
    return app
