"""The rule for the executors' shared secret, on both sides: the server's EXECUTORS_ACCESS_TOKEN and
the executor's EXECUTOR_FRONTEND_PASSWORD.

The secret travels as `Authorization: token-executor <secret>`, and the server (Sourcegraph's as
corral's) splits that header at single spaces into exactly two parts, so a secret with a blank can
never authenticate; HTTP also trims blanks around a header value and carries ASCII only. Hence:

- refused: fewer than MIN_LENGTH characters, or any blank, control or non-ASCII character;
- warned about (it works, but is guessable): a placeholder word ("changeme", "password", ...), or too
  little variety, estimated deterministically as length x the Shannon entropy of its character
  frequencies (one repeated character: 0 bits; `openssl rand -hex 32`: about 250).

No message ever contains the secret.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["GENERATE_HINT", "MIN_BITS", "MIN_LENGTH", "PLACEHOLDERS", "SecretCheck", "check_secret"]

MIN_LENGTH = 20  # characters, as Sourcegraph requires of executors.accessToken
MIN_BITS = 48.0  # estimated bits below which a secret is called guessable (20 random digits: ~60)
PLACEHOLDERS = (
    "changeme",
    "change-me",
    "change_me",
    "password",
    "passw0rd",
    "secret",
    "example",
    "placeholder",
    "replaceme",
    "default",
    "letmein",
    "qwerty",
    "123456",
    "abcdef",
)
GENERATE_HINT = "generate one with: openssl rand -hex 32"


@dataclass(frozen=True)
class SecretCheck:
    problem: str | None = None  # why the secret is refused (None: it may be used)
    warnings: list[str] = field(default_factory=list)


def estimated_bits(secret: str) -> float:
    """len(secret) x the Shannon entropy of its character frequencies, in bits."""
    n = len(secret)
    return sum(c * math.log2(n / c) for c in Counter(secret).values())


def check_secret(secret: str) -> SecretCheck:
    """Whether `secret` may be the shared secret (`problem`) and what makes it weak (`warnings`).
    The messages are phrases to follow the variable's name ("EXECUTORS_ACCESS_TOKEN is ...")."""
    if any(c.isspace() for c in secret):
        return SecretCheck(
            f"contains blanks, which can never authenticate (the header is `token-executor <secret>`, "
            f"split at spaces); {GENERATE_HINT}"
        )
    if any(not (c.isascii() and c.isprintable()) for c in secret):
        return SecretCheck(f"must be printable ASCII (it travels in an HTTP header); {GENERATE_HINT}")
    if len(secret) < MIN_LENGTH:
        return SecretCheck(
            f"is {len(secret)} characters long; it must be at least {MIN_LENGTH} characters; {GENERATE_HINT}"
        )
    warnings: list[str] = []
    lowered = secret.lower()
    words = [w for w in PLACEHOLDERS if w in lowered]
    if words:
        warnings.append(f"looks like a placeholder (it contains {words[0]!r}); {GENERATE_HINT}")
    bits = estimated_bits(secret)
    if bits < MIN_BITS:
        warnings.append(
            f"is easy to guess (about {bits:.0f} bits by its character frequencies, "
            f"want {MIN_BITS:.0f}); {GENERATE_HINT}"
        )
    return SecretCheck(None, warnings)
