"""`python -m bench [--quick] [--only NAME[,NAME]] [--profile]`: run the benchmarks, print each table as it
finishes, then one summary block with every row that has a target."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from types import ModuleType

from bench import executor_rss, job_overhead, pickup_latency, queue_throughput
from bench.common import Table, fmt, render

MODULES: list[ModuleType] = [queue_throughput, pickup_latency, job_overhead, executor_rss]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = [m.NAME for m in MODULES]
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer jobs and samples (a smoke run, ~1 min)")
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
        help="queue_throughput: also run the server under cProfile and print the top entries",
    )
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    args.selected = [m for m in MODULES if not wanted or m.NAME in wanted]
    return args


def _summary(tables: list[Table], failed: dict[str, str], seconds: float) -> str:
    lines = ["", "=" * 100, "SUMMARY (rows with a target; ok / MISS is informational, nothing is asserted)"]
    width = max([len(r.metric) for t in tables for r in t.rows if r.target] + [10])
    for t in tables:
        for r in t.rows:
            if not r.target:
                continue
            verdict = "" if r.ok is None else ("ok" if r.ok else "MISS")
            ratio = "" if r.ratio is None else f"  ({r.ratio:.2f}x baseline {fmt(r.baseline)})"
            lines.append(
                f"  {t.name:<17} {r.metric:<{width}}  {fmt(r.corral):>9}  target {r.target:<12} "
                f"{verdict:<4}{ratio}"
            )
    for name, err in failed.items():
        lines.append(f"  {name:<17} FAILED TO RUN: {err}")
    lines.append(f"  total time {seconds:.0f} s on {os.cpu_count()} CPU(s), Python {platform.python_version()}")
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
    for m in args.selected:
        run: Callable[..., Table] = m.run
        t0 = time.monotonic()
        print(f"\n... running {m.NAME}", flush=True)
        try:
            table = run(quick=args.quick, profile=args.profile)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed[m.NAME] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        table.notes.append(f"took {time.monotonic() - t0:.1f} s")
        tables.append(table)
        print(render(table), flush=True)
    print(_summary(tables, failed, time.monotonic() - start), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
