"""How a stored job is shown: to executors (the Sourcegraph Job) and to producers (a redacted JobView)."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

from corral.executor.redact import MAX_SECRET_BYTES, Redactor, RedactorCache, cache_key
from corral.protocol import ZERO_TIME, Job, JobView, VirtualMachineFile
from corral.server.store import JobRow

V2_MIN = (4, 3, 0)  # Sourcegraph executors from 4.3.0 take v2 jobs (base64 file contents)
SEMVER_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def parse_version(v: str) -> tuple[int, int, int] | None:
    m = SEMVER_RE.match(v)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def is_dev(v: str) -> bool:
    return v in ("dev", "0.0.0") or v.startswith(("0.0.0+", "0.0.0-"))


def job_version_for(executor_version: str) -> int:
    parsed = parse_version(executor_version)
    # corral's own executors (major version 0 while corral is young) and dev builds speak v2.
    if is_dev(executor_version) or parsed is None or parsed[0] == 0 or parsed >= V2_MIN:
        return 2
    return 1


def executor_job(row: JobRow, token: str, *, version: int, with_queue: bool) -> Job:
    """The Job an executor gets. Only the fields set here are sent (`dump_job`): v1 jobs carry no
    `version` or `dockerAuthConfig`, and the one-queue route no `queue`, as Sourcegraph's server."""
    spec = row.spec
    files: dict[str, VirtualMachineFile] = {}
    for path, f in (spec.get("files") or {}).items():
        content = f.get("content", "")
        if version < 2 and content:
            content = base64.b64decode(content).decode("utf-8", "replace")
        files[path] = VirtualMachineFile(
            content=content,
            bucket=f.get("bucket"),
            key=f.get("key"),
            modified_at=f.get("modifiedAt", ZERO_TIME),
        )
    job = Job(
        id=row.id,
        token=token,
        repository_name=spec.get("repositoryName", ""),
        repository_directory=spec.get("repositoryDirectory", ""),
        commit=spec.get("commit", ""),
        fetch_tags=bool(spec.get("fetchTags")),
        shallow_clone=bool(spec.get("shallowClone")),
        sparse_checkout=spec.get("sparseCheckout"),
        files=files,
        docker_steps=spec.get("dockerSteps"),
        cli_steps=spec.get("cliSteps"),
        redacted_values=spec.get("redactedValues"),
        # corral extensions
        attempt=row.attempt,
        timeout_seconds=spec.get("timeoutSeconds"),
        outputs=spec.get("outputs"),
        namespace=spec.get("namespace"),
    )
    if version >= 2:
        job.version = 2
        job.docker_auth_config = spec.get("dockerAuthConfig") or {}
    if with_queue:
        job.queue = row.queue
    return job


def dump_job(job: Job) -> bytes:
    """The Job JSON: wire names, the fields that were set (explicit nulls included)."""
    return job.model_dump_json(by_alias=True, exclude_unset=True).encode()


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
        found = Redactor(values, max_bytes=2 * MAX_SECRET_BYTES)  # "<redacted>" for empty ones
        _REDACTORS.put(key, found)
    return found


def _redact(value: Any, redactor: Redactor) -> Any:
    """`value` with every secret replaced by its replacement, in every string (keys included)."""
    if isinstance(value, str):
        return redactor.redact_text(value)
    if isinstance(value, list):
        return [_redact(v, redactor) for v in value]
    if isinstance(value, dict):
        return {_redact(k, redactor): _redact(v, redactor) for k, v in value.items()}
    return value


def producer_job(row: JobRow) -> JobView:
    """The producer's view. Never hand secrets back: the redactedValues keys (the secrets) are
    replaced wherever they appear (step commands, env, image, dir, ...), the map shows only the
    replacements, and files are shown by size, not content (a file may hold a secret in any form)."""
    spec = dict(row.spec)
    redacted: dict[str, str] = spec.pop("redactedValues", None) or {}
    files = spec.pop("files", None) or {}
    redactor = _redactor(row.id, redacted)
    if redactor is not None:
        spec = _redact(spec, redactor)
    spec["files"] = {
        (_redact(path, redactor) if redactor else path): {
            "size": _decoded_size(f.get("content", "")),
            "modifiedAt": f.get("modifiedAt"),
        }
        for path, f in files.items()
    }
    if redacted:
        spec["redactedValues"] = {f"<redacted {i}>": v for i, v in enumerate(redacted.values())}
    if spec.get("dockerAuthConfig"):
        spec["dockerAuthConfig"] = {
            "auths": dict.fromkeys(spec["dockerAuthConfig"].get("auths", {}), "<redacted>")
        }
    error = row.failure_message
    return JobView(
        id=row.id,
        queue=row.queue,
        state=row.state.value,
        repository_name=row.repository_name,
        commit=row.commit,
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
