"""redact_throughput: the executor's redactor fed 64 KiB chunks, at 1,000 and 10,000 secrets
(target: each row within 2x of the redactor before issue 12's normalised views); and a 64 KiB diff
redacted before upload (redact/results.py) against the same text as a log.

Every step's output passes `StreamRedactor.feed` before it is logged, so its cost per chunk is a tax on
every byte a job prints. Measured: the best of several feeds of one 64 KiB chunk into a stream that
already holds a chunk of the same kind (so the hold-back is realistic), for four kinds of output:
build-log text, random base64 (every byte may start a key), a hex dump (`xxd` layout: the hex view's
worst case, every line a dump line) and text with escapes (`%XX` and `\\uXXXX` every few bytes: the
unescape view works around each). Also the build time of the redactor (done once per job, in a thread).
Baseline: the redactor before the views (src/corral/executor/redact.py at commit 14d64c2, one automaton
over the raw bytes, loaded from git history), measured in the same run, feed for feed, so that a busy
machine slows both alike. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import random
import string
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from bench.common import ROOT, Row, Table

NAME = "redact_throughput"
CHUNK = 64 * 1024  # bytes fed per call
RUNS = 7  # feeds per measurement; the best one counts (the machine is shared)
QUICK_RUNS = 3
SECRET_COUNTS = (1_000, 10_000)
BASELINE = "14d64c2"  # the commit whose src/corral/executor/redact.py is the baseline
MAIN_KINDS = ("text", "base64")  # the target (<= 2x) applies to these; the others are worst cases


def secrets(n: int, seed: int = 9) -> dict[str, str]:
    """n random 20-40 character secrets (the shape of tokens and passwords), each with its own name."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_/+"
    return {"".join(rng.choices(alphabet, k=rng.randint(20, 40))): f"[s{i}]" for i in range(n)}


def chunks() -> dict[str, bytes]:
    """One 64 KiB chunk of each kind of output."""
    rng = random.Random(4)
    text = (b"Step 3/7 : RUN make all -j4 --no-print-directory 0123456789abcdef\n" * 1100)[:CHUNK]
    b64 = base64.b64encode(rng.randbytes(CHUNK * 3 // 4))[:CHUNK]
    data = rng.randbytes(CHUNK // 4)
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        groups = " ".join(row[i : i + 2].hex() for i in range(0, len(row), 2))
        ascii_col = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:08x}: {groups:<39}  {ascii_col}\n")
    dump = "".join(lines).encode()[:CHUNK]
    words = [b"path=%2Fusr%2Flib", b"\\u00e9t\\u00e9", b"ok", b"50%", b"C:\\\\dir", b'say \\"hi\\"', b"\n"]
    escaped = b" ".join(rng.choice(words) for _ in range(CHUNK // 6))[:CHUNK]
    # a coloured build log (CSI colours on every line: the visible view's case)
    ansi = b"\x1b[1;32m==>\x1b[0m Step 3/7 : RUN make \x1b[33mwarning\x1b[0m: unused 0123456789ab\n" * 900
    return {"text": text, "base64": b64, "hexdump": dump, "escaped": escaped, "ansi": ansi[:CHUNK]}


def best(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of `runs` calls, in seconds."""
    fastest = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def baseline() -> Any:
    """The Redactor class of the baseline commit, or None when git or the commit is not there."""
    try:
        src = subprocess.run(
            ["git", "show", f"{BASELINE}:src/corral/executor/redact.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if src.returncode != 0:
        return None
    module = types.ModuleType("redact_before")
    sys.modules[module.__name__] = module
    exec(compile(src.stdout, f"{BASELINE}:src/corral/executor/redact.py", "exec"), module.__dict__)
    return module.Redactor


def measure(cls: Any, n: int, runs: int) -> tuple[float, dict[str, float]]:
    """(build seconds, ms per 64 KiB feed by kind) for redactor class `cls` at n secrets."""
    values = secrets(n)
    start = time.perf_counter()
    redactor = cls(values)
    build = time.perf_counter() - start
    feeds: dict[str, float] = {}
    for kind, chunk in chunks().items():
        stream = redactor.stream()
        stream.feed(chunk)  # a realistic hold-back before the measured feeds
        feeds[kind] = best(runs, lambda s=stream, c=chunk: s.feed(c)) * 1000
    return build, feeds


def _diff_of(text: bytes) -> str:
    """A diff adding `text`'s lines to a new file (about len(text) bytes)."""
    lines = text.decode().splitlines()
    head = "diff --git a/log b/log\nnew file mode 100644\n--- /dev/null\n+++ b/log\n"
    head += f"@@ -0,0 +1,{len(lines)} @@\n"
    return head + "".join(f"+{line}\n" for line in lines)


def run(quick: bool = False, profile: bool = False) -> Table:
    from corral.executor.redact import Redactor
    from corral.executor.redact.results import redact_diff

    runs = QUICK_RUNS if quick else RUNS
    before = baseline()
    table = Table(NAME, "the executor's redactor on 64 KiB chunks (ms per feed; build in s)")
    for n in SECRET_COUNTS:
        new_build, new_feeds = measure(Redactor, n, runs)
        old_build, old_feeds = measure(before, n, runs) if before is not None else (None, {})
        table.add(Row(f"build, {n} secrets (s)", new_build, old_build))
        for kind, ms in new_feeds.items():
            main = kind in MAIN_KINDS
            row = table.add(
                Row(
                    f"feed 64 KiB {kind}, {n} secrets (ms)",
                    ms,
                    old_feeds.get(kind),
                    "<= 2x baseline" if main else "",
                )
            )
            if main and row.ratio is not None:
                row.ok = row.ratio <= 2.0
        # The results path (redact/results.py): a 64 KiB diff of added build-log lines, against the
        # same text fed to a stream (the cost of the diff's own splitting and splicing).
        redactor = Redactor(secrets(n))
        text = chunks()["text"]
        diff = _diff_of(text)
        stream = redactor.stream()
        stream.feed(text)
        as_log = best(runs, lambda s=stream, t=text: s.feed(t)) * 1000
        as_diff = best(runs, lambda r=redactor, d=diff: redact_diff(r, d)) * 1000
        table.add(
            Row(f"redact a 64 KiB diff, {n} secrets (ms; baseline: the text as a log)", as_diff, as_log)
        )
    table.notes.append(
        f"best of {runs} feeds each; baseline: the redactor of {BASELINE} (no views), same run"
        if before is not None
        else f"no baseline: git or commit {BASELINE} is not available"
    )
    table.notes.append(
        "hexdump (every line a dump line) and escaped (an escape every ~8 bytes) are worst cases"
    )
    return table


if __name__ == "__main__":
    from bench.common import render

    print(render(run(quick="--quick" in sys.argv)))
