"""Registry credentials of a job: the private docker config written for its pulls, the
X-Registry-Auth header made from it, and the values the job's redactor must hide.

Registry credentials (space.docker_config/config.json) are only sent to the daemon in the pull request's
X-Registry-Auth header; nothing of them is mounted into or passed to a container.
The config is written to `<job root>/docker/config.json` (0700 dir, 0600 file), a directory that is
never bound into any sandbox, and goes with the job root.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import Reason, RuntimeFailure
from corral.executor.runtimes.docker.registries import DOCKER_HUB, DOCKER_HUB_ALIASES

__all__ = [
    "auth_header_from_config",
    "auth_values",
    "registry_auth_header",
    "write_docker_config",
]

_DOCKER_HUB_AUTH_ADDRESS = "https://index.docker.io/v1/"
CONFIG_DIR = "docker"  # in the job root


def _normalize_registry(key: str) -> str:
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def registry_auth_header(docker_config: Path | None, registry: str) -> str | None:
    """The X-Registry-Auth value for `registry` from a docker config dir (config.json "auths"), or None.

    Raises RuntimeFailure(reason=Reason.IMAGE) when the config exists but cannot be read or decoded.
    """
    if docker_config is None:
        return None
    path = docker_config / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(
            f"the job's docker config {path} is not readable JSON: {exc}", reason=Reason.IMAGE
        ) from exc
    return auth_header_from_config(config, registry)


def auth_header_from_config(config: Any, registry: str) -> str | None:
    """The X-Registry-Auth value for `registry` from a parsed docker config ({"auths": ...}), or None."""
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _normalize_registry(key) != registry or not isinstance(entry, dict):
            continue
        address = _DOCKER_HUB_AUTH_ADDRESS if registry == DOCKER_HUB else registry
        payload: dict[str, str]
        if entry.get("identitytoken"):
            payload = {"identitytoken": str(entry["identitytoken"]), "serveraddress": address}
        elif entry.get("auth"):
            try:
                user, _, password = (
                    base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise RuntimeFailure(
                    f"the job's docker config has a malformed auth entry for {key}", reason=Reason.IMAGE
                ) from exc
            payload = {"username": user, "password": password, "serveraddress": address}
        elif entry.get("username"):
            payload = {
                "username": str(entry["username"]),
                "password": str(entry.get("password", "")),
                "serveraddress": address,
            }
        else:
            continue
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return None


def auth_values(*configs: Mapping[str, Any] | None) -> list[str]:
    """Every secret of these docker configs' "auths" entries: each `auth` value and its decoded user
    and password, for the job's redactor."""
    values: list[str] = []
    for auth in configs:
        for entry in ((auth or {}).get("auths") or {}).values():
            if isinstance(entry, dict) and entry.get("auth"):
                values.append(entry["auth"])
                with contextlib.suppress(ValueError):
                    values += base64.b64decode(entry["auth"]).decode().split(":", 1)
    return values


def write_docker_config(root: Path, *configs: Mapping[str, Any] | None) -> Path | None:
    """Write the first config with "auths" (the job's, else the executor's) to root/docker/config.json;
    return that directory, or None when there are no credentials."""
    auth = next((c for c in configs if c and c.get("auths")), None)
    if auth is None:
        return None
    d = root / CONFIG_DIR
    d.mkdir(mode=0o700)
    fd = os.open(d / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": auth["auths"]}, f)
    return d
