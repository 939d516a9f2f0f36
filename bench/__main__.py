"""`python -m bench [--quick] [--only NAME[,NAME]] [--profile]`: run the benchmarks, print each table as it
finishes, then one summary block with every row that has a target."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from bench import (
    common,
    egress_overhead,
    executor_rss,
    firecracker_boot,
    job_overhead,
    kubernetes_overhead,
    pickup_latency,
    queue_throughput,
    redact_throughput,
    secret_handoff,
    stop_and_logs,
)
from bench.common import Table, fmt, render

MODULES: list[ModuleType] = [
    queue_throughput,
    pickup_latency,
    job_overhead,
    executor_rss,
    redact_throughput,
    stop_and_logs,
    egress_overhead,
    secret_handoff,
    firecracker_boot,
    kubernetes_overhead,
]
BUSY_SHARE = 0.10  # other processes using more than this share of the machine make numbers unreliable


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = [m.NAME for m in MODULES]
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer jobs and samples (a smoke run, ~1.5 min)")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(names)}",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="queue_throughput: also profile the server (py-spy if installed, and cProfile)",
    )
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    args.selected = [m for m in MODULES if not wanted or m.NAME in wanted]
    return args


def _host_busy_seconds() -> float:
    """CPU-seconds all processes of this host have used since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU-seconds of this process and of its children that were waited for (servers, executors, ...)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def _summary(tables: list[Table], failed: dict[str, str], seconds: float, foreign: dict[str, float]) -> str:
    lines = ["", "=" * 100, "SUMMARY (rows with a target; ok / MISS is informational, nothing is asserted)"]
    width = max([len(r.metric) for t in tables for r in t.rows if r.target] + [10])
    for t in tables:
        for r in t.rows:
            if not r.target:
                continue
            verdict = "" if r.ok is None else ("ok" if r.ok else "MISS")
            ratio = "" if r.ratio is None else f"  ({fmt(r.ratio)}x baseline {fmt(r.baseline)})"
            lines.append(
                f"  {t.name:<17} {r.metric:<{width}}  {fmt(r.corral):>9}  target {r.target:<12} "
                f"{verdict:<4}{ratio}"
            )
    for name, err in failed.items():
        lines.append(f"  {name:<17} FAILED TO RUN: {err}")
    lines.append(
        f"  total time {seconds:.0f} s on {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"corral at {_git_head()}"
    )
    lines.append(
        "  CPU share used by other processes meanwhile (dockerd and containers included): "
        + ", ".join(f"{name} {share:.0%}" for name, share in foreign.items())
    )
    if any(share > BUSY_SHARE for name, share in foreign.items() if name != "job_overhead"):
        lines.append(
            f"  WARNING: other work used over {BUSY_SHARE:.0%} of the machine during a benchmark: its "
            "throughput and latency numbers are worse than on an idle machine"
        )
    lines.append("=" * 100)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for m in MODULES:
            print(f"{m.NAME:<18} {(m.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if os.geteuid() != 0:
        print("note: the executor benchmarks need root (bubblewrap, cgroups, docker)", file=sys.stderr)
    start = time.monotonic()
    tables: list[Table] = []
    failed: dict[str, str] = {}
    foreign: dict[str, float] = {}
    ncpu = os.cpu_count() or 1
    for m in args.selected:
        run: Callable[..., Table] = m.run
        t0, host0, own0 = time.monotonic(), _host_busy_seconds(), _own_seconds()
        print(f"\n... running {m.NAME}", flush=True)
        try:
            table = run(quick=args.quick, profile=args.profile)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed[m.NAME] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        wall = time.monotonic() - t0
        others = (_host_busy_seconds() - host0) - (_own_seconds() - own0)
        foreign[m.NAME] = max(0.0, others) / (wall * ncpu)
        table.notes.append(
            f"took {wall:.1f} s; other processes used {foreign[m.NAME]:.0%} of the machine's CPU meanwhile"
        )
        tables.append(table)
        print(render(table), flush=True)
    print(_summary(tables, failed, time.monotonic() - start, foreign), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
