"""Executor secrets: the producers' API (admin token; corral.protocol.secrets lists the routes), the
check at submit, and the hand-off at dequeue.

At dequeue (`hand_off`, called by the queue router for every job it hands out) a job gets:

- every secret it names in `secrets`, resolved in its `namespace` first, then globally, as
  `NAME=value` appended to the env of every docker and CLI step, and in `redactedValues` (value ->
  `${{ secrets.NAME }}`, Sourcegraph's replacement), so that corral's and Sourcegraph's executors
  redact it in every form;
- the `DOCKER_AUTH_CONFIG` secret of its namespace (else the global one), named or not, as its
  `dockerAuthConfig`, as Sourcegraph's frontend does (batches' transformRecord: json.Unmarshal of the
  secret into the Job's DockerAuthConfig). Unmarshal into a Job that already holds auths keeps them and
  overwrites the registries the secret names: the secret wins per registry, the job's own entries
  for other registries stay. Its strings are redacted too. A v1 Job has no dockerAuthConfig.

Each value handed out is recorded (secret, job, attempt, executor, time). A named secret that no
longer exists, more redacted values than an executor takes, or more env than MAX_HANDOFF_BYTES
(each step gets every NAME=value) fails the job at dequeue with a message naming the secret or the
numbers (never a value), as a failed transform fails a Sourcegraph job. A value that does not open
with this server's keys (the operator's fault, not the job's) errors the attempt for a retry and the
executor gets no job. The stored job keeps only names; no read API shows a value.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from corral.errors import CorralError, Invalid, NotConfigured
from corral.executor.runtimes.docker.credentials import auth_values
from corral.protocol.producer import MAX_REDACTED_BYTES, MAX_REDACTED_VALUES, JobIn
from corral.protocol.secrets import (
    DOCKER_AUTH_CONFIG,
    MAX_HANDOFF_BYTES,
    NAMESPACE_RE,
    ReencryptView,
    SecretAccessView,
    SecretIn,
    SecretValueIn,
    SecretView,
    check_namespace,
)
from corral.server.auth import require_admin
from corral.server.bodies import BoundedJsonRoute
from corral.server.deps import ServerState, StateDep
from corral.server.jobview import iso
from corral.server.secretbox import Keyring, SecretKeyError, associated_data
from corral.server.store import JobRow, MarkOutcome
from corral.server.store.secrets import SealedSecret, SecretAccess, SecretInfo

__all__ = ["SecretsUnavailable", "check_job", "hand_off", "router"]

log = logging.getLogger("corral.server")


async def _admin(request: Request, state: StateDep) -> None:
    require_admin(request, state)


SecretId = Annotated[int, Path(ge=1, le=2**63 - 1)]  # a 64-bit id column
router = APIRouter(
    prefix="/api/v1/secrets",
    tags=["producer API"],
    dependencies=[Depends(_admin)],
    route_class=BoundedJsonRoute,
)


def keyring(state: ServerState) -> Keyring:
    if state.keyring is None:
        raise NotConfigured("the server has no secrets key (CORRAL_SECRETS_KEY or <data dir>/secrets-key)")
    return state.keyring


def replacement(name: str) -> str:
    return f"${{{{ secrets.{name} }}}}"


def _what(info: SecretInfo) -> str:
    return f"secret {info.name} ({info.namespace or 'global'}, id {info.id})"


def _open(ring: Keyring, s: SealedSecret) -> str:
    return ring.open(
        s.sealed, associated_data(s.info.id, s.info.name, s.info.namespace), s.info.key_id, _what(s.info)
    )


def _view(s: SecretInfo) -> SecretView:
    return SecretView(
        id=s.id,
        name=s.name,
        namespace=s.namespace,
        created_at=iso(s.created_at),
        updated_at=iso(s.updated_at),
    )


def _access_view(a: SecretAccess) -> SecretAccessView:
    return SecretAccessView(
        secret_id=a.secret_id,
        name=a.name,
        namespace=a.namespace,
        job_id=a.job_id,
        attempt=a.attempt,
        executor_name=a.executor_name,
        accessed_at=iso(a.accessed_at),
    )


def _check_docker_auth(name: str, value: str) -> dict[str, Any]:
    """A DOCKER_AUTH_CONFIG value as Go decodes it into the Job (the shapes JobIn accepts)."""
    try:
        config = json.loads(value)
        checked = JobIn._auth_config(config)
    except ValueError as exc:  # JSONDecodeError is one; never echo the value
        why = "it is not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise Invalid(f"{name} must be a docker config: {why}") from None
    assert checked is not None
    return checked


# -- producers --------------------------------------------------------------------------------
@router.post("", status_code=201)
async def create_secret(body: SecretIn, state: StateDep) -> SecretView:
    ring = keyring(state)
    if body.name == DOCKER_AUTH_CONFIG:
        _check_docker_auth(body.name, body.value)

    def seal(sid: int) -> tuple[bytes, str]:
        return ring.seal(body.value, associated_data(sid, body.name, body.namespace))

    return _view(await state.db(state.store.secrets.create, body.name, body.namespace, seal))


@router.get("")
async def list_secrets(
    state: StateDep,
    namespace: str | None = Query(default=None, max_length=256),
    scope: Literal["all", "global"] = "all",
) -> list[SecretView]:
    """Every secret (`?namespace=user:NAME` for one namespace's, `?scope=global` for the global ones)."""
    if scope == "global":
        rows = await state.db(state.store.secrets.list, None, all_scopes=False)
    elif namespace is not None:
        try:
            check_namespace(namespace)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        rows = await state.db(state.store.secrets.list, namespace, all_scopes=False)
    else:
        rows = await state.db(state.store.secrets.list)
    return [_view(s) for s in rows]


@router.put("/{secret_id}")
async def set_secret(secret_id: SecretId, body: SecretValueIn, state: StateDep) -> SecretView:
    ring = keyring(state)
    info = (await state.db(state.store.secrets.get, secret_id)).info
    if info.name == DOCKER_AUTH_CONFIG:
        _check_docker_auth(info.name, body.value)

    def seal(sid: int) -> tuple[bytes, str]:
        return ring.seal(body.value, associated_data(sid, info.name, info.namespace))

    return _view(await state.db(state.store.secrets.set_value, secret_id, seal))


@router.delete("/{secret_id}", status_code=204)
async def delete_secret(secret_id: SecretId, state: StateDep) -> Response:
    await state.db(state.store.secrets.delete, secret_id)
    return Response(status_code=204)


@router.get("/{secret_id}/accesses")
async def secret_accesses(
    secret_id: SecretId, state: StateDep, limit: int = Query(default=100, ge=1, le=1000)
) -> list[SecretAccessView]:
    """Who was handed the secret's value, newest first (kept after the secret is deleted)."""
    return [_access_view(a) for a in await state.db(state.store.secrets.accesses, secret_id, limit=limit)]


@router.post("/reencrypt")
async def reencrypt(state: StateDep) -> ReencryptView:
    """Every secret under the first key (rotation). A secret that no configured key opens is an
    error naming it; the ones before it stay re-encrypted (run again after fixing the keys)."""
    ring = keyring(state)
    store = state.store.secrets
    total = len(await state.db(store.list))
    done = 0

    def reseal(s: SealedSecret) -> tuple[bytes, str]:
        return ring.seal(_open(ring, s), associated_data(s.info.id, s.info.name, s.info.namespace))

    for sid in await state.db(store.stale, ring.primary_id):
        try:
            done += await state.db(store.reseal, sid, ring.primary_id, reseal)
        except SecretKeyError as exc:
            raise NotConfigured(f"{exc.message} ({done} re-encrypted before it)") from None
    return ReencryptView(reencrypted=done, total=total, key_id=ring.primary_id)


# -- jobs naming secrets ----------------------------------------------------------------------
class SecretsUnavailable(CorralError):
    """A secret the job gets does not open with this server's keys: the attempt was errored (and
    will be retried); the dequeue hands out no job."""


@dataclass(frozen=True)
class _Resolved:
    env: dict[str, str]  # name -> value, of the names the job lists
    auth: tuple[SecretInfo, dict[str, Any], str] | None  # the DOCKER_AUTH_CONFIG secret, parsed, raw
    handed: list[SecretInfo]


def _scope(spec_namespace: Any) -> str | None:
    """The namespace a job's secrets resolve in (a free-form label of older jobs resolves none)."""
    return spec_namespace if isinstance(spec_namespace, str) and NAMESPACE_RE.match(spec_namespace) else None


async def _resolve(state: ServerState, names: list[str], namespace: str | None, *, auth: bool) -> _Resolved:
    wanted = [*names, DOCKER_AUTH_CONFIG] if auth else names
    found = await state.db(state.store.secrets.resolve, wanted, namespace) if wanted else {}
    missing = [n for n in names if n not in found]
    if missing:
        where = f"{namespace} or the global scope" if namespace else "the global scope"
        raise Invalid(f"the job names secrets that do not exist in {where}: {', '.join(missing[:20])}")
    if not found:
        return _Resolved({}, None, [])
    ring = keyring(state)  # SecretKeyError when a value does not open: the callers decide
    env = {n: _open(ring, found[n]) for n in names}
    auth_secret = found.get(DOCKER_AUTH_CONFIG) if auth else None
    parsed = None
    if auth_secret is not None:
        raw = env.get(DOCKER_AUTH_CONFIG) or _open(ring, auth_secret)
        parsed = (auth_secret.info, _check_docker_auth(_what(auth_secret.info), raw), raw)
    handed = [found[n].info for n in names]
    if parsed is not None and parsed[0] not in handed:
        handed.append(parsed[0])
    return _Resolved(env, parsed, handed)


def _redacted(existing: dict[str, str] | None, r: _Resolved) -> dict[str, str]:
    out = dict(existing or {})
    for name, value in r.env.items():
        out[value] = replacement(name)
    if r.auth is not None:
        info, config, raw = r.auth
        out.setdefault(raw, replacement(info.name))
        for s in auth_values(config):  # auth, decoded user:password, password, identitytoken
            out.setdefault(s, replacement(info.name))
    if len(out) > MAX_REDACTED_VALUES:
        raise Invalid(
            f"the job's redacted values and secrets are {len(out)}, over the limit of {MAX_REDACTED_VALUES}"
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
    if size > MAX_REDACTED_BYTES:
        raise Invalid(
            f"the job's redacted values and secrets total {size} bytes, over the limit of "
            f"{MAX_REDACTED_BYTES}"
        )
    return out


def _check_fanout(env: dict[str, str], steps: int) -> None:
    """The bytes the hand-off adds to the dequeue answer (each step gets every NAME=value) stay
    within MAX_HANDOFF_BYTES (Invalid naming the numbers)."""
    each = sum(len(n.encode()) + len(v.encode()) + 1 for n, v in env.items())
    if each * steps > MAX_HANDOFF_BYTES:
        raise Invalid(
            f"the job's {len(env)} secrets ({each} bytes as NAME=value) in each of its {steps} steps "
            f"add {each * steps} bytes to its dequeue answer, over the limit of {MAX_HANDOFF_BYTES}: "
            "name fewer or smaller secrets, or use fewer steps"
        )


async def check_job(state: ServerState, body: JobIn) -> None:
    """At submit: every secret the job names exists now (Invalid naming the missing ones), and the
    job's redacted values with them, and the env they add to its steps, stay within an executor's
    bounds (values may change later: hand_off checks again)."""
    if body.secrets:
        try:
            r = await _resolve(state, body.secrets, body.namespace, auth=False)
        except SecretKeyError as exc:
            raise Invalid(exc.message) from None
        _redacted(body.redacted_values, r)
        _check_fanout(r.env, len(body.docker_steps) + len(body.cli_steps))


async def hand_off(
    state: ServerState, row: JobRow, job: dict[str, Any], executor_name: str
) -> dict[str, Any]:
    """The Job JSON `job` (built by jobview.executor_job) with the job's secrets in it; records
    each value handed out. Invalid (the job fails) when a secret is missing or the hand-off is over
    a bound. A secret no configured key opens (a key missing on this replica: an operator's fault,
    not the job's) errors the attempt instead, retried after the usual backoff, and raises
    SecretsUnavailable (the executor gets no job)."""
    names = list(row.spec.get("secrets") or [])
    try:
        r = await _resolve(state, names, _scope(row.spec.get("namespace")), auth="dockerAuthConfig" in job)
    except SecretKeyError as exc:
        message = f"failed to transform record: {exc.message} (retried: fix the server's keys)"
        await state.db(state.store.mark, row.id, row.attempt, executor_name, MarkOutcome.ERRORED, message)
        state.log_written(row.id)
        log.error("job %d: %s", row.id, exc.message)
        raise SecretsUnavailable(exc.message) from None
    if not r.handed:
        return job
    job["redactedValues"] = _redacted(job.get("redactedValues"), r)
    _check_fanout(r.env, sum(len(job.get(key) or []) for key in ("dockerSteps", "cliSteps")))
    if r.env:
        pairs = [f"{n}={v}" for n, v in r.env.items()]
        for key in ("dockerSteps", "cliSteps"):
            for step in job.get(key) or []:
                step["env"] = [*(step.get("env") or []), *pairs]
    if r.auth is not None:
        auths = dict(job.get("dockerAuthConfig", {}).get("auths") or {})
        auths.update(r.auth[1].get("auths") or {})  # json.Unmarshal into the Job: the secret's win
        job["dockerAuthConfig"] = {"auths": auths} if auths else {}
    await state.db(state.store.secrets.record_accesses, r.handed, row.id, row.attempt, executor_name)
    return job
