"""Files by bucket and key: the executors' files API and the producers' file store API.

Executors (as Sourcegraph's frontend serves them, cmd/frontend/internal/executorqueue/queuehandler.go
and cmd/frontend/internal/batches/httpapi/file_handler.go; the client is cmd/executor/internal/
apiclient/files/client.go):

    GET  /.executors/files/<bucket>/<key>   200 application/octet-stream, 404 when it does not exist
    HEAD /.executors/files/<bucket>/<key>   200 when it exists, 404 when not (the client's only test)

with the job token (Bearer + X-Sourcegraph-Job-ID + X-Sourcegraph-Executor-Name) or the executor
token. A job token opens only the files its job names (in `files`, by bucket and key) and only while
its attempt runs: any other file is answered 404 as if it did not exist, so a job learns nothing of
other blobs. (Sourcegraph's route opens any file to any `batches` job token: its keys are random ids.)

Producers (admin token, as the rest of /api/v1):

    PUT    /api/v1/files/<bucket>/<key>   the raw body (at most MAX_STORED_FILE_BYTES) -> FileView,
                                          201 when new, 200 when it replaced one
    GET    /api/v1/files/<bucket>/<key>   the content
    GET    /api/v1/files/<bucket>         [FileView] (?prefix=, ?limit=)
    DELETE /api/v1/files/<bucket>/<key>   204 (a job naming it then fails to fetch it)

Buckets and keys follow corral.protocol.check_file_ref (no traversal, bounded length).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response

from corral.errors import BadRequest, Invalid, NotFound, TooLarge
from corral.protocol import FILE_BUCKET_RE, check_file_ref
from corral.protocol.producer import MAX_REFERENCED_FILES_BYTES, MAX_STORED_FILE_BYTES, FileIn, FileView
from corral.server.auth import authorize_job_or_executor, live_job, require_admin
from corral.server.deps import ServerState, StateDep
from corral.server.jobview import iso
from corral.server.store import FileInfo

__all__ = ["job_files", "router"]

OCTETS = "application/octet-stream"
MAX_LIST = 1000  # files one listing answers at most


async def _admin(request: Request, state: StateDep) -> None:
    require_admin(request, state)


router = APIRouter()
ADMIN = [Depends(_admin)]
PRODUCER = "/api/v1/files"
EXECUTOR = "/.executors/files"


def _ref(bucket: str, key: str) -> None:
    try:
        check_file_ref(bucket, key)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _view(f: FileInfo) -> FileView:
    return FileView(
        bucket=f.bucket,
        key=f.key,
        size=f.size,
        sha256=f.sha256,
        created_at=iso(f.created_at),
        updated_at=iso(f.updated_at),
    )


def _missing(bucket: str, key: str) -> NotFound:
    return NotFound(f"file {bucket}/{key} does not exist")


# -- executors --------------------------------------------------------------------------------
@router.get(EXECUTOR + "/{bucket}/{key:path}", response_class=Response, tags=["executor files"])
@router.head(EXECUTOR + "/{bucket}/{key:path}", response_class=Response, tags=["executor files"])
async def executor_file(bucket: str, key: str, request: Request, state: StateDep) -> Response:
    head = request.method == "HEAD"
    try:
        _ref(bucket, key)
    except BadRequest:
        if head:  # a HEAD has no body to say why: no such file
            return Response(status_code=404)
        raise
    who = await authorize_job_or_executor(request, state)
    if who is not None:
        job = await live_job(state, who)
        named = any(
            f.get("bucket") == bucket and f.get("key") == key for f in (job.spec.get("files") or {}).values()
        )
        if not named:  # as if it did not exist: a job token reads only its own job's files
            if head:
                return Response(status_code=404)
            raise _missing(bucket, key)
    if head:
        info = await state.db(state.store.file_info, bucket, key)
        if info is None:
            return Response(status_code=404)
        return Response(status_code=200)
    stored = await state.db(state.store.get_file, bucket, key)
    return Response(stored.content, media_type=OCTETS)


# -- producers --------------------------------------------------------------------------------
@router.put(PRODUCER + "/{bucket}/{key:path}", status_code=201, tags=["producer API"], dependencies=ADMIN)
async def put_file(bucket: str, key: str, request: Request, response: Response, state: StateDep) -> FileView:
    _ref(bucket, key)
    content = await request.body()  # bounded while it arrives (bodies.BodyClass.FILE)
    if len(content) > MAX_STORED_FILE_BYTES:
        raise TooLarge(f"the file has {len(content)} bytes, over the limit of {MAX_STORED_FILE_BYTES}")
    info, created = await state.db(state.store.put_file, bucket, key, content)
    if not created:
        response.status_code = 200
    return _view(info)


@router.get(
    PRODUCER + "/{bucket}/{key:path}", response_class=Response, tags=["producer API"], dependencies=ADMIN
)
async def get_file(bucket: str, key: str, state: StateDep) -> Response:
    _ref(bucket, key)
    stored = await state.db(state.store.get_file, bucket, key)
    return Response(stored.content, media_type=OCTETS)


@router.get(PRODUCER + "/{bucket}", tags=["producer API"], dependencies=ADMIN)
async def list_files(
    bucket: str,
    state: StateDep,
    prefix: str = Query(default="", max_length=1024),
    limit: int = Query(default=100, ge=1, le=MAX_LIST),
) -> list[FileView]:
    if not FILE_BUCKET_RE.match(bucket):
        raise BadRequest(f"invalid file bucket {bucket[:80]!r}: use 1-63 characters of [a-z0-9._-]")
    return [_view(f) for f in await state.db(state.store.list_files, bucket, prefix=prefix, limit=limit)]


@router.delete(PRODUCER + "/{bucket}/{key:path}", status_code=204, tags=["producer API"], dependencies=ADMIN)
async def delete_file(bucket: str, key: str, state: StateDep) -> Response:
    _ref(bucket, key)
    await state.db(state.store.delete_file, bucket, key)
    return Response(status_code=204)


# -- jobs naming stored files -----------------------------------------------------------------
async def job_files(state: ServerState, files: dict[str, FileIn]) -> dict[str, dict[str, str]]:
    """A submitted job's `files` as the job keeps them (corral.protocol.producer.FileIn.spec).
    Every stored file it names must exist now, and together they are at most
    MAX_REFERENCED_FILES_BYTES (the executor fetches each of them for every attempt)."""
    refs = [(f.bucket, f.key) for f in files.values() if f.bucket is not None and f.key is not None]
    if refs:
        found = await state.db(state.store.file_infos, refs)
        missing = [f"{b}/{k}" for b, k in refs if (b, k) not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise Invalid(f"the job names files that are not in the file store: {shown} (PUT them first)")
        total = sum(found[r].size for r in refs)  # each reference is fetched: count every one
        if total > MAX_REFERENCED_FILES_BYTES:
            raise Invalid(
                f"the stored files the job names total {total} bytes, over the limit of "
                f"{MAX_REFERENCED_FILES_BYTES} bytes"
            )
    return {path: f.spec() for path, f in files.items()}
