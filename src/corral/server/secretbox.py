"""Executor secrets at rest: AES-256-GCM (the `cryptography` package) under the server's keys.

Keys: `CORRAL_SECRETS_KEY`, the standard base64 of 32 random bytes, or several separated by commas
for a rotation: the first encrypts, every one decrypts. Without it, a key generated once into
`<data dir>/secrets-key` (0600, written to a temporary file and linked into place, so a reader never
sees half a key; opened with O_NOFOLLOW). A key is never logged; a key's *fingerprint* (its
`key_id`, 16 hex digits of a SHA-256 of it) is stored beside each value so that a rotation knows
which values still need the new key and a missing key is named by fingerprint.

Each value is sealed with a fresh 96-bit nonce and associated data naming the row (its id, name and
namespace): a ciphertext copied into another row does not open there.

Rotation (README, "Secrets"): put the new key first (`CORRAL_SECRETS_KEY=new,old`), restart, run
`corral secret reencrypt` (every value under the new key), then drop the old key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.errors import ConfigError, CorralError

__all__ = ["KEY_ENV", "KEY_FILE", "Keyring", "SecretKeyError", "associated_data", "new_key"]

log = logging.getLogger("corral.server")

KEY_ENV = "CORRAL_SECRETS_KEY"
KEY_FILE = "secrets-key"  # in the data dir, when KEY_ENV is unset
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
FORMAT = b"\x01"  # first byte of a sealed value: this layout (format, nonce, ciphertext+tag)
MAX_KEYS = 16  # keys in CORRAL_SECRETS_KEY


class SecretKeyError(CorralError):
    """A secret cannot be decrypted with the configured keys."""


def new_key() -> str:
    """A fresh key as CORRAL_SECRETS_KEY takes it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"corral secrets key id\x00" + key).hexdigest()[:16]


def associated_data(secret_id: int, name: str, namespace: str | None) -> bytes:
    """What a value is bound to: its row. Opening it under any other id, name or scope fails."""
    return f"corral secret\x00{secret_id}\x00{name}\x00{namespace or ''}".encode()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: a key is not base64 (make one with `corral secret keygen`)") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where}: a key is {len(key)} bytes, not {KEY_BYTES} (`corral secret keygen`)")
    return key


@dataclass(frozen=True)
class Keyring:
    """The server's keys, the first one encrypting (repr shows fingerprints only)."""

    keys: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self.key_ids)})"

    @property
    def key_ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    @property
    def primary_id(self) -> str:
        return key_id(self.keys[0])

    @classmethod
    def parse(cls, text: str, where: str = KEY_ENV) -> Keyring:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"{where} is empty")
        if len(parts) > MAX_KEYS:
            raise ConfigError(f"{where} holds {len(parts)} keys, at most {MAX_KEYS}")
        return cls(tuple(_decode_key(p, where) for p in parts))

    @classmethod
    def load(
        cls,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
        *,
        shared: bool = False,
        stored: Mapping[str, int] | None = None,
    ) -> Keyring:
        """From CORRAL_SECRETS_KEY, else from (or newly into) `<data_dir>/secrets-key`. `shared`:
        replicas share the database, so each needs the same key (a key file is one replica's).
        `stored` (key fingerprint -> secrets it sealed, from the database): ConfigError when a
        stored secret was sealed with a key this ring lacks, and no key file is generated while the
        database holds secrets (a new key would open none of them)."""
        ring = cls._load(data_dir, os.environ if environ is None else environ, shared, stored or {})
        if stored:
            ring.check_stored(stored)
        return ring

    def check_stored(self, stored: Mapping[str, int]) -> None:
        """ConfigError naming how many stored secrets no configured key opens, and their keys."""
        missing = {k: n for k, n in stored.items() if k not in self.key_ids}
        if missing:
            count = sum(missing.values())
            raise ConfigError(
                f"{count} of the database's {sum(stored.values())} executor secrets were encrypted "
                f"with keys that are not configured: {', '.join(sorted(missing))} (configured: "
                f"{', '.join(self.key_ids)}). Every job they go to would fail: set {KEY_ENV} to "
                "the keys that sealed them (after a rotation: new,old until `corral secret "
                "reencrypt` is done), or delete those secrets with a server that has the keys"
            )

    @classmethod
    def _load(
        cls, data_dir: Path, env: Mapping[str, str], shared: bool, stored: Mapping[str, int]
    ) -> Keyring:
        text = env.get(KEY_ENV, "")
        if text.strip():
            return cls.parse(text)
        path = data_dir / KEY_FILE
        if stored and not os.path.lexists(path):
            raise ConfigError(
                f"{KEY_ENV} is unset and the secrets key file {path} does not exist, but the "
                f"database holds {sum(stored.values())} executor secrets (keys "
                f"{', '.join(sorted(stored))}): a new key would open none of them. Restore the key "
                f"file, or set {KEY_ENV} to the key that sealed them"
            )
        if shared:
            log.warning(
                "%s is unset: executor secrets use the key in %s; replicas sharing this database each need "
                "that key: set %s to it (the same on every replica)",
                KEY_ENV,
                path,
                KEY_ENV,
            )
        return cls.parse(_key_file(path), str(path))

    def seal(self, plaintext: str, aad: bytes) -> tuple[bytes, str]:
        """(sealed value, fingerprint of the key that sealed it)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, plaintext.encode("utf-8"), aad)
        return FORMAT + nonce + sealed, self.primary_id

    def open(self, sealed: bytes, aad: bytes, sealed_with: str, what: str) -> str:
        """The value, or SecretKeyError naming `what` (the secret) and why."""
        by_id = dict(zip(self.key_ids, self.keys, strict=True))
        key = by_id.get(sealed_with)
        if key is None:
            raise SecretKeyError(
                f"{what} was encrypted with key {sealed_with}, which is not configured "
                f"(configured: {', '.join(self.key_ids)}; see {KEY_ENV})"
            )
        if sealed[:1] != FORMAT or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SecretKeyError(f"{what} is stored in an unknown form")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return AESGCM(key).decrypt(nonce, body, aad).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretKeyError(
                f"{what} does not decrypt with key {sealed_with}: its stored value was altered or "
                "belongs to another secret"
            ) from None


def _key_file(path: Path) -> str:
    """The key file's text, made first when it does not exist (0600, atomically, never through a
    symlink; a FIFO or a directory is refused without blocking). A key file others may read is
    tightened to 0600 (and said, without the key)."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            _make_key_file(path)
            continue
        except OSError as exc:
            raise ConfigError(f"cannot open the secrets key file {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"the secrets key file {path} is not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("secrets key file %s was mode %o; making it 0600", path, stat.S_IMODE(st.st_mode))
                os.fchmod(fd, 0o600)
            return os.read(fd, 4096).decode("ascii", errors="replace")
        finally:
            os.close(fd)
    raise ConfigError(f"cannot create the secrets key file {path}")


def _make_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_key() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another server made it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
