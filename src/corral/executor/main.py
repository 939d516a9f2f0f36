"""`corral executor run|validate`: build the executor from the environment and run or check it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil

from corral.errors import CorralError
from corral.executor.client import QueueClient
from corral.executor.runtimes.base import Runtime
from corral.executor.runtimes.registry import make_cli_runtime, make_runtime
from corral.executor.settings import ExecutorSettings
from corral.executor.worker import Worker
from corral.executor.workspace.host import check_quota_support


async def build_worker(settings: ExecutorSettings, *, echo: bool = False) -> Worker:
    """The runtime (checked), its CLI-step sandbox, a client and the worker around them."""
    runtime = make_runtime(settings)
    problems = await runtime.check()
    if problems:
        raise CorralError(f"runtime {runtime.name} is not ready:\n  " + "\n  ".join(problems))
    cli_runtime: Runtime | None = make_cli_runtime(settings, runtime)
    if cli_runtime is not None and cli_runtime is not runtime and await cli_runtime.check():
        logging.getLogger("corral.executor").warning("shell sandbox unavailable: CLI steps will fail")
        cli_runtime = None
    if settings.job_disk_space > 0 and (quota := check_quota_support()):
        raise CorralError("EXECUTOR_JOB_DISK_SPACE cannot be enforced here:\n  " + "\n  ".join(quota))
    settings.workspace_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Worker(settings, QueueClient(settings), runtime, cli_runtime, echo=echo)


async def run_executor(settings: ExecutorSettings, *, install_signals: bool = True) -> None:
    worker = await build_worker(settings)
    try:
        await worker.run(install_signals=install_signals)
    finally:
        await worker.client.aclose()


async def validate(settings: ExecutorSettings) -> list[str]:
    """Everything that would keep this executor from working, in plain words ([] = all good)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the executor runs as root (it creates sandboxes, cgroups and workspaces)")
    if not shutil.which("git"):
        problems.append("git is not installed (apt-get install git)")
    try:
        runtime = make_runtime(settings)
        problems += [f"runtime {runtime.name}: {p}" for p in await runtime.check()]
    except CorralError as exc:
        problems.append(exc.message)
    if settings.job_disk_space > 0:
        problems += [f"EXECUTOR_JOB_DISK_SPACE: {p} (or set it to 0)" for p in check_quota_support()]
    client = QueueClient(settings, retry_for=0)
    try:
        await client.test_auth()
        await client.heartbeat([], {})  # also refuses an unknown queue
    except CorralError as exc:
        problems.append(f"server {settings.frontend_url}: {exc.message}")
    finally:
        await client.aclose()
    return problems


def run_validate(env: dict[str, str] | None = None) -> list[str]:
    return asyncio.run(validate(ExecutorSettings.from_env(env)))
