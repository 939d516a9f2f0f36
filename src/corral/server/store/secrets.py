"""Executor secrets: sealed values by (name, namespace), and the log of every hand-off to a job.

The store keeps only sealed values (corral.server.secretbox seals and opens them; the store never
sees a key). A secret's namespace is None (global), `user:NAME` or `org:NAME`; in the table the
global scope is "" so that (name, namespace) is unique on both databases. `resolve` answers, for
each name, the secret of the job's namespace if there is one, else the global one.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from corral.errors import Conflict, NotFound
from corral.server.store.engine import Clock, Database
from corral.server.store.tables import secret_accesses, secrets

__all__ = ["SealedSecret", "Sealer", "SecretAccess", "SecretInfo", "Secrets"]

MAX_ACCESSES = 1000  # access records one listing answers at most
RESEAL_TRIES = 5  # reads of a secret that changes under a re-encryption before it gives up

# (secret id) -> (sealed value, key fingerprint): the store calls it once the row has its id.
Sealer = Callable[[int], tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    id: int
    name: str
    namespace: str | None
    key_id: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class SealedSecret:
    info: SecretInfo
    sealed: bytes


@dataclass(frozen=True, slots=True)
class SecretAccess:
    secret_id: int
    name: str
    namespace: str | None
    job_id: int
    attempt: int
    executor_name: str
    accessed_at: float


_INFO = (
    secrets.c.id,
    secrets.c.name,
    secrets.c.namespace,
    secrets.c.key_id,
    secrets.c.created_at,
    secrets.c.updated_at,
)

# Built once: every dequeue runs it (the job's names and DOCKER_AUTH_CONFIG, in two scopes at most).
_RESOLVE = select(*_INFO, secrets.c.sealed).where(
    secrets.c.name.in_(bindparam("names", expanding=True)),
    secrets.c.namespace.in_(bindparam("scopes", expanding=True)),
)


def _info(r: Sequence[object]) -> SecretInfo:
    sid, name, ns, key_id, created, updated = r[:6]
    assert isinstance(sid, int) and isinstance(name, str) and isinstance(ns, str)
    assert isinstance(key_id, str) and isinstance(created, float) and isinstance(updated, float)
    return SecretInfo(sid, name, ns or None, key_id, created, updated)


class Secrets:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def create(self, name: str, namespace: str | None, seal: Sealer) -> SecretInfo:
        """A new secret (Conflict when the name is taken in that scope); `seal` gets its id."""
        now = self.clock()
        try:
            with self.db.write() as conn:
                taken = conn.execute(
                    select(secrets.c.id).where(
                        secrets.c.name == name, secrets.c.namespace == (namespace or "")
                    )
                ).first()
                if taken is not None:
                    raise _taken(name, namespace, taken.id)
                inserted = conn.execute(
                    secrets.insert().values(
                        name=name,
                        namespace=namespace or "",
                        sealed=b"",
                        key_id="",
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key
                assert inserted is not None
                sid = int(inserted[0])
                sealed, key_id = seal(sid)
                conn.execute(update(secrets).where(secrets.c.id == sid).values(sealed=sealed, key_id=key_id))
        except IntegrityError:  # a concurrent create of the same name won the race
            raise _taken(name, namespace, None) from None
        return SecretInfo(sid, name, namespace, key_id, now, now)

    def set_value(self, secret_id: int, seal: Sealer) -> SecretInfo:
        now = self.clock()
        with self.db.write() as conn:
            r = conn.execute(select(*_INFO).where(secrets.c.id == secret_id)).first()
            if r is None:
                raise NotFound(f"secret {secret_id} does not exist")
            sealed, key_id = seal(secret_id)
            conn.execute(
                update(secrets)
                .where(secrets.c.id == secret_id)
                .values(sealed=sealed, key_id=key_id, updated_at=now)
            )
        old = _info(r)
        return SecretInfo(old.id, old.name, old.namespace, key_id, old.created_at, now)

    def get(self, secret_id: int) -> SealedSecret:
        with self.db.read() as conn:
            r = conn.execute(select(*_INFO, secrets.c.sealed).where(secrets.c.id == secret_id)).first()
        if r is None:
            raise NotFound(f"secret {secret_id} does not exist")
        return SealedSecret(_info(r), bytes(r[6]))

    def list(self, namespace: str | None = None, *, all_scopes: bool = True) -> list[SecretInfo]:
        query = select(*_INFO)
        if not all_scopes:
            query = query.where(secrets.c.namespace == (namespace or ""))
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(secrets.c.namespace, secrets.c.name))
            return [_info(r) for r in rows]

    def delete(self, secret_id: int) -> SecretInfo:
        with self.db.write() as conn:
            r = conn.execute(select(*_INFO).where(secrets.c.id == secret_id)).first()
            if r is None:
                raise NotFound(f"secret {secret_id} does not exist")
            conn.execute(delete(secrets).where(secrets.c.id == secret_id))
        return _info(r)

    def resolve(self, names: Sequence[str], namespace: str | None) -> dict[str, SealedSecret]:
        """For each name that exists: the secret of `namespace` if any, else the global one."""
        if not names:
            return {}
        scopes = ["", namespace] if namespace else [""]
        found: dict[str, SealedSecret] = {}
        with self.db.read() as conn:
            rows = conn.execute(_RESOLVE, {"names": list(dict.fromkeys(names)), "scopes": scopes})
            for r in rows:
                s = SealedSecret(_info(r), bytes(r[6]))
                if s.info.name not in found or s.info.namespace is not None:  # the namespace's wins
                    found[s.info.name] = s
        return found

    def record_accesses(
        self, handed: Sequence[SecretInfo], job_id: int, attempt: int, executor_name: str
    ) -> None:
        if not handed:
            return
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(
                secret_accesses.insert(),
                [
                    {
                        "secret_id": s.id,
                        "name": s.name,
                        "namespace": s.namespace or "",
                        "job_id": job_id,
                        "attempt": attempt,
                        "executor_name": executor_name,
                        "accessed_at": now,
                    }
                    for s in handed
                ],
            )

    def accesses(self, secret_id: int, *, limit: int = 100) -> builtins.list[SecretAccess]:
        """The latest hand-offs of a secret (also of a deleted one), newest first."""
        c = secret_accesses.c
        query = (
            select(c.secret_id, c.name, c.namespace, c.job_id, c.attempt, c.executor_name, c.accessed_at)
            .where(c.secret_id == secret_id)
            .order_by(c.id.desc())
            .limit(min(limit, MAX_ACCESSES))
        )
        with self.db.read() as conn:
            return [
                SecretAccess(r[0], r[1], r[2] or None, r[3], r[4], r[5], r[6]) for r in conn.execute(query)
            ]

    def key_counts(self) -> dict[str, int]:
        """Key fingerprint -> how many secrets it sealed (what the server's keys must open)."""
        with self.db.read() as conn:
            rows = conn.execute(select(secrets.c.key_id, func.count()).group_by(secrets.c.key_id))
            return {str(r[0]): int(r[1]) for r in rows}

    def stale(self, key_id: str) -> builtins.list[int]:
        """Ids of the secrets not sealed with the key `key_id` (what a rotation re-encrypts)."""
        with self.db.read() as conn:
            rows = conn.execute(select(secrets.c.id).where(secrets.c.key_id != key_id).order_by(secrets.c.id))
            return [r.id for r in rows]

    def reseal(
        self, secret_id: int, key_id: str, reseal: Callable[[SealedSecret], tuple[bytes, str]]
    ) -> bool:
        """Re-encrypt one secret unless it is sealed with `key_id` already. A compare-and-swap: the
        new ciphertext replaces only the one that was read, so a value set meanwhile (`set_value`
        commits between the read and the write: PostgreSQL's READ COMMITTED takes no row lock on a
        SELECT) is never overwritten by the old value; it is read again instead."""
        for _ in range(RESEAL_TRIES):
            with self.db.write() as conn:
                r = conn.execute(select(*_INFO, secrets.c.sealed).where(secrets.c.id == secret_id)).first()
                if r is None or r.key_id == key_id:
                    return False
                old = bytes(r[6])
                sealed, new_id = reseal(SealedSecret(_info(r), old))
                swapped = conn.execute(
                    update(secrets)
                    .where(secrets.c.id == secret_id, secrets.c.sealed == old)
                    .values(sealed=sealed, key_id=new_id)
                ).rowcount
            if swapped:
                return True
        raise Conflict(
            f"secret {secret_id} changed during each of {RESEAL_TRIES} re-encryptions: run it again"
        )


def _taken(name: str, namespace: str | None, sid: int | None) -> Conflict:
    scope = namespace or "the global scope"
    which = f" (secret {sid})" if sid is not None else ""
    return Conflict(
        f"a secret named {name} already exists in {scope}{which}: set a new value with "
        "PUT /api/v1/secrets/<id> (corral secret set), or delete it first"
    )
