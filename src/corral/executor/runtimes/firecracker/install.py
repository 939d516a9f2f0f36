"""`corral executor install firecracker`: `assets.ensure_assets` with a progress display and a summary."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from corral.executor.runtimes.firecracker.assets import DEFAULT_ASSETS_DIR, ensure_assets
from corral.executor.runtimes.firecracker.vm import accelerator

__all__ = ["run_install"]


def run_install(directory: Path | None = None, console: Console | None = None) -> None:
    directory = directory or DEFAULT_ASSETS_DIR
    console = console or Console()
    started = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def stage(name: str) -> None:
            bar.update(task, description=name)

        report = ensure_assets(directory, progress=stage)
        stage("probing the accelerator (KVM only if a guest boots with it)")
        t_probe = time.monotonic()
        accel = asyncio.run(accelerator(report.assets))  # cached: jobs never wait for the probe
        probe_s = time.monotonic() - t_probe
    took = time.monotonic() - started
    a = report.assets
    for name, seconds in report.stages:
        console.print(f"  {name}: {seconds:.1f} s")
    if report.installed_packages:
        console.print(f"  installed packages: {' '.join(report.installed_packages)}")
    state = "installed" if report.changed else "kernel and initramfs already in place"
    console.print(f"firecracker runtime: {state} ({took:.1f} s in all)")
    console.print(f"  kernel    {a.kernel} ({a.kernel_release}, {a.kernel.stat().st_size // 1024**2} MiB)")
    console.print(f"  initramfs {a.initrd} ({a.initrd.stat().st_size // 1024} KiB)")
    console.print(f"  qemu      {a.qemu}, accelerator {accel} ({probe_s:.1f} s to decide, then cached)")
