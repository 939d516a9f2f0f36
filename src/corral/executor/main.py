"""`corral executor run|validate`: build the executor from the environment and run or check it.

Both go through the same checks (settings, then `hostcheck.check_host`, then the runtime), so what
validate passes, run starts with; run stops at the first unusable part with a one-line error.

validate talks to the server only through `GET /.executors/test/auth`, as Sourcegraph's `executor
validate` does (cmd/executor/internal/run/validate.go, validateAuthorizationToken): no heartbeat,
so it never shows up in the server's executor list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import shutil
from dataclasses import dataclass, field

import httpx

from corral import __version__
from corral.errors import CorralError
from corral.executor.client import QueueClient
from corral.executor.hostcheck import HostFacts, check_host, filesystem_type
from corral.executor.runtimes.base import Describer, Runtime
from corral.executor.runtimes.registry import DEFAULT_CLI_RUNTIME, make_cli_runtime, make_runtime
from corral.executor.settings import ExecutorSettings
from corral.executor.telemetry import src_cli_version, tool_version
from corral.executor.worker import Worker
from corral.protocol import EXTENSIONS_HEADER
from corral.units import format_duration, format_size, human_size

__all__ = ["Validation", "build_worker", "probe_server", "run_executor", "run_validate", "validate"]

log = logging.getLogger("corral.executor")

# Sourcegraph's MinGitVersionConstraint ">= 2.26" (cmd/executor/internal/config/consts.go)
MIN_GIT = (2, 26)
AUTH_PATH = "/.executors/test/auth"
PROBE_TIMEOUT = 10.0  # seconds for validate's one request to the server
SHOWN_BODY = 200  # characters of an unexpected answer repeated in a message


async def build_worker(settings: ExecutorSettings, *, echo: bool = False) -> Worker:
    """The host checked, the runtime (checked), its CLI-step sandbox, a client and the worker.
    Raises CorralError, one line per problem, before anything is started."""
    for warning in settings.warnings:
        log.warning("%s", warning)
    host = await check_host(settings)
    for warning in host.warnings:
        log.warning("%s", warning)
    if host.problems:
        raise CorralError("; ".join(host.problems))
    runtime = make_runtime(settings)
    problems = await runtime.check()
    if problems:
        raise CorralError(f"runtime {runtime.name} is not ready:\n  " + "\n  ".join(problems))
    cli_runtime: Runtime | None = make_cli_runtime(settings, runtime)
    if cli_runtime is not None and cli_runtime is not runtime and await cli_runtime.check():
        log.warning("shell sandbox unavailable: CLI steps will fail")
        cli_runtime = None
    return Worker(settings, QueueClient(settings), runtime, cli_runtime, echo=echo)


async def run_executor(settings: ExecutorSettings, *, install_signals: bool = True) -> None:
    worker = await build_worker(settings)
    try:
        await worker.run(install_signals=install_signals)
    finally:
        await worker.client.aclose()
        for runtime in worker.handler.runtimes.distinct():
            await _close(runtime)


async def _close(runtime: Runtime | None) -> None:
    """Close a runtime's own client (its API session) when it has one."""
    close = getattr(runtime, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


# -- validate ------------------------------------------------------------------------------------
@dataclass
class Validation:
    problems: list[str] = field(default_factory=list)  # [] = this executor can work
    warnings: list[str] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)  # (what, value), for people

    def lines(self) -> list[str]:
        width = max((len(k) for k, _ in self.summary), default=0)
        return [f"{k.ljust(width)}  {v}" for k, v in self.summary]


async def probe_server(
    settings: ExecutorSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[str, str | None]:
    """(what the server is, the problem or None) from one `GET <url>/.executors/test/auth` with
    the executor token: 200 "ok" from an executor queue API; a corral server says so by its
    X-Corral-Extensions header."""
    url = settings.frontend_url + AUTH_PATH
    client = QueueClient(settings, transport=transport, retry_for=0)
    try:
        r = await client.http.get(
            AUTH_PATH,
            headers={"Authorization": f"token-executor {settings.frontend_password}"},
            timeout=PROBE_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        return "", f"cannot reach the server at {settings.frontend_url}: {exc!r}"
    finally:
        await client.aclose()
    media = r.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "text/html":
        return "", f"not an executor queue API (got text/html from {url}, status {r.status_code})"
    body = " ".join(r.text.split())[:SHOWN_BODY]
    if r.status_code == 401:
        return "", (
            f"auth check failed: 401 {body} (is EXECUTOR_FRONTEND_PASSWORD the server's "
            "EXECUTORS_ACCESS_TOKEN, or in Sourcegraph executors.accessToken in the site configuration?)"
        )
    if r.status_code != 200:
        return "", f"auth check failed: {r.status_code} {body} (from {url})"
    if r.text.strip() != "ok":
        return "", f"not an executor queue API (got {media or 'no content type'} {body!r} from {url})"
    extensions = r.headers.get(EXTENSIONS_HEADER)
    if extensions is not None:
        return f"a corral server (extensions: {extensions or 'none'})", None
    return "a Sourcegraph frontend (or a corral server with extensions off)", None


def _git_problem(version: str) -> str | None:
    if not version:
        return "git is not installed (apt-get install git)"
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m[1]), int(m[2])) < MIN_GIT:
        return f"git {version} is too old: {MIN_GIT[0]}.{MIN_GIT[1]} or newer is needed"
    return None


def _limits(s: ExecutorSettings, host: HostFacts) -> str:
    if s.job_num_cpus == 0:
        cpus = "unbounded"
    elif s.job_num_cpus > host.cpus:
        cpus = f"{host.cpus} (EXECUTOR_JOB_NUM_CPUS={s.job_num_cpus:g}, capped at the host's)"
    else:
        cpus = f"{s.job_num_cpus:g}"

    def size(n: int) -> str:
        return format_size(n) if n else "unbounded"

    return (
        f"cpus {cpus}, memory {size(s.job_memory)}, disk {size(s.job_disk_space)}, "
        f"processes {s.job_pids}, timeout {format_duration(s.maximum_runtime_per_job)}"
    )


def _oci(s: ExecutorSettings) -> str:
    """The docker runtime's OCI runtimes (without / with network), e.g. ", runsc / runsc-hostnet"."""
    if s.runtime != "docker":
        return ""
    plain, networked = s.docker.step_runtimes()
    return f", OCI runtime {plain or 'runc'} / with network {networked or 'runc'}"


async def validate(settings: ExecutorSettings) -> Validation:
    """Everything that would keep this executor from working, in plain words, plus what it would
    run with (Validation.summary)."""
    out = Validation(warnings=settings.warnings)
    if os.geteuid() != 0 and settings.runtime != "kubernetes":  # pods are the cluster's to make
        out.problems.append("the executor runs as root (it creates sandboxes, cgroups and workspaces)")
    git = tool_version(["git", "version"], prefix="git version ")
    if problem := _git_problem(git):
        out.problems.append(problem)
    host = await check_host(settings)
    out.problems += host.problems
    out.warnings += host.warnings
    runtime: Runtime | None = None
    described: list[tuple[str, str]] = []
    try:
        runtime = make_runtime(settings)
        runtime_problems = await runtime.check()
        out.problems += [f"runtime {runtime.name}: {p}" for p in runtime_problems]
        if not runtime_problems and isinstance(runtime, Describer):
            described = await runtime.describe()
    except CorralError as exc:
        out.problems.append(exc.message)
    finally:
        await _close(runtime)
    kind, problem = await probe_server(settings)
    if problem:
        out.problems.append(f"server {settings.frontend_url}: {problem}")

    facts = HostFacts.read()
    cli = getattr(runtime, "cli_runtime", DEFAULT_CLI_RUNTIME) if runtime else DEFAULT_CLI_RUNTIME
    root = settings.workspace_root
    fs = filesystem_type(root) or "unknown filesystem"
    free = f", {human_size(shutil.disk_usage(root).free)} free" if root.is_dir() else ""
    docker = tool_version(["docker", "version", "--format", "{{.Server.Version}}"]) or "-"
    bwrap = tool_version(["bwrap", "--version"], prefix="bubblewrap ") or "-"
    src = src_cli_version(settings.src_cli_path) or ("-" if settings.src_cli_path else "not installed")
    stop = [f"after {settings.num_total_jobs} jobs"] if settings.num_total_jobs else []
    stop += [f"after {format_duration(settings.max_active_time)}"] if settings.max_active_time else []
    out.summary = [
        ("server", f"{settings.frontend_url}: {kind or 'not reachable as an executor queue API'}"),
        (
            "runtime",
            f"{settings.runtime}{_oci(settings)} (CLI steps and the diff: "
            f"{cli if cli != settings.runtime else 'itself'})",
        ),
        *described,
        ("queues", ", ".join(settings.queues)),
        ("per job", _limits(settings, facts)),
        ("jobs", f"{settings.maximum_num_jobs} at a time; stop {' or '.join(stop) or 'never'}"),
        ("workspaces", f"{root} ({fs}{free})"),
        (
            "versions",
            f"corral {__version__}, git {git or '-'}, docker {docker}, bwrap {bwrap}, "
            f"kernel {platform.release()}, src {src}",
        ),
        ("host", f"{facts.cpus} CPUs, {human_size(facts.memory)} memory"),
    ]
    return out


def run_validate(env: dict[str, str] | None = None) -> list[str]:
    """`corral executor validate`: prints the warnings and, when all is well, the summary; returns
    the problems (the CLI prints them and exits 1)."""
    result = asyncio.run(validate(ExecutorSettings.from_env(env)))
    for warning in result.warnings:
        print(f"! {warning}")
    if not result.problems:
        for line in result.lines():
            print(line)
    return result.problems
