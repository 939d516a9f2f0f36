"""Server settings: command-line flags win, then environment variables, then defaults.

Every setting and its variable is listed in the README's configuration reference.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, PrivateAttr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.errors import ConfigError
from corral.sharedsecret import GENERATE_HINT, MIN_LENGTH, check_secret

log = logging.getLogger("corral.server")


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 3080
    data_dir: Path = Path(".corral")
    database_url: str = ""  # default: sqlite:///<data_dir>/corral.db
    executors_access_token: str = Field(
        default="", validation_alias=AliasChoices("EXECUTORS_ACCESS_TOKEN", "CORRAL_EXECUTORS_ACCESS_TOKEN")
    )
    admin_token: str = ""  # CORRAL_ADMIN_TOKEN; generated into <data_dir>/admin-token when unset
    stalled_after: float = 15.0  # seconds without heartbeat before a job is requeued
    max_resets: int = 3  # requeues of a stalled job before it fails
    max_attempts: int = 3  # errored attempts before a job fails
    retry_backoff: float = 10.0  # seconds before the first retry of an errored job; doubles each time
    resetter_interval: float = 1.0  # seconds between stalled-job sweeps
    long_poll_max: float = 30.0  # longest a dequeue or cancel watch may be held, seconds
    max_body_bytes: int = 64 * 1024 * 1024  # largest request body
    max_log_bytes: int = 64 * 1024 * 1024  # largest stored output of one log entry
    extensions: bool = True  # corral's protocol extensions; off = plain Sourcegraph protocol
    # /metrics needs `Authorization: Bearer <admin token or metrics_token>` unless metrics_public;
    # /openapi.json and /healthz are public (schema and liveness, no data); /docs and /redoc are off
    # unless `docs` (they load scripts from a CDN).
    metrics_token: str = ""  # CORRAL_METRICS_TOKEN: a token that opens /metrics only (Prometheus)
    metrics_public: bool = False  # CORRAL_METRICS_PUBLIC=true: /metrics without a token
    docs: bool = False  # CORRAL_DOCS=true: serve the interactive API docs at /docs and /redoc
    _warned: bool = PrivateAttr(False)  # check() logged its warnings

    @field_validator("data_dir")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    def check(self) -> list[str]:
        """Refuse to start without a usable shared secret (corral.sharedsecret); returns, and logs,
        the warnings about a weak one."""
        if not self.executors_access_token:
            raise ConfigError(
                "EXECUTORS_ACCESS_TOKEN is not set: executors authenticate with this shared secret "
                f"(at least {MIN_LENGTH} characters; {GENERATE_HINT})"
            )
        secret = check_secret(self.executors_access_token)
        if secret.problem:
            raise ConfigError(f"EXECUTORS_ACCESS_TOKEN {secret.problem}")
        warnings = [f"EXECUTORS_ACCESS_TOKEN {w}" for w in secret.warnings]
        if not self._warned:  # the CLI and create_app both check: say it once
            self._warned = True
            for w in warnings:
                log.warning("%s", w)
        return warnings

    def ensure_admin_token(self) -> tuple[str, Path | None]:
        """The admin token, generated and stored 0600 in the data dir when not configured."""
        if self.admin_token:
            return self.admin_token, None
        path = self.data_dir / "admin-token"
        if path.exists():
            self.admin_token = path.read_text().strip()
            return self.admin_token, path
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.admin_token = token
        return token, path
