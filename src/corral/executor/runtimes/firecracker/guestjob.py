"""What the host tells the guest init to run: `job.sh`, staged into the VM's read-only "job" share.

`job.sh` is sourced by init (root in the guest, see guest/init.sh): one line per step,
``step INDEX IMAGE-SERIAL UID GID DIR NAME=VALUE... ARGV...`` for a docker step, ``clistep INDEX UID
GID DIR NAME=VALUE... ARGV...`` for a CLI step (guest/clistep.sh; after the `preamble` lines that say
where its root's shares go, see clistep.py), every word quoted with shlex.quote,
so a job's strings are data in it, never shell code. What the guest's shell could not carry is
refused here: NUL bytes, environment names that are not names, an argv[0] with "=" (env(1) would
take it for a variable), a working directory that leaves the workspace.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["GuestStep", "job_script"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_JOB_SCRIPT = 4 * 1024**2  # bytes: job.sh as a whole (argv and env of every step)


@dataclass(frozen=True)
class GuestStep:
    index: int
    image: str  # the serial of the image's disk ("img0", ...); "" for a CLI step
    argv: Sequence[str]
    uid: int = 1000
    gid: int = 1000
    dir: str = ""  # relative to the workspace (/data in the guest)
    env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "docker"  # or "cli": in the root of the host's /usr and CLIs (clistep.py), no image


def _check(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL byte")
    return value


def _workdir(d: str) -> str:
    if ".." in _check(d, "the working directory").split("/"):
        raise ValueError(f"working directory {d!r} may leave the workspace ('..')")
    norm = posixpath.normpath("/" + d).lstrip("/")
    return "" if norm in ("", ".") else norm


def job_script(steps: Sequence[GuestStep], preamble: Sequence[str] = ()) -> str:
    """`preamble`: lines of the executor's own (already quoted), before the steps."""
    lines = ["# written by the corral executor: one step per line (guest/init.sh)", *preamble]
    for s in steps:
        if not s.argv:
            raise ValueError(f"step {s.index} has no command")
        if "=" in s.argv[0]:
            raise ValueError(f"step {s.index}: a command name may not contain '=': {s.argv[0]!r}")
        if s.kind not in ("docker", "cli"):
            raise ValueError(f"step {s.index}: unknown kind {s.kind!r}")
        if s.uid <= 0 or s.gid < 0:  # the guest's step starter refuses uid 0 too (guest/step.c)
            raise ValueError(f"step {s.index}: a step never runs as uid 0 or a negative id ({s.uid}:{s.gid})")
        image = [s.image] if s.kind == "docker" else []
        words = [str(s.index), *image, str(s.uid), str(s.gid), _workdir(s.dir)]
        for name, value in s.env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"step {s.index}: {name!r} is not an environment variable name")
            words.append(f"{name}={_check(value, f'variable {name}')}")
        words += [_check(a, "an argument") for a in s.argv]
        verb = "step" if s.kind == "docker" else "clistep"
        lines.append(verb + " " + " ".join(shlex.quote(w) for w in words))
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_JOB_SCRIPT:
        raise ValueError(f"the job's commands and environment exceed {MAX_JOB_SCRIPT} bytes")
    return text
