"""Registry credentials of a job: where they come from (one precedence, per registry), the private
docker config written for its pulls, the X-Registry-Auth header made from it, and the values the
job's redactor must hide.

Sources, per registry (`job_credentials`, the one place that decides):

1. the job's dockerAuthConfig entry for that registry (the server fills it from the DOCKER_AUTH_CONFIG
   executor secret, a namespace's over the global one);
2. EXECUTOR_DOCKER_AUTH_CONFIG's entry (the operator's, for every job);
3. the `auths` entry of the executor user's docker config, `$HOME/.docker/config.json` (HOME of the
   executor process; the user database's home when HOME is unset), also the operator's. Left out
   with `user_config=False` (a firecracker runtime pulls on the host with sources 1 and 2 only).
   The file is the operator's, not a job's: symlinks are followed (dotfile managers link it), but it
   must be a regular file of at most USER_CONFIG_MAX_BYTES, owned by the executor's user or root and
   not group/world-writable, or it is not used (`UserConfig.problem`, reported by the runtime's
   check). `credsStore` and `credHelpers` (credential helpers) are not supported: their registries
   get no credentials from this file, which the runtime's check warns about and a refused pull's
   error names.

Credentials are sent to the daemon only in the pull request's X-Registry-Auth header; nothing of them
is mounted into or passed to a container. The resolved credentials are written to
`<job root>/docker/config.json` (0700 dir, 0600 file), a directory that is never bound into any
sandbox; the runtime removes it once the job's images are pulled, and it goes with the job root.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import pwd
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from corral.errors import ConfigError, Reason, RuntimeFailure
from corral.executor.runtimes.docker.registries import DOCKER_HUB, DOCKER_HUB_ALIASES
from corral.executor.runtimes.docker.settings import check_auth_config

__all__ = [
    "USER_CONFIG_MAX_BYTES",
    "Credential",
    "JobAuth",
    "UserConfig",
    "auth_header_from_config",
    "auth_values",
    "executor_home",
    "job_credentials",
    "read_user_config",
    "registry_auth_header",
    "remove_docker_config",
    "write_docker_config",
]

_DOCKER_HUB_AUTH_ADDRESS = "https://index.docker.io/v1/"
CONFIG_DIR = "docker"  # in the job root
USER_CONFIG_MAX_BYTES = 1024 * 1024  # a larger ~/.docker/config.json is not read
Source = Literal["job", "executor", "user"]
SOURCE_NAMES: dict[str, str] = {
    "job": "the job's dockerAuthConfig (DOCKER_AUTH_CONFIG secret)",
    "executor": "EXECUTOR_DOCKER_AUTH_CONFIG",
    "user": "the executor user's ~/.docker/config.json",
}


def normalize_registry(key: str) -> str:
    """A docker config's "auths" key as the registry of an image reference: "https://index.docker.io/v1/"
    -> "docker.io", "http://127.0.0.1:5000/v2/" -> "127.0.0.1:5000"."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


# --- where credentials come from -------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """One registry's credentials and where they came from. `entry`: a docker config "auths" entry."""

    registry: str
    entry: Mapping[str, str]
    source: Source
    shared: bool  # the operator's (sources 2, 3, or a job entry equal to theirs): for every job

    @property
    def header(self) -> str | None:
        return auth_header_from_config({"auths": {self.registry: dict(self.entry)}}, self.registry)


@dataclass(frozen=True)
class UserConfig:
    """The usable `auths` of the executor user's docker config, and what could not be used."""

    path: Path | None
    auths: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    helpers: Mapping[str, str] = field(default_factory=dict)  # registry ("*": all) -> helper named
    problem: str | None = None  # why the file (or an entry) is not used; never quotes a credential

    def helper_note(self, registry: str) -> str | None:
        """Why `registry` may lack credentials from this file (a credential helper), or None."""
        helper = self.helpers.get(registry) or (self.helpers.get("*") if registry not in self.auths else None)
        if helper is None:
            return None
        return (
            f"{self.path} names the credential helper {helper!r} for it; credential helpers are not "
            "supported: give static credentials in EXECUTOR_DOCKER_AUTH_CONFIG"
        )


def executor_home() -> Path | None:
    """HOME of the executor process (its user's home in the user database when HOME is unset)."""
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    try:
        return Path(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        return None


def read_user_config(home: Path | None = None) -> UserConfig:
    """The executor user's ~/.docker/config.json (`home`: default `executor_home()`); missing: empty."""
    home = home if home is not None else executor_home()
    if home is None:
        return UserConfig(None)
    path = home / ".docker" / "config.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return UserConfig(path)
    except OSError as exc:
        return UserConfig(path, problem=f"{path} cannot be opened: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return UserConfig(path, problem=f"{path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return UserConfig(
                path,
                problem=f"{path} must be owned by the executor's user (or root), not group/world-writable",
            )
        if st.st_size > USER_CONFIG_MAX_BYTES:
            return UserConfig(path, problem=f"{path} is larger than {USER_CONFIG_MAX_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(USER_CONFIG_MAX_BYTES + 1)
    except OSError as exc:
        return UserConfig(path, problem=f"{path} cannot be read: {exc.strerror}")
    finally:
        os.close(fd)
    if len(data) > USER_CONFIG_MAX_BYTES:
        return UserConfig(path, problem=f"{path} is larger than {USER_CONFIG_MAX_BYTES} bytes")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:  # ValueError's text has a position, never the content
        why = exc if isinstance(exc, ValueError) else "nested too deeply"
        return UserConfig(path, problem=f"{path} is not valid JSON: {why}")
    return _user_auths(path, config)


def _user_auths(path: Path, config: Any) -> UserConfig:
    if not isinstance(config, dict):
        return UserConfig(path, problem=f"{path} is not a JSON object")
    helpers: dict[str, str] = {}
    if isinstance(config.get("credsStore"), str) and config["credsStore"]:
        helpers["*"] = config["credsStore"]
    if isinstance(config.get("credHelpers"), dict):
        for key, helper in config["credHelpers"].items():
            helpers[normalize_registry(str(key))] = str(helper)
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        return UserConfig(path, helpers=helpers, problem=f'{path}: "auths" is not an object')
    usable: dict[str, Mapping[str, str]] = {}
    bad: list[str] = []
    for key, entry in auths.items():
        if isinstance(entry, dict) and not any(entry.get(k) for k in ("auth", "identitytoken", "username")):
            continue  # "{}": `docker login` with a credential helper leaves these
        try:
            _check_entry(entry)
        except ConfigError:
            bad.append(str(key))
            continue
        usable.setdefault(
            normalize_registry(str(key)), {k: str(v) for k, v in entry.items() if isinstance(v, str)}
        )
    problem = f"{path}: unusable auths entries for {', '.join(sorted(bad))}" if bad else None
    return UserConfig(path, usable, helpers, problem)


def _check_entry(entry: Any) -> None:
    check_auth_config({"auths": {"r": entry}})  # one definition of a usable entry


def _auths(config: Mapping[str, Any] | None) -> dict[str, Mapping[str, str]]:
    """A docker config's "auths" by normalized registry (the first key of a registry wins)."""
    out: dict[str, Mapping[str, str]] = {}
    auths = config.get("auths") if isinstance(config, Mapping) else None
    if isinstance(auths, Mapping):
        for key, entry in auths.items():
            if isinstance(entry, Mapping):
                out.setdefault(normalize_registry(str(key)), entry)
    return out


def job_credentials(
    job_auth: Mapping[str, Any] | None,
    executor_auth: Mapping[str, Any] | None,
    user: UserConfig | None = None,
    *,
    user_config: bool = True,
) -> dict[str, Credential]:
    """The credentials a job pulls with, per registry, in the one precedence of corral: the job's
    dockerAuthConfig entry > EXECUTOR_DOCKER_AUTH_CONFIG's > the executor user's ~/.docker/config.json
    (`user`, read now when None; left out with user_config=False, e.g. for firecracker's host pulls)."""
    operator: dict[str, tuple[Source, Mapping[str, str]]] = {}
    if user_config:
        user = user if user is not None else read_user_config()
        operator |= {r: ("user", e) for r, e in user.auths.items()}
    operator |= {r: ("executor", e) for r, e in _auths(executor_auth).items()}
    creds = {r: Credential(r, e, src, shared=True) for r, (src, e) in operator.items()}
    for registry, entry in _auths(job_auth).items():
        mine = Credential(registry, entry, "job", shared=False)
        theirs = creds.get(registry)
        if theirs is not None and _same(theirs, mine):
            mine = Credential(registry, entry, "job", shared=True)  # the operator's own, given again
        creds[registry] = mine
    return creds


def _same(a: Credential, b: Credential) -> bool:
    try:
        return a.header is not None and a.header == b.header
    except RuntimeFailure:  # a malformed entry: its pull says so
        return False


@dataclass(frozen=True)
class JobAuth:
    """What a job's pulls use: its private docker config dir (None: no credentials at all) and the
    credentials written there, with their sources (for the image cache rule and clear errors)."""

    config: Path | None
    creds: Mapping[str, Credential] = field(default_factory=dict)
    user: UserConfig | None = None

    def scoped(self, registry: str) -> bool:
        """Whether the job's credentials for `registry` are its own (not the operator's)."""
        cred = self.creds.get(registry)
        return cred is not None and not cred.shared

    def describe(self, registry: str) -> str:
        """Which credentials a pull from `registry` used, for its error message."""
        cred = self.creds.get(registry)
        if cred is not None:
            return f"with the credentials of {SOURCE_NAMES[cred.source]}"
        note = self.user.helper_note(registry) if self.user is not None else None
        none = f"no credentials for {registry} in any source (the job's dockerAuthConfig, " + (
            "EXECUTOR_DOCKER_AUTH_CONFIG, the executor user's ~/.docker/config.json)"
        )
        return f"{none}; {note}" if note else none


# --- the job's private docker config ----------------------------------------------------------------


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
        if normalize_registry(key) != registry or not isinstance(entry, dict):
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


def _entry_secrets(entry: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for key in ("auth", "identitytoken", "password"):
        if isinstance(entry.get(key), str) and entry[key]:
            values.append(entry[key])
    if isinstance(entry.get("username"), str) and entry.get("password"):
        values.append(f"{entry['username']}:{entry['password']}")
    if isinstance(entry.get("auth"), str):
        with contextlib.suppress(ValueError):
            decoded = base64.b64decode(entry["auth"]).decode()
            _, colon, password = decoded.partition(":")
            values += [decoded, password] if colon and password else [decoded]
    return values


def auth_values(*sources: Mapping[str, Any] | Iterable[Credential] | None) -> list[str]:
    """Every secret of these docker configs ({"auths": ...}) or credentials, for the job's redactor:
    an entry's `auth`, its decoded user:password and the password, an identitytoken, a password.
    (A user name alone is an identifier, not a secret: it is not masked.)"""
    values: list[str] = []
    for source in sources:
        if source is None:
            continue
        if isinstance(source, Mapping):
            entries: Iterable[Mapping[str, Any]] = _auths(source).values()
        else:
            entries = (c.entry for c in source)
        for entry in entries:
            values += _entry_secrets(entry)
    return list(dict.fromkeys(values))


def write_docker_config(root: Path, creds: Mapping[str, Credential]) -> Path | None:
    """Write `creds` (one "auths" entry per registry) to root/docker/config.json; return that
    directory, or None when there are none. A directory left by an earlier attempt is replaced."""
    if not creds:
        return None
    d = root / CONFIG_DIR
    remove_docker_config(d)
    d.mkdir(mode=0o700)
    fd = os.open(d / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {r: dict(c.entry) for r, c in creds.items()}}, f)
    return d


def remove_docker_config(config_dir: Path) -> None:
    """Remove a job's docker config dir (executor-owned, under the job root); missing is fine."""
    if config_dir.is_symlink():
        config_dir.unlink()
    elif config_dir.exists():
        shutil.rmtree(config_dir)
