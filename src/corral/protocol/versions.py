"""Executor versions as Sourcegraph's frontend reads them at dequeue: which Job payload (v1 or v2) an
executor gets, and which version strings are refused.

Taken from sourcegraph/sourcegraph-public-snapshot:
- cmd/frontend/internal/executorqueue/handler/handler.go and multihandler.go, `dequeue`: an empty
  version gets v1 without any check; otherwise `api.CheckSourcegraphVersion(version, ">= 4.3.0-0",
  "2022-11-24")` decides, and its error refuses the dequeue ("failed to check version %q: ...",
  nothing is dequeued). (Before 5.x the constraint was "4.3.0-0" without an operator, which
  Masterminds/semver reads as equality; the newest code has ">=".)
- lib/api/version_check.go, `CheckSourcegraphVersion`: "dev" and "0.0.0+dev" pass; an insiders
  build "<build>_<date>_<sha>" (BuildDateRegex, searched anywhere in the string) passes when its date
  is on or after the minimum date; anything else must parse as a Masterminds/semver (v1) version.
- github.com/Masterminds/semver v1.5 (version.go, constraints.go): `NewVersion` (the regex below,
  anchored at both ends, missing minor/patch read as 0, ErrInvalidSemVer "Invalid Semantic
  Version"), `Compare` with SemVer 2.0 prerelease precedence, and `>=` with a prerelease constraint
  (so "4.3.0-rc.1" passes ">= 4.3.0-0" and "0.0.0" does not).

And corral's own rule between corral's server and corral's executor (`skew_problem`, SKEW_RULE): at
most one minor version apart, the same major, development builds exempt. The server refuses a
skewed executor at dequeue (400, naming both versions and the rule); the executor reads the server's
version from VERSION_HEADER and refuses to start against a skewed server with the same words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_VERSION_CHARS",
    "SKEW_RULE",
    "V2_CONSTRAINT",
    "V2_MIN_DATE",
    "VERSION_HEADER",
    "InvalidVersion",
    "SemVer",
    "check_sourcegraph_version",
    "go_quote",
    "is_dev_version",
    "job_version_for",
    "parse_semver",
    "skew_problem",
    "version_error",
]

V2_CONSTRAINT = ">= 4.3.0-0"  # handler.go / multihandler.go, dequeue
V2_MIN_DATE = "2022-11-24"
MAX_VERSION_CHARS = 256  # a version string longer than this is refused without parsing it

# Masterminds/semver v1 SemVerRegex; NewVersion anchors it with ^...$ (Go's $ is the end of the text).
_SEMVER_RE = re.compile(
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
# lib/api/version_check.go BuildDateRegex, used with FindStringSubmatch (not anchored at the start);
# re.ASCII: Go's \d is [0-9] only.
_BUILD_DATE_RE = re.compile(r"\d+_(\d{4}-\d{2}-\d{2})_(\d+\.\d+)?-?[a-z0-9]{7,}(_patch)?\Z", re.ASCII)
_INT64_MAX = 2**63 - 1


class InvalidVersion(ValueError):
    """A version Masterminds/semver refuses; the message is the library's ("Invalid Semantic Version")."""


@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    pre: str = ""

    def compare(self, other: SemVer) -> int:
        """Version.Compare: -1, 0 or 1 (build metadata is ignored)."""
        for a, b in ((self.major, other.major), (self.minor, other.minor), (self.patch, other.patch)):
            if a != b:
                return 1 if a > b else -1
        if self.pre == other.pre:
            return 0
        if not self.pre:
            return 1
        if not other.pre:
            return -1
        return _compare_prerelease(self.pre, other.pre)


def _compare_prerelease(a: str, b: str) -> int:
    """comparePrerelease: dot-separated parts, a missing part sorts first."""
    pa, pb = a.split("."), b.split(".")
    for i in range(max(len(pa), len(pb))):
        d = _compare_pre_part(pa[i] if i < len(pa) else "", pb[i] if i < len(pb) else "")
        if d:
            return d
    return 0


def _compare_pre_part(s: str, o: str) -> int:
    """comparePrePart: numbers compare as numbers and sort before words; words compare as strings."""
    if s == o:
        return 0
    if not s:
        return -1
    if not o:
        return 1
    s_num, o_num = _int64(s), _int64(o)
    if s_num is None and o_num is None:
        return 1 if s > o else -1
    if o_num is None:
        return -1
    if s_num is None:
        return 1
    return 1 if s_num > o_num else -1


def _int64(part: str) -> int | None:
    """strconv.ParseInt(part, 10, 64), or None where it fails."""
    if not re.fullmatch(r"[+-]?[0-9]+", part):
        return None
    value = int(part)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def parse_semver(version: str) -> SemVer:
    """semver.NewVersion, or InvalidVersion with the library's message."""
    m = _SEMVER_RE.fullmatch(version) if len(version) <= MAX_VERSION_CHARS else None
    if m is None:
        raise InvalidVersion("Invalid Semantic Version")
    parts = [m[1], (m[2] or ".0")[1:], (m[3] or ".0")[1:]]
    for part in parts:
        if int(part) > _INT64_MAX:
            raise InvalidVersion(
                f'Error parsing version segment: strconv.ParseInt: parsing "{part}": value out of range'
            )
    return SemVer(int(parts[0]), int(parts[1]), int(parts[2]), m[5] or "")


def check_sourcegraph_version(
    version: str, constraint: str = V2_CONSTRAINT, min_date: str = V2_MIN_DATE
) -> bool:
    """CheckSourcegraphVersion(version, constraint, min_date) for a `>= X` constraint (the only form
    the dequeue uses); InvalidVersion for a version that is no semver."""
    if version in ("dev", "0.0.0+dev"):
        return True
    if len(version) <= MAX_VERSION_CHARS and (m := _BUILD_DATE_RE.search(version)):
        return m[1] >= min_date
    op, _, minimum = constraint.partition(" ")
    if op != ">=":
        raise ValueError(f"only '>= X' constraints are supported, not {constraint!r}")
    want, v = parse_semver(minimum.strip()), parse_semver(version)
    # constraintGreaterThanEqual: a prerelease version passes only a constraint that names one.
    if v.pre and not want.pre:
        return False
    return v.compare(want) >= 0


def job_version_for(version: str) -> int:
    """The Job payload version a Sourcegraph executor sending `version` at dequeue gets: 1 for an empty
    version (a pre-4.3 executor), else 2 when check_sourcegraph_version passes. InvalidVersion
    refuses the dequeue."""
    if not version:
        return 1
    return 2 if check_sourcegraph_version(version) else 1


def go_quote(s: str) -> str:
    """strconv.Quote(s), as Go's %q writes a string into an error message."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def version_error(version: str, exc: InvalidVersion) -> str:
    """The dequeue's error for a refused version, as Sourcegraph words it (errors.Wrapf in dequeue)."""
    shown = version if len(version) <= MAX_VERSION_CHARS else version[:MAX_VERSION_CHARS] + "..."
    return f"failed to check version {go_quote(shown)}: {exc}"


# -- corral's own rule: version skew between corral's server and corral's executor ------------------
VERSION_HEADER = "X-Corral-Version"  # the corral server's version, on every /.executors answer
SKEW_RULE = "a corral server and a corral executor may be at most one minor version apart (same major)"


def is_dev_version(version: str) -> bool:
    """A development build ("dev", "0.0.0", "0.0.0+...", "0.0.0-..."): exempt from the skew rule (and
    what a corral executor sends a server it does not know to be corral's)."""
    return version in ("dev", "0.0.0") or version.startswith(("0.0.0+", "0.0.0-"))


def skew_problem(executor_version: str, server_version: str) -> str | None:
    """None when this executor and this server may work together; else the refusal, naming both
    versions and the rule. Both sides use it: the server at dequeue, the executor on the server's
    first answer (VERSION_HEADER). InvalidVersion when one of them is no semver."""
    if is_dev_version(executor_version) or is_dev_version(server_version):
        return None
    theirs, ours = parse_semver(executor_version), parse_semver(server_version)
    if theirs.major == ours.major and abs(theirs.minor - ours.minor) <= 1:
        return None
    older = "executor" if theirs.compare(ours) < 0 else "server"
    return (
        f"executor version {executor_version[:80]} is too far from server version {server_version[:80]}: "
        f"{SKEW_RULE}; upgrade the {older}"
    )
