"""The docker runtime's settings (EXECUTOR_DOCKER_*), composed into ExecutorSettings as `.docker`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from corral.errors import ConfigError
from corral.executor.settingsbase import Bool, EnvSettings, JsonObject

__all__ = ["DockerSettings", "parse_mount_spec"]


def _split(sep: str) -> Any:
    def split(v: Any) -> Any:
        return [p.strip() for p in v.split(sep) if p.strip()] if isinstance(v, str) else v

    return split


class DockerSettings(EnvSettings):
    # {"auths": {"<registry>": {"auth": "..."}}}: the operator's registry credentials, for every job
    auth_config: JsonObject | None = Field(None, validation_alias="EXECUTOR_DOCKER_AUTH_CONFIG")
    add_host_gateway: Bool = Field(False, validation_alias="EXECUTOR_DOCKER_ADD_HOST_GATEWAY")
    # `--mount` specs separated by ";" (see parse_mount_spec)
    additional_mounts: list[str] = Field(
        default_factory=list, validation_alias="EXECUTOR_DOCKER_ADDITIONAL_MOUNTS"
    )
    runtime: str = Field("", validation_alias="EXECUTOR_DOCKER_RUNTIME")  # "" = runc; "runsc" = gVisor
    # registries (exact host[:port]) that may be on loopback/private addresses; see registries.py
    allowed_registries: list[str] = Field(
        default_factory=list, validation_alias="EXECUTOR_DOCKER_ALLOWED_REGISTRIES"
    )

    @field_validator("additional_mounts", mode="before")
    @classmethod
    def _mounts(cls, v: Any) -> Any:
        return [m for m in v.split(";") if m] if isinstance(v, str) else v

    @field_validator("allowed_registries", mode="before")
    @classmethod
    def _registries(cls, v: Any) -> Any:
        return _split(",")(v)

    @field_validator("auth_config")
    @classmethod
    def _auths(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, dict) and isinstance(v.get("auths", {}), dict)):
            raise ValueError('must be {"auths": {"<registry>": {"auth": "..."}}}')
        return v


def parse_mount_spec(spec: str) -> dict[str, Any]:
    """A `docker run --mount` spec ("type=bind,source=/a,target=/b,readonly") as an Engine API Mount.

    Supported keys: type (bind | volume | tmpfs), source/src, target/destination/dst, readonly/ro.
    Raises ConfigError for anything else.
    """
    mount: dict[str, Any] = {"Type": "volume"}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if eq and value.lower() not in ("1", "true", "0", "false"):
                raise ConfigError(f"docker mount {spec!r}: readonly must be true or false, not {value!r}")
            mount["ReadOnly"] = not eq or value.lower() in ("1", "true")
        elif key == "type":
            if value not in ("bind", "volume", "tmpfs"):
                raise ConfigError(f"docker mount {spec!r}: type must be bind, volume or tmpfs, not {value!r}")
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "destination", "dst"):
            mount["Target"] = value
        else:
            raise ConfigError(f"docker mount {spec!r}: unsupported option {key!r}")
    if not mount.get("Target", "").startswith("/"):
        raise ConfigError(f"docker mount {spec!r}: needs an absolute target=")
    if mount["Type"] == "bind" and not mount.get("Source", "").startswith("/"):
        raise ConfigError(f"docker mount {spec!r}: a bind mount needs an absolute source=")
    return mount
