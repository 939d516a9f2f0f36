"""The docker runtime's settings (EXECUTOR_DOCKER_*), composed into ExecutorSettings as `.docker`.

EXECUTOR_DOCKER_ADDITIONAL_MOUNTS and EXECUTOR_DOCKER_AUTH_CONFIG are checked at start-up, so a bad
value stops the executor with its variable named instead of failing every job; their errors never
repeat a credential.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import re
from typing import Any

from pydantic import Field, field_validator

from corral.errors import ConfigError
from corral.executor.settingsbase import Bool, EnvSettings, parse_bool
from corral.units import parse_size

__all__ = ["GVISOR_RUNTIME", "HOSTNET_SUFFIX", "DockerSettings", "check_auth_config", "parse_mount_spec"]

MOUNT_TYPES = ("bind", "volume", "tmpfs")
GVISOR_RUNTIME = "runsc"  # the daemon.json name of gVisor's runtime (scripts/start-dockerd.sh)
HOSTNET_SUFFIX = "-hostnet"  # runsc-hostnet: the same runsc with --network=host
RUNTIME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TARGET_KEYS = ("target", "dst", "destination")


def _split(sep: str) -> Any:
    def split(v: Any) -> Any:
        return [p.strip() for p in v.split(sep) if p.strip()] if isinstance(v, str) else v

    return split


class DockerSettings(EnvSettings):
    # {"auths": {"<registry>": {"auth": "<base64 user:password>"}}}: the operator's registry
    # credentials, for every job (see check_auth_config)
    auth_config: dict[str, Any] | None = Field(None, validation_alias="EXECUTOR_DOCKER_AUTH_CONFIG")
    add_host_gateway: Bool = Field(False, validation_alias="EXECUTOR_DOCKER_ADD_HOST_GATEWAY")
    # `--mount` specs separated by ";" (see parse_mount_spec)
    additional_mounts: list[str] = Field(
        default_factory=list, validation_alias="EXECUTOR_DOCKER_ADDITIONAL_MOUNTS"
    )
    runtime: str = Field("", validation_alias="EXECUTOR_DOCKER_RUNTIME")  # "" = runc; "runsc" = gVisor
    # the runtime of steps whose job has a network interface; "" = see `step_runtimes`
    network_runtime: str = Field("", validation_alias="EXECUTOR_DOCKER_NETWORK_RUNTIME")
    # registries (exact host[:port]) that may be on loopback/private addresses; see registries.py
    allowed_registries: list[str] = Field(
        default_factory=list, validation_alias="EXECUTOR_DOCKER_ALLOWED_REGISTRIES"
    )

    @field_validator("runtime", "network_runtime", mode="before")
    @classmethod
    def _runtime_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v and not RUNTIME_NAME.fullmatch(v):
                raise ValueError("not a runtime name (letters, digits, '.', '_', '-'; at most 128)")
        return v

    def step_runtimes(self) -> tuple[str | None, str | None]:
        """(runtime of steps without network, runtime of steps with a network interface); None = the
        daemon's default (runc). EXECUTOR_DOCKER_NETWORK_RUNTIME unset: `<runtime>-hostnet` for runsc
        (Debian's runsc needs --network=host inside a container's own namespace, machine notes §3),
        else EXECUTOR_DOCKER_RUNTIME itself."""
        runtime = self.runtime or None
        if self.network_runtime:
            return runtime, self.network_runtime
        if runtime == GVISOR_RUNTIME:
            return runtime, GVISOR_RUNTIME + HOSTNET_SUFFIX
        return runtime, runtime

    @field_validator("additional_mounts", mode="before")
    @classmethod
    def _mounts(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        specs = [m for m in v.split(";") if m.strip()]
        for i, spec in enumerate(specs, 1):
            try:
                parse_mount_spec(spec)
            except ConfigError as exc:
                raise ValueError(f"mount {i} of {len(specs)}: {exc.message}") from None
        return specs

    @field_validator("allowed_registries", mode="before")
    @classmethod
    def _registries(cls, v: Any) -> Any:
        return _split(",")(v)

    @field_validator("auth_config", mode="before")
    @classmethod
    def _auths(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError as exc:  # the message has a position, never the text
                raise ValueError(f"not valid JSON: {exc}") from None
            except RecursionError:  # json.loads of e.g. 100000 "[" (Go's decoder stops at 10000)
                raise ValueError("not valid JSON: nested too deeply") from None
        if v is not None:
            try:
                check_auth_config(v)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return v


def check_auth_config(config: Any) -> None:
    """A docker config as Sourcegraph's executor takes it (types.DockerAuthConfig in
    internal/executor/types/job.go): {"auths": {"<registry>": {"auth": "<base64 of user:password>"}}};
    corral's pulls also take an entry's "identitytoken", or "username" and "password". Static
    credentials only: a credential store or helper would be silently dropped from the job's config.
    Raises ConfigError naming the registry and the problem, never a credential."""
    if not isinstance(config, dict):
        raise ConfigError('must be a JSON object: {"auths": {"<registry>": {"auth": "..."}}}')
    helpers = [k for k in ("credsStore", "credHelpers") if config.get(k)]
    if helpers:
        raise ConfigError(f"{' and '.join(helpers)}: credential helpers are not supported, give static auths")
    auths = config.get("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError('"auths" must be an object: {"<registry>": {"auth": "..."}}')
    for registry, entry in auths.items():
        where = f"auths[{registry!r}]"
        if not registry:
            raise ConfigError("auths: a registry name is empty")
        if not isinstance(entry, dict):
            raise ConfigError(f'{where} must be an object: {{"auth": "<base64 of user:password>"}}')
        if "auth" in entry:
            _check_auth(where, entry["auth"])
        elif "identitytoken" in entry or "username" in entry:
            for key in ("identitytoken", "username", "password"):
                if not isinstance(entry.get(key, ""), str):
                    raise ConfigError(f"{where}.{key} must be a string")
        else:
            raise ConfigError(f'{where} has no credentials ("auth": "<base64 of user:password>")')


def _check_auth(where: str, auth: Any) -> None:
    # Go decodes a []byte JSON field with base64.StdEncoding: padded standard base64
    if not isinstance(auth, str):
        raise ConfigError(f"{where}.auth must be a string (base64 of user:password)")
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}.auth is not base64 of user:password (standard base64, padded)") from None
    user, colon, _ = decoded.partition(":")
    if not colon or not user:
        raise ConfigError(f"{where}.auth does not decode to user:password")


def parse_mount_spec(spec: str) -> dict[str, Any]:
    """A `docker run --mount` spec ("type=bind,source=/a,target=/b,readonly") as an Engine API Mount.

    Read as Docker's CLI reads it (docker/cli opts/mount.go, copied by Sourcegraph into
    internal/docker/mount.go, whose ParseMount Sourcegraph's config validation calls): CSV fields,
    case-insensitive keys; type (bind | volume | tmpfs, default volume), source/src,
    target/dst/destination, readonly/ro[=bool], consistency, bind-propagation,
    bind-nonrecursive[=bool], volume-nocopy[=bool], volume-label=K=V, volume-driver, volume-opt=K=V,
    tmpfs-size, tmpfs-mode (octal). corral also wants an absolute target, and an absolute source for
    a bind mount. Raises ConfigError naming the field; an option's value is never repeated (a
    volume-opt may hold a password).
    """
    try:
        fields = next(csv.reader([spec], strict=True), [])
    except csv.Error as exc:
        raise ConfigError(f"not a CSV list of key=value fields: {exc}") from None
    mount: dict[str, Any] = {"Type": "volume"}
    bind: dict[str, Any] = {}
    volume: dict[str, Any] = {}
    tmpfs: dict[str, Any] = {}

    def flag(key: str, value: str | None) -> bool:
        if value is None:
            return True
        try:
            return parse_bool(value)
        except ValueError:
            raise ConfigError(f"invalid value for {key} (true or false)") from None

    for field in (f.strip() for f in fields):
        if not field:
            continue
        raw_key, eq, val = field.partition("=")
        key, value = raw_key.strip().lower(), (val if eq else None)
        if value is None and key not in ("readonly", "ro", "volume-nocopy", "bind-nonrecursive"):
            raise ConfigError(f"invalid field {raw_key!r}: must be a key=value pair")
        if key == "type":
            mount["Type"] = (value or "").lower()
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in _TARGET_KEYS:
            if "Target" in mount:  # as Sourcegraph's check: mounts joined with "," instead of ";"
                raise ConfigError("has two targets: separate mounts with ';', not ','")
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = flag(key, value)
        elif key == "consistency":
            mount["Consistency"] = (value or "").lower()
        elif key == "bind-propagation":
            bind["Propagation"] = (value or "").lower()
        elif key == "bind-nonrecursive":
            bind["NonRecursive"] = flag(key, value)
        elif key == "volume-nocopy":
            volume["NoCopy"] = flag(key, value)
        elif key in ("volume-label", "volume-opt"):
            name, _, item = (value or "").partition("=")
            if name:
                volume.setdefault("Labels" if key == "volume-label" else "DriverOpts", {})[name] = item
        elif key == "volume-driver":
            volume["Driver"] = value
        elif key == "tmpfs-size":
            try:
                tmpfs["SizeBytes"] = parse_size(value or "")
            except ValueError:
                raise ConfigError("invalid value for tmpfs-size (a size, e.g. 64m)") from None
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(value or "", 8)
            except ValueError:
                raise ConfigError("invalid value for tmpfs-mode (octal, e.g. 1777)") from None
        else:
            raise ConfigError(f"unexpected key {raw_key.strip()!r}")
    kind = mount["Type"]
    if kind not in MOUNT_TYPES:
        raise ConfigError(f"type must be bind, volume or tmpfs, not {kind!r}")
    for options, owner in ((bind, "bind"), (volume, "volume"), (tmpfs, "tmpfs")):
        if options and kind != owner:
            raise ConfigError(f"cannot mix '{owner}-*' options with mount type {kind!r}")
    if not str(mount.get("Target") or "").startswith("/"):
        raise ConfigError("needs an absolute target= (target, dst or destination)")
    if kind == "bind" and not str(mount.get("Source") or "").startswith("/"):
        raise ConfigError("a bind mount needs an absolute source=")
    if kind == "tmpfs" and mount.get("Source"):
        raise ConfigError("a tmpfs mount takes no source=")
    if bind:
        mount["BindOptions"] = bind
    if volume:
        driver = {k: volume.pop(k) for k in ("Driver", "DriverOpts") if k in volume}
        if driver:
            volume["DriverConfig"] = {
                "Name": driver.get("Driver", ""),
                "Options": driver.get("DriverOpts", {}),
            }
        mount["VolumeOptions"] = volume
    if tmpfs:
        mount["TmpfsOptions"] = tmpfs
    return mount
