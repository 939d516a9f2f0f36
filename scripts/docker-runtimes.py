#!/usr/bin/env python3
"""Merge gVisor's two runtime entries into a dockerd daemon.json (used by scripts/start-dockerd.sh).

    docker-runtimes.py DAEMON_JSON [RUNSC_PATH]

Every other key and runtime is kept. A missing entry is added; an entry of the same name that
differs is the operator's and is kept, with a warning on stderr. The file is replaced atomically
and only when something was added; then "changed" is printed. An unreadable file is an error
(dockerd would refuse to start with it): exit status 1, nothing written.

Debian 12's runsc (0.0~20221219) needs both: `runsc` (--network=none) for containers with network
"none", `runsc-hostnet` (--network=host) for containers with a namespace of their own. Its kvm
platform hangs on PVM machines, so both use ptrace.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any


def wanted(runsc: str) -> dict[str, dict[str, Any]]:
    return {
        "runsc": {"path": runsc, "runtimeArgs": ["--platform=ptrace", "--network=none"]},
        "runsc-hostnet": {"path": runsc, "runtimeArgs": ["--platform=ptrace", "--network=host"]},
    }


def merge(path: str, runsc: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise SystemExit(f"{path} is not valid JSON ({exc}): fix it by hand, dockerd refuses it") from None
    if not isinstance(config, dict) or not isinstance(config.get("runtimes", {}), dict):
        raise SystemExit(f'{path}: expected a JSON object whose "runtimes" is an object')
    runtimes = config.setdefault("runtimes", {})
    changed = False
    for name, entry in wanted(runsc).items():
        if name not in runtimes:
            runtimes[name] = entry
            changed = True
        elif runtimes[name] != entry:
            print(
                f"[setup] {path}: keeping the existing runtime {name!r} {json.dumps(runtimes[name])}; "
                f"corral expects {json.dumps(entry)}",
                file=sys.stderr,
            )
    if changed:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".daemon.json.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return changed


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    if merge(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "/usr/bin/runsc"):
        print("changed")
