"""How a stored job is shown: to executors (the Sourcegraph Job JSON) and to producers."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

from corral.protocol import ZERO_TIME

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


def executor_job(row: dict[str, Any], token: str, *, version: int, with_queue: bool) -> dict[str, Any]:
    spec = row["spec"]
    files: dict[str, Any] = {}
    for path, f in (spec.get("files") or {}).items():
        content = f.get("content", "")
        if version < 2 and content:
            content = base64.b64decode(content).decode("utf-8", "replace")
        files[path] = {
            "content": content,
            "bucket": f.get("bucket"),
            "key": f.get("key"),
            "modifiedAt": f.get("modifiedAt", ZERO_TIME),
        }
    job: dict[str, Any] = {
        "id": row["id"],
        "token": token,
        "repositoryName": spec.get("repositoryName", ""),
        "repositoryDirectory": spec.get("repositoryDirectory", ""),
        "commit": spec.get("commit", ""),
        "fetchTags": bool(spec.get("fetchTags")),
        "shallowClone": bool(spec.get("shallowClone")),
        "sparseCheckout": spec.get("sparseCheckout"),
        "files": files,
        "dockerSteps": spec.get("dockerSteps"),
        "cliSteps": spec.get("cliSteps"),
        "redactedValues": spec.get("redactedValues"),
        # corral extensions
        "attempt": row["attempt"],
        "timeoutSeconds": spec.get("timeoutSeconds"),
        "outputs": spec.get("outputs"),
        "namespace": spec.get("namespace"),
    }
    if version >= 2:
        job["version"] = 2
        job["dockerAuthConfig"] = spec.get("dockerAuthConfig") or {}
    if with_queue:
        job["queue"] = row["queue"]
    return job


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else None


def producer_job(row: dict[str, Any]) -> dict[str, Any]:
    spec = dict(row["spec"])
    # Never hand secrets back: show which values are redacted, not what they are.
    if spec.get("redactedValues"):
        spec["redactedValues"] = {f"<redacted {i}>": v for i, v in enumerate(spec["redactedValues"].values())}
    if spec.get("dockerAuthConfig"):
        spec["dockerAuthConfig"] = {
            "auths": dict.fromkeys(spec["dockerAuthConfig"].get("auths", {}), "<redacted>")
        }
    return {
        "id": row["id"],
        "queue": row["queue"],
        "state": row["state"],
        "repositoryName": row["repository_name"],
        "commit": row["commit"],
        "priority": row["priority"],
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "executorName": row["executor_name"],
        "attempt": row["attempt"],
        "numResets": row["num_resets"],
        "numFailures": row["num_failures"],
        "cancelRequested": bool(row["cancel"]),
        "error": row["failure_message"],
        "outcome": row["outcome"],
        "exitCodes": row.get("exit_codes", []),
        "spec": spec,
    }
