"""How a stored job is shown: to executors (the Sourcegraph Job) and to producers (a redacted JobView)."""

from __future__ import annotations

import base64
import codecs
import json
from datetime import UTC, datetime
from typing import Any

from corral.errors import Invalid
from corral.executor.redact import MAX_SECRET_BYTES, RedactionLimitError, Redactor, RedactorCache, cache_key
from corral.executor.runtimes.docker.credentials import auth_values
from corral.protocol import ZERO_TIME, JobView, check_workspace_dir, check_workspace_path
from corral.server.store import JobRow


def _auths(spec: dict[str, Any]) -> dict[str, Any]:
    """The job's registry credentials as stored (checked at submit: `JobIn`); a row from before that
    check with another shape shows as none rather than breaking the job list or an executor."""
    config = spec.get("dockerAuthConfig")
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return {}
    return {k: v for k, v in auths.items() if isinstance(k, str) and isinstance(v, dict)}


def executor_job(row: JobRow, token: str, *, version: int, with_queue: bool, corral: bool) -> dict[str, Any]:
    """The Job JSON an executor gets, as Sourcegraph's `types.Job.MarshalJSON` writes it
    (internal/executor/types/job.go; its fixtures in handler_test.go): the v2 or v1 payload in Go's
    field order. v1 has no `version` or `dockerAuthConfig` and file contents as text; v2 always
    has `dockerAuthConfig` (`{}` without auths). `queue` only from the several-queue dequeue.
    Nil lists and maps are null, `files` is always an object; a file's `content`, `bucket` and
    `key` are omitted when empty, `modifiedAt` never. A step's `key` is omitted when empty.
    corral's fields (`attempt`, `timeoutSeconds`, `outputs`, `namespace`, `network`) only with `corral`:
    for corral's own executor on a server with extensions on (a Sourcegraph executor never sees them).

    Raises Invalid when a stored path leaves the workspace (the dequeue then fails the job, as
    Sourcegraph's handler does when its RecordTransformer fails)."""
    spec = row.spec
    _check_paths(spec)
    out: dict[str, Any] = {}
    if version >= 2:
        out["version"] = 2
    out["id"] = row.id
    out["token"] = token
    if with_queue:
        out["queue"] = row.queue
    out["repositoryName"] = spec.get("repositoryName", "")
    out["repositoryDirectory"] = spec.get("repositoryDirectory", "")
    out["commit"] = spec.get("commit", "")
    out["fetchTags"] = bool(spec.get("fetchTags"))
    out["shallowClone"] = bool(spec.get("shallowClone"))
    out["sparseCheckout"] = spec.get("sparseCheckout")
    out["files"] = {path: _file(f, version) for path, f in (spec.get("files") or {}).items()}
    out["dockerSteps"] = _steps(spec.get("dockerSteps"), ("image", "commands"))
    out["cliSteps"] = _steps(spec.get("cliSteps"), ("command",))
    out["redactedValues"] = spec.get("redactedValues")
    if version >= 2:  # DockerAuthConfig is a struct: omitempty never drops it; its auths map is omitempty
        auths = _auths(spec)
        out["dockerAuthConfig"] = {"auths": auths} if auths else {}
    if corral:
        out["attempt"] = row.attempt
        for k in ("timeoutSeconds", "outputs", "namespace", "network"):
            if spec.get(k) is not None:
                out[k] = spec[k]
    return out


def _check_paths(spec: dict[str, Any]) -> None:
    try:
        for path in spec.get("files") or {}:
            check_workspace_path(path)
        check_workspace_dir(spec.get("repositoryDirectory", ""))
        for step in [*(spec.get("dockerSteps") or []), *(spec.get("cliSteps") or [])]:
            check_workspace_dir(step.get("dir", ""))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _file(f: dict[str, Any], version: int) -> dict[str, Any]:
    """v2VirtualMachineFile (content as base64 of the bytes) or v1VirtualMachineFile (content as
    Go's string(bytes), which json.Marshal writes with each byte of invalid UTF-8 as U+FFFD)."""
    out: dict[str, Any] = {}
    content = f.get("content") or ""
    if content:
        out["content"] = content if version >= 2 else go_string(base64.b64decode(content))
    for k in ("bucket", "key"):
        if f.get(k):
            out[k] = f[k]
    out["modifiedAt"] = f.get("modifiedAt") or ZERO_TIME
    return out


def go_string(data: bytes) -> str:
    """`data` as Go's encoding/json writes a string holding it: valid UTF-8 as it is, every byte
    of an invalid sequence as one U+FFFD (utf8.DecodeRuneInString answers size 1 for it)."""
    return data.decode("utf-8", errors=_ONE_BYTE_FFFD)


def _one_byte_fffd(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd", exc.start + 1


_ONE_BYTE_FFFD = "corral-go-json-string"
codecs.register_error(_ONE_BYTE_FFFD, _one_byte_fffd)


def _steps(steps: list[dict[str, Any]] | None, fields: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """DockerStep (key omitempty, image, commands, dir, env) or CliStep (key omitempty, command, dir,
    env) in Go's field order; a nil list is null."""
    if steps is None:
        return None
    out = []
    for step in steps:
        shaped: dict[str, Any] = {"key": step["key"]} if step.get("key") else {}
        for k in fields:
            shaped[k] = step.get(k, "" if k == "image" else None)
        shaped["dir"] = step.get("dir", "")
        shaped["env"] = step.get("env")
        out.append(shaped)
    return out


def dump_job(job: dict[str, Any]) -> bytes:
    """The Job JSON as bytes (UTF-8, compact, as json.Marshal; key order as built)."""
    return json.dumps(job, ensure_ascii=False, separators=(",", ":")).encode()


def _decoded_size(b64: str) -> int:
    """Bytes a base64 text decodes to, without decoding it."""
    return len(b64) * 3 // 4 - b64[-2:].count("=") if b64 else 0


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else None


_REDACTORS = RedactorCache(64)  # the views of the last jobs shown build theirs once


def _redactor(job_id: int, redacted: dict[str, str]) -> Redactor | None:
    """The executor's redactor for the job's secrets (every form it redacts in logs: each line of a
    multi-line secret, base64, URL and JSON forms...), or None without secrets."""
    values = {k: v or "<redacted>" for k, v in redacted.items() if k}
    if not values:
        return None
    key = cache_key(job_id, values, ())
    found = _REDACTORS.get(key)
    if found is None:
        try:
            found = Redactor(values, max_bytes=2 * MAX_SECRET_BYTES)  # "<redacted>" for empty ones
        except RedactionLimitError:  # a row the producer API's bounds never saw: show no text at all
            return _MaskAll()
        _REDACTORS.put(key, found)
    return found


class _MaskAll(Redactor):
    """For a job with more secrets than a redactor takes: every string of its view is masked."""

    def __init__(self) -> None:
        super().__init__({})

    def redact_text(self, text: str) -> str:
        return "<redacted: the job has more secrets than can be redacted>" if text else text


def _redact(value: Any, redactor: Redactor) -> Any:
    """`value` with every secret replaced by its replacement, in every string (keys included)."""
    if isinstance(value, str):
        return redactor.redact_text(value)
    if isinstance(value, list):
        return [_redact(v, redactor) for v in value]
    if isinstance(value, dict):
        return {_redact(k, redactor): _redact(v, redactor) for k, v in value.items()}
    return value


def _file_view(f: dict[str, Any]) -> dict[str, Any]:
    """A job's file as its producer sees it: by size, or by its place in the file store."""
    if f.get("bucket"):
        return {"bucket": f["bucket"], "key": f.get("key"), "modifiedAt": f.get("modifiedAt")}
    return {"size": _decoded_size(f.get("content", "")), "modifiedAt": f.get("modifiedAt")}


def producer_job(row: JobRow) -> JobView:
    """The producer's view. Never hand secrets back: the redactedValues keys (the secrets) are
    replaced wherever they appear (step commands, env, image, dir, ...), the map shows only the
    replacements, and files are shown by size, not content (a file may hold a secret in any form)."""
    spec = dict(row.spec)
    redacted: dict[str, str] = spec.pop("redactedValues", None) or {}
    files = spec.pop("files", None) or {}
    # the registry credentials are secrets of the job too: a password typed into a step shows masked
    hidden = dict.fromkeys(auth_values({"auths": _auths(spec)}), "<redacted>") | redacted
    redactor = _redactor(row.id, hidden)
    if redactor is not None:
        spec = _redact(spec, redactor)
    spec["files"] = {
        (_redact(path, redactor) if redactor else path): _file_view(f) for path, f in files.items()
    }
    if redacted:
        spec["redactedValues"] = {f"<redacted {i}>": v for i, v in enumerate(redacted.values())}
    if spec.get("dockerAuthConfig"):
        spec["dockerAuthConfig"] = {"auths": dict.fromkeys(_auths(spec), "<redacted>")}
    error = row.failure_message
    return JobView(
        id=row.id,
        queue=row.queue,
        state=row.state.value,
        # the repository's name and the commit are the producer's text too (a name may hold a secret)
        repository_name=_redact(row.repository_name, redactor) if redactor else row.repository_name,
        commit=_redact(row.commit, redactor) if redactor else row.commit,
        priority=row.priority,
        created_at=iso(row.created_at),
        started_at=iso(row.started_at),
        finished_at=iso(row.finished_at),
        executor_name=row.executor_name,
        attempt=row.attempt,
        num_resets=row.num_resets,
        num_failures=row.num_failures,
        cancel_requested=row.cancel,
        error=_redact(error, redactor) if error and redactor else error,
        outcome=row.outcome,
        exit_codes=row.exit_codes,
        spec=spec,
    )
