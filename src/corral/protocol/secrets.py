"""Executor secrets on the wire: the producer API's bodies and the rules for names and namespaces.

    POST   /api/v1/secrets                 SecretIn -> SecretView (201; 409 when the name is taken)
    GET    /api/v1/secrets                 [SecretView] (?namespace=; never a value, not its length)
    PUT    /api/v1/secrets/{id}            SecretValueIn -> SecretView (a new value)
    DELETE /api/v1/secrets/{id}            204
    GET    /api/v1/secrets/{id}/accesses   [SecretAccessView] (who was handed the value, when)
    POST   /api/v1/secrets/reencrypt       ReencryptView (every value under the first key: rotation)

A secret lives in the global scope (`namespace` null) or in a user's or an organization's
(`user:NAME`, `org:NAME`), as Sourcegraph's executor secrets. A job names the secrets it wants
(`secrets`); the server resolves each name in the job's `namespace` first, then globally.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.protocol.common import Wire

__all__ = [
    "DOCKER_AUTH_CONFIG",
    "MAX_HANDOFF_BYTES",
    "MAX_JOB_SECRETS",
    "MAX_NAMESPACE",
    "MAX_SECRET_NAME",
    "MAX_SECRET_VALUE_BYTES",
    "NAMESPACE_RE",
    "SECRET_NAME_RE",
    "ReencryptView",
    "SecretAccessView",
    "SecretIn",
    "SecretValueIn",
    "SecretView",
    "check_namespace",
    "check_secret_name",
    "check_secret_value",
    "last_newline_dropped",
]

MAX_SECRET_NAME = 128  # characters of a secret's name
MAX_SECRET_VALUE_BYTES = 64 * 1024  # bytes (UTF-8) of one secret's value
MAX_JOB_SECRETS = 100  # secrets one job may name
MAX_NAMESPACE = 256  # characters of a namespace (a job's or a secret's)
# Bytes the hand-off adds to one dequeue answer: every step gets each named `NAME=value`, so
# (sum of NAME=value) x (steps). Far under an executor's 64 MiB bound on a dequeue answer.
MAX_HANDOFF_BYTES = 8 * 1024 * 1024
SECRET_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z", re.ASCII)  # an environment variable's name
NAMESPACE_RE = re.compile(r"(user|org):[A-Za-z0-9][A-Za-z0-9._-]{0,250}\Z", re.ASCII)
# The secret Sourcegraph's frontend turns into a job's dockerAuthConfig at dequeue (its value is a
# docker config: {"auths": {"<registry>": {"auth": "<base64 user:password>"}}}).
DOCKER_AUTH_CONFIG = "DOCKER_AUTH_CONFIG"


def check_secret_name(name: str) -> str:
    if len(name) > MAX_SECRET_NAME or not SECRET_NAME_RE.match(name):
        raise ValueError(
            f"invalid secret name {name[:80]!r}: an environment variable name ([A-Za-z_][A-Za-z0-9_]*, "
            f"at most {MAX_SECRET_NAME} characters)"
        )
    return name


def check_namespace(namespace: str | None) -> str | None:
    """None (global), `user:NAME` or `org:NAME`."""
    if namespace is not None and not NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"invalid namespace {namespace[:80]!r}: null (global), user:NAME or org:NAME "
            "(NAME of [A-Za-z0-9._-], at most 250 characters)"
        )
    return namespace


def check_secret_value(value: str) -> str:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no UTF-8 form, no env var
        raise ValueError("the secret's value is not valid Unicode (it holds a lone surrogate)") from None
    if size > MAX_SECRET_VALUE_BYTES:
        raise ValueError(f"the secret's value has {size} bytes, over the limit of {MAX_SECRET_VALUE_BYTES}")
    if not value:
        raise ValueError("the secret's value is empty")
    if "\x00" in value:
        raise ValueError("the secret's value holds a NUL character (an environment variable cannot)")
    return value


def last_newline_dropped(text: str) -> str:
    """A value read from a file or stdin (`corral secret add/set`): its one last line ending (\\n
    or \\r\\n, as editors write them) is not part of it; any other newline or \\r is kept."""
    return text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")


class _In(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class SecretValueIn(_In):
    value: str

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        return check_secret_value(v)


class SecretIn(SecretValueIn):
    name: str
    namespace: str | None = Field(default=None, max_length=MAX_NAMESPACE)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_secret_name(v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        return check_namespace(v)


class SecretView(Wire):
    """A secret as every read shows it: never its value (nor its length)."""

    id: int
    name: str
    namespace: str | None
    created_at: str | None = Field(alias="createdAt")
    updated_at: str | None = Field(alias="updatedAt")


class SecretAccessView(Wire):
    """One hand-off of a secret's value: to which job's attempt, on which executor, when."""

    secret_id: int = Field(alias="secretId")
    name: str
    namespace: str | None
    job_id: int = Field(alias="jobId")
    attempt: int
    executor_name: str = Field(alias="executorName")
    accessed_at: str | None = Field(alias="accessedAt")


class ReencryptView(Wire):
    """What a re-encryption did: secrets re-encrypted under the first key, and all of them."""

    reencrypted: int
    total: int
    key_id: str = Field(alias="keyId")  # the first key's fingerprint (not the key)
