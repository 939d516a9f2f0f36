"""Git smart HTTP for executors (read-only): `git http-backend` behind the job token.

`/.executors/git/<repositoryName>/info/refs?service=git-upload-pack` and `.../git-upload-pack`.
A job token opens only its own job's repository; the executor token opens any. Pushing is refused.
Partial clones (`--filter=blob:none`) are served. Other request headers, such as the
`X-Sourcegraph-Actor-UID: internal` that Sourcegraph's executor sends on every git request, are
ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corral.errors import Unauthorized
from corral.server.auth import authorize_job_or_executor, live_job
from corral.server.deps import ServerState

router = APIRouter()
READ_CHUNK = 64 * 1024  # bytes


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


@router.api_route("/.executors/git/{path:path}", methods=["GET", "POST"], include_in_schema=False)
async def git_http(path: str, request: Request) -> Response:
    state: ServerState = request.app.state.corral
    if path.endswith("/info/refs"):
        repo, tail = path[: -len("/info/refs")], "/info/refs"
        if request.query_params.get("service") != "git-upload-pack":
            return _error(403, "only git-upload-pack (fetch) is served")
    elif path.endswith("/git-upload-pack"):
        repo, tail = path[: -len("/git-upload-pack")], "/git-upload-pack"
    else:
        return _error(404, "not a git smart HTTP path; only fetching is served")
    who = await authorize_job_or_executor(request, state)
    if who is not None and who.repository_name != repo:
        return _error(403, f"the job token does not open repository {repo!r}")
    if who is not None:
        try:
            await live_job(state, who)
        except Unauthorized as exc:
            return _error(401, exc.message)
    row = await state.db(state.store.get_repo, repo)
    root = state.settings.repos_dir
    rel = row.path
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": "/" + str(rel) + tail,
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.url.query,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "REMOTE_ADDR": request.client.host if request.client else "",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": "2",
        # Executors fetch the exact commit of the job, which need not be a branch tip.
        "GIT_CONFIG_KEY_0": "uploadpack.allowAnySHA1InWant",
        "GIT_CONFIG_VALUE_0": "true",
        # Sourcegraph's executor fetches a sparse checkout with --filter=blob:none (partial clone;
        # cmd/executor/internal/worker/workspace/clone.go), and so does corral's: the blobs outside
        # the sparse paths are then never sent.
        "GIT_CONFIG_KEY_1": "uploadpack.allowFilter",
        "GIT_CONFIG_VALUE_1": "true",
    }
    if "git-protocol" in request.headers:
        env["GIT_PROTOCOL"] = request.headers["git-protocol"]
    if "content-encoding" in request.headers:
        env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
    body = await request.body()
    proc = await asyncio.create_subprocess_exec(
        "git",
        "http-backend",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(body)
            await stdin.drain()
        stdin.close()

    feeder = asyncio.create_task(feed())
    status, headers = 200, {}
    while True:
        line = await stdout.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode("latin-1").rstrip("\r\n").partition(":")
        if k.lower() == "status":
            status = int(v.strip().split()[0])
        else:
            headers[k.strip()] = v.strip()

    async def stream() -> AsyncIterator[bytes]:
        try:
            while chunk := await stdout.read(READ_CHUNK):
                yield chunk
        finally:
            await feeder
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    headers.pop("Content-Length", None)
    media = headers.pop("Content-Type", None)
    return StreamingResponse(stream(), status_code=status, headers=headers, media_type=media)
