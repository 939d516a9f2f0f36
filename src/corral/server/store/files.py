"""The file store: files by bucket and key, their content in the database (bounded).

Jobs name such files in `files` by `{"bucket", "key"}` instead of carrying their content; executors
fetch them from /.executors/files/<bucket>/<key> (corral.server.routers.files). Producers put and
delete them (/api/v1/files). Each file is at most MAX_STORED_FILE_BYTES, the whole store at most
MAX_STORE_BYTES and MAX_STORE_FILES (checked in the write transaction; on PostgreSQL under an
advisory lock, so that concurrent puts cannot pass the bound together).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, delete, func, select, tuple_, update

from corral.errors import NotFound, TooLarge
from corral.protocol.producer import MAX_STORED_FILE_BYTES
from corral.server.store.engine import Clock, Database
from corral.server.store.tables import files

__all__ = ["MAX_STORE_BYTES", "MAX_STORE_FILES", "FileInfo", "Files", "StoredFile"]

MAX_STORE_BYTES = 8 * 1024**3  # bytes of all stored files together
MAX_STORE_FILES = 100_000  # files in the store
FILES_LOCK_ID = 0x636F7272616C_0003  # PostgreSQL advisory lock key of the store's bound check
REF_BATCH = 500  # (bucket, key) pairs looked up per query


@dataclass(frozen=True, slots=True)
class FileInfo:
    bucket: str
    key: str
    size: int
    sha256: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredFile:
    info: FileInfo
    content: bytes


_INFO = (files.c.bucket, files.c.key, files.c.size, files.c.sha256, files.c.created_at, files.c.updated_at)


class Files:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def put(self, bucket: str, key: str, content: bytes) -> tuple[FileInfo, bool]:
        """Store (or replace) a file; returns it and whether it is new. TooLarge over a bound."""
        if len(content) > MAX_STORED_FILE_BYTES:
            raise TooLarge(f"the file has {len(content)} bytes, over the limit of {MAX_STORED_FILE_BYTES}")
        digest = hashlib.sha256(content).hexdigest()
        now = self.clock()
        with self.db.write() as conn:
            if not self.db.sqlite:
                conn.execute(select(func.pg_advisory_xact_lock(FILES_LOCK_ID)))
            old = conn.execute(select(*_INFO).where(_where(bucket, key))).first()
            self._check_bounds(conn, len(content) - (old.size if old else 0), 0 if old else 1)
            if old is None:
                conn.execute(
                    files.insert().values(
                        bucket=bucket,
                        key=key,
                        size=len(content),
                        sha256=digest,
                        content=content,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return FileInfo(bucket, key, len(content), digest, now, now), True
            conn.execute(
                update(files)
                .where(_where(bucket, key))
                .values(size=len(content), sha256=digest, content=content, updated_at=now)
            )
            return FileInfo(bucket, key, len(content), digest, old.created_at, now), False

    def _check_bounds(self, conn: Connection, more_bytes: int, more_files: int) -> None:
        count, total = conn.execute(select(func.count(), func.coalesce(func.sum(files.c.size), 0))).one()
        if more_files and count + more_files > MAX_STORE_FILES:
            raise TooLarge(f"the file store holds {count} files, its limit is {MAX_STORE_FILES}: delete some")
        if total + more_bytes > MAX_STORE_BYTES:
            raise TooLarge(
                f"the file store holds {total} bytes; this file would take it over its limit of "
                f"{MAX_STORE_BYTES} bytes: delete some"
            )

    def info(self, bucket: str, key: str) -> FileInfo | None:
        with self.db.read() as conn:
            r = conn.execute(select(*_INFO).where(_where(bucket, key))).first()
        return FileInfo(*r) if r is not None else None

    def get(self, bucket: str, key: str) -> StoredFile:
        with self.db.read() as conn:
            r = conn.execute(select(*_INFO, files.c.content).where(_where(bucket, key))).first()
        if r is None:
            raise NotFound(f"file {bucket}/{key} does not exist")
        return StoredFile(FileInfo(*r[:6]), bytes(r[6]))

    def infos(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FileInfo]:
        """The stored files among `refs` (absent ones are missing from the answer)."""
        found: dict[tuple[str, str], FileInfo] = {}
        wanted = list(dict.fromkeys(refs))
        with self.db.read() as conn:
            for i in range(0, len(wanted), REF_BATCH):
                batch = wanted[i : i + REF_BATCH]
                rows = conn.execute(select(*_INFO).where(tuple_(files.c.bucket, files.c.key).in_(batch)))
                for r in rows:
                    found[(r.bucket, r.key)] = FileInfo(*r)
        return found

    def list(self, bucket: str, *, prefix: str = "", limit: int = 100) -> list[FileInfo]:
        query = select(*_INFO).where(files.c.bucket == bucket)
        if prefix:
            # keys are of [A-Za-z0-9._~+=,@:-/]: no LIKE wildcard (% _) needs escaping but "_"
            query = query.where(files.c.key.like(prefix.replace("_", "\\_") + "%", escape="\\"))
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(files.c.key).limit(limit))
            return [FileInfo(*r) for r in rows]

    def delete(self, bucket: str, key: str) -> FileInfo:
        with self.db.write() as conn:
            r = conn.execute(select(*_INFO).where(_where(bucket, key))).first()
            if r is None:
                raise NotFound(f"file {bucket}/{key} does not exist")
            conn.execute(delete(files).where(_where(bucket, key)))
        return FileInfo(*r)


def _where(bucket: str, key: str) -> ColumnElement[bool]:
    return (files.c.bucket == bucket) & (files.c.key == key)
