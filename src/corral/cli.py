"""The `corral` command: one Typer app; `main()` is the only entry point.

Every command that shows something prints it for people, and with `--json` as the API's JSON for
scripts. Errors go to stderr and exit 2; a job that did not succeed makes `job logs -f`, `batch run`
and `demo` exit 1; an interrupt (Ctrl-C, SIGTERM) of a local run cancels its jobs, cleans up and
exits 130 / 143.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from corral import __version__
from corral.errors import CorralError
from corral.protocol.states import TERMINAL, JobState

if TYPE_CHECKING:
    from corral.client import ProducerClient
    from corral.protocol import JobView

T = TypeVar("T")


class Command(TyperCommand):
    """Help as people read it: `Usage: corral repo add [OPTIONS] NAME SOURCE`, and flags without a
    type tag (`--follow`, not `--follow <bool>`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = (p.name or "").upper()
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    """A command group whose flags (--help, --install-completion) show no type tag either."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


def _untyped_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if p.param_type_name == "option" and getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""  # a flag takes no value: no type to show
    return params


def _typer(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False, cls=Group)


app = _typer("corral: run untrusted jobs in sandboxes for a central server.")
repo_app = _typer("Repositories the server serves to executors.")
job_app = _typer("Submit, follow and inspect jobs.")
executor_app = _typer("Run, check or list executors (configured by EXECUTOR_* variables).")
batch_app = _typer("Run the same steps across many repositories.")
app.add_typer(repo_app, name="repo")
app.add_typer(job_app, name="job")
app.add_typer(executor_app, name="executor")
app.add_typer(batch_app, name="batch")


def command(group: typer.Typer, name: str | None = None, **kw: Any) -> Callable[[Callable[..., T]], Any]:
    return group.command(name, cls=Command, **kw)


ServerOpt = Annotated[str, typer.Option("--server", envvar="CORRAL_URL", metavar="URL", help="Server URL.")]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="CORRAL_ADMIN_TOKEN",
        metavar="TOKEN",
        help="Admin token (default: <data-dir>/admin-token).",
    ),
]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", metavar="DIR", help="Server data directory.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts).")]
DEFAULT_URL = "http://127.0.0.1:3080"


class State(StrEnum):
    """The job states, for `--state` (an unknown one is refused with the list)."""

    queued = JobState.QUEUED.value
    processing = JobState.PROCESSING.value
    completed = JobState.COMPLETED.value
    errored = JobState.ERRORED.value
    failed = JobState.FAILED.value
    canceled = JobState.CANCELED.value


def _fail(msg: str) -> typer.Exit:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except CorralError as exc:
        raise _fail(exc.message) from None


def _client(server_url: str, token: str, data_dir: Path | None = None) -> ProducerClient:
    from corral.client import ProducerClient

    if not token:
        path = (data_dir or Path(".corral")) / "admin-token"
        if not path.exists():
            raise _fail(f"no admin token: set CORRAL_ADMIN_TOKEN or pass --token (looked in {path})")
        token = path.read_text().strip()
    return ProducerClient(server_url, token)


def _dump(model: Any) -> Any:
    if isinstance(model, list):
        return [_dump(m) for m in model]
    return model.model_dump(mode="json", by_alias=True)


# -- interrupts -------------------------------------------------------------------------------------
@contextmanager
def _interrupts() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once (the run cancels its jobs and cleans up,
    within a few seconds); later ones only say that the cleanup is under way, so that a second
    Ctrl-C cannot cut it short and leave a server or a container behind. Yields the signals seen."""
    seen: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise KeyboardInterrupt
        os.write(2, b"still stopping: canceling jobs and cleaning up (a few seconds)\n")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _interruptible(fn: Callable[[], T]) -> T:
    """Run `fn` (a local run) with `_interrupts`; an interrupt exits 128 + the signal number."""
    with _interrupts() as seen:
        try:
            return _run(fn)
        except KeyboardInterrupt:
            signum = seen[0] if seen else signal.SIGINT
            typer.secho("stopped.", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(128 + signum) from None


# -- top level ----------------------------------------------------------------------------------------
@command(app)
def version(as_json: JsonOpt = False) -> None:
    """Print corral's version."""
    if as_json:
        _print_json({"version": __version__})
    else:
        typer.echo(__version__)


def _exit_with_parent() -> None:
    """`corral server` started by a local run (PARENT_ENV names its pid) dies with that process,
    so a run killed hard leaves no server behind (Linux PR_SET_PDEATHSIG)."""
    from corral.embedded import PARENT_ENV

    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the call
        raise typer.Exit(1)


@command(app)
def server(
    host: Annotated[str, typer.Option(envvar="CORRAL_HOST", metavar="ADDRESS")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CORRAL_PORT", metavar="PORT")] = 3080,
    data_dir: DataDirOpt = Path(".corral"),
    database_url: Annotated[
        str,
        typer.Option(envvar="CORRAL_DATABASE_URL", metavar="URL", help="Default: SQLite in the data dir."),
    ] = "",
    log_level: Annotated[str, typer.Option(envvar="CORRAL_LOG_LEVEL", metavar="LEVEL")] = "info",
) -> None:
    """Run the server: queue API for executors, producer API, git for jobs, metrics."""
    from corral.server.app import create_app, run
    from corral.server.settings import ServerSettings

    _exit_with_parent()
    settings = ServerSettings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    try:
        settings.check()
        _token, path = settings.ensure_admin_token()
        fastapi_app = create_app(settings)
    except CorralError as exc:
        raise _fail(exc.message) from None
    if path is not None:
        typer.echo(f"admin token: stored in {path} (mode 0600); set CORRAL_ADMIN_TOKEN to choose one")
    docs = f"; API docs: http://{host}:{port}/docs" if settings.docs else ""
    typer.echo(
        f"corral {__version__} serving on http://{host}:{port} (data: {settings.data_dir}, db: "
        f"{settings.db_url.split('@')[-1]}{docs})"
    )
    run(fastapi_app, host, port, log_level)


# -- repositories -------------------------------------------------------------------------------------
def _source(source: str) -> str:
    """A local path as an absolute path (the server resolves it on its host: the same one here);
    a URL (file://...) as given."""
    return source if "://" in source else str(Path(source).expanduser().resolve())


@command(repo_app, "add")
def repo_add(
    name: Annotated[str, typer.Argument(help="Its name for jobs, e.g. acme/api.")],
    source: Annotated[str, typer.Argument(help="A local git repository: a path or a file:// URL.")],
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Register a local git repository SOURCE under NAME (again: refresh its mirror)."""
    c = _client(server_url, token, data_dir)
    added = _run(lambda: c.add_repository(_repo_in(name, _source(source))))
    if as_json:
        _print_json(_dump(added))
        return
    verb = "added" if added.created else "refreshed"
    typer.echo(f"repository {added.name} {verb} (from {added.source})")


def _repo_in(name: str, source: str) -> Any:
    from corral.protocol import RepoIn

    return RepoIn(name=name, path=source)


@command(repo_app, "list")
def repo_list(
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """List repositories."""
    from corral.console import local_time, table

    repos = _run(_client(server_url, token, data_dir).repositories)
    if as_json:
        _print_json(_dump(repos))
    elif not repos:
        typer.echo("no repositories yet: add one with `corral repo add NAME PATH`")
    else:
        table(["NAME", "UPDATED", "SOURCE"], [[r.name, local_time(r.updated_at), r.source] for r in repos])


@command(repo_app, "refresh")
def repo_refresh(
    name: str,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Fetch NAME's source again (a job naming HEAD or a branch does this by itself)."""
    from corral.console import local_time

    repo = _run(lambda: _client(server_url, token, data_dir).refresh_repository(name))
    if as_json:
        _print_json(_dump(repo))
    else:
        typer.echo(f"repository {repo.name} refreshed from {repo.source} at {local_time(repo.updated_at)}")


@command(repo_app, "remove")
def repo_remove(
    name: str,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Forget NAME and delete its mirror (refused while its jobs wait or run)."""
    _run(lambda: _client(server_url, token, data_dir).remove_repository(name))
    if as_json:
        _print_json({"name": name, "removed": True})
    else:
        typer.echo(f"repository {name} removed")


# -- jobs ---------------------------------------------------------------------------------------------
@command(job_app, "submit")
def job_submit(
    queue: str,
    spec: Annotated[Path, typer.Argument(help="Job JSON file (the producer API's fields), or - for stdin.")],
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Submit a job to QUEUE."""
    try:
        raw = sys.stdin.read() if str(spec) == "-" else spec.read_text()
    except OSError as exc:
        raise _fail(f"cannot read {spec}: {exc.strerror or exc}") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _fail(f"{spec} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _fail(f"{spec}: a job is a JSON object (the producer API's fields)")
    c = _client(server_url, token, data_dir)
    job = _run(lambda: c.submit(queue, body))
    if as_json:
        _print_json(job)
    else:
        typer.echo(f"job {job['id']} queued; follow with: corral job logs -f {job['id']}")


@command(job_app, "get")
def job_get(
    job_id: int,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Show a job: its state, where and when it ran, why it failed, its steps (secrets redacted)."""
    job = _run(lambda: _client(server_url, token, data_dir).job(job_id))
    if as_json:
        _print_json(_dump(job))
    else:
        _show_job(job)


def _show_job(job: JobView) -> None:
    from corral.console import local_time
    from corral.terminal import clean

    color = typer.colors.GREEN if job.state == "completed" else None
    if job.state in ("failed", "errored", "canceled"):
        color = typer.colors.RED
    typer.secho(f"job {job.id}: {job.state}", fg=color, bold=True)
    rows: list[tuple[str, str]] = [("queue", job.queue)]
    if job.repository_name:
        rows.append(("repository", f"{job.repository_name} at {job.commit[:12]}"))
    rows += [("created", local_time(job.created_at)), ("started", local_time(job.started_at))]
    rows += [("finished", local_time(job.finished_at))]
    if job.executor_name:
        rows.append(("executor", job.executor_name))
    lost = f", {job.num_resets} lost (executor gone)" if job.num_resets else ""
    rows.append(("attempt", f"{job.attempt}{lost}"))
    if job.cancel_requested and job.state not in TERMINAL:
        rows.append(("cancel", "requested"))
    if job.error:
        rows.append(("error", job.error + (f" ({job.outcome})" if job.outcome else "")))
    if job.exit_codes:
        rows.append(("exit codes", ", ".join(str(c) for c in job.exit_codes)))
    for key, value in rows:
        typer.echo(f"  {key:<11} {clean(value)}")
    steps = [("docker", s) for s in job.spec.get("dockerSteps") or []]
    steps += [("cli", s) for s in job.spec.get("cliSteps") or []]
    for n, (kind, step) in enumerate(steps):
        head = step.get("image", "") if kind == "docker" else "corral " + " ".join(step.get("command") or [])
        typer.echo(f"  step {n} ({kind}{', key ' + step['key'] if step.get('key') else ''}): {clean(head)}")
        for line in step.get("commands") or []:
            typer.echo(f"      $ {clean(str(line))}")
        for env in step.get("env") or []:
            typer.echo(f"      env {clean(str(env))}")
    if job.state == "completed":
        typer.echo(f"  result: corral job result {job.id}  (--diff, --file NAME)")


@command(job_app, "list")
def job_list(
    queue: Annotated[str | None, typer.Option(metavar="QUEUE", help="Only this queue.")] = None,
    state: Annotated[State | None, typer.Option(help="Only jobs in this state.")] = None,
    repo: Annotated[str | None, typer.Option(metavar="NAME", help="Only jobs of this repository.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, metavar="N", help="At most N jobs.")] = 50,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    from corral.console import local_time, table

    c = _client(server_url, token, data_dir)
    jobs = _run(
        lambda: c.jobs(queue=queue, state=state.value if state else None, repository=repo, limit=limit)
    )
    if as_json:
        _print_json(_dump(jobs))
        return
    if not jobs:
        asked = [f"{k} {v}" for k, v in (("queue", queue), ("state", state), ("repository", repo)) if v]
        typer.echo("no jobs" + (f" ({', '.join(asked)})" if asked else " yet"))
        return
    rows = [
        [
            str(j.id),
            j.queue,
            j.state,
            local_time(j.created_at),
            _took(j),
            j.repository_name or "-",
            (j.error or "")[:60],
        ]
        for j in jobs
    ]
    table(["ID", "QUEUE", "STATE", "CREATED", "TOOK", "REPOSITORY", "ERROR"], rows)


def _took(job: JobView) -> str:
    from datetime import datetime

    if not job.started_at or not job.finished_at:
        return "-"
    t0, t1 = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (job.started_at, job.finished_at))
    seconds = max(0.0, (t1 - t0).total_seconds())
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@command(job_app, "logs")
def job_logs(
    job_id: int,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Stream until the job ends (reconnecting if the server restarts); exit 1 unless it "
            "completed.",
        ),
    ] = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Print the job's output exactly, terminal control sequences included "
            "(by default they are removed: a job could retitle your window or write your clipboard).",
        ),
    ] = False,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Print a job's logs (without terminal control sequences unless --raw)."""
    c = _client(server_url, token, data_dir)
    if follow:
        raise typer.Exit(_follow(c, job_id, raw=raw, as_json=as_json))
    logs = _run(lambda: c.job_logs(job_id))
    if as_json:
        _print_json(_dump(logs))
        return
    job = _run(lambda: c.job(job_id))
    _print_logs(logs.entries, job, raw=raw)


def _print_logs(entries: list[Any], job: JobView, *, raw: bool) -> None:
    from corral.console import overwritten
    from corral.terminal import clean

    attempt, last = None, None
    for e in entries:
        if attempt is not None and e.attempt > attempt:
            how = f"failed ({last.key} exit {last.exit_code})" if last and last.exit_code else "lost"
            typer.secho(f"↻ attempt {attempt} {how}; attempt {e.attempt}", fg=typer.colors.YELLOW, bold=True)
        attempt, last = (e.attempt if attempt is None else max(attempt, e.attempt)), e
        if e.exit_code is not None:
            end = f"exit {e.exit_code}, {e.duration_ms or 0} ms"
        elif job.state in TERMINAL or e.attempt < job.attempt:
            end = "ended without an exit code"
        else:
            end = "running"
        if raw:  # exactly as stored (click's echo would strip colour codes when piped)
            sys.stdout.write(f"== {e.key} ({end})\n{e.out}")
            sys.stdout.flush()
            continue
        typer.secho(f"== {clean(e.key)} ({end})", bold=True)
        out = clean("\n".join(overwritten(line) for line in e.out.split("\n")))
        typer.echo(out, nl=bool(out) and not out.endswith("\n"))


def _follow(c: ProducerClient, job_id: int, *, raw: bool, as_json: bool) -> int:
    """Stream the job's log; 0 when it completed, 1 when it failed or was canceled (as
    `gh run watch --exit-status`), 2 when the server could not be followed."""
    from corral.console import LogPrinter
    from corral.protocol import StateEvent

    printer = LogPrinter(raw=raw)
    told: list[str] = []

    def reconnecting(why: str) -> None:
        if not told:
            typer.secho(f"lost the server ({why}); reconnecting…", fg=typer.colors.YELLOW, err=True)
        told.append(why)

    final = None
    try:
        for ev in c.follow(job_id, on_reconnect=reconnecting):
            if told:
                typer.secho("reconnected", fg=typer.colors.YELLOW, err=True)
                told.clear()
            if as_json:
                typer.echo(json.dumps(_dump(ev)))
            else:
                printer.event(ev)
            if isinstance(ev, StateEvent):
                final = ev.state
    except CorralError as exc:
        printer.close()
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        return 2
    except KeyboardInterrupt:
        printer.close()
        return 130
    return 0 if final == "completed" else 1


@command(job_app, "cancel")
def job_cancel(
    job_id: int,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job (at once when queued; through its executor when running)."""
    job = _run(lambda: _client(server_url, token, data_dir).cancel_job(job_id))
    if as_json:
        _print_json(_dump(job))
    elif job.state == "canceled":
        typer.echo(f"job {job.id} canceled")
    else:
        typer.echo(f"job {job.id}: cancel sent to its executor {job.executor_name or ''}".rstrip())


@command(job_app, "retry")
def job_retry(
    job_id: int,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Submit a finished job again (a new job with the same commit, steps and files)."""
    job = _run(lambda: _client(server_url, token, data_dir).retry_job(job_id))
    if as_json:
        _print_json(_dump(job))
    else:
        typer.echo(f"job {job_id} submitted again as job {job.id}; follow with: corral job logs -f {job.id}")


@command(job_app, "result")
def job_result(
    job_id: int,
    diff: Annotated[bool, typer.Option("--diff", help="Print the diff only (for git apply).")] = False,
    file: Annotated[
        str | None, typer.Option("--file", metavar="NAME", help="Write output file NAME to stdout.")
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="With --diff or --file: write the exact bytes even to a terminal (by default a "
            "terminal gets them without control sequences; a pipe or file always gets them exactly).",
        ),
    ] = False,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Show a finished job's result: exit codes, the diff's size, its output files."""
    from corral.terminal import clean

    if diff and file is not None:
        raise _fail("give --diff or --file, not both")
    res = _run(lambda: _client(server_url, token, data_dir).job_result(job_id))
    if diff:
        _write_job_bytes(res.diff.encode("utf-8", "surrogatepass"), raw=raw)
        return
    if file is not None:
        if file not in res.files:
            names = ", ".join(sorted(res.files)) or "none"
            raise _fail(f"job {job_id} has no output file {file!r} (its files: {names})")
        _write_job_bytes(base64.b64decode(res.files[file]), raw=raw)
        return
    if as_json:
        _print_json(_dump(res))
        return
    codes = ", ".join(str(c) for c in res.exit_codes) or "none"
    typer.echo(f"job {job_id} (attempt {res.attempt}): exit codes {codes}")
    changed = [ln for ln in res.diff.splitlines() if ln.startswith("diff --git ")]
    added = sum(1 for ln in res.diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in res.diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    if res.diff:
        typer.echo(f"  diff: {len(changed)} file(s) changed, +{added} -{removed}  (--diff prints it)")
    else:
        typer.echo("  diff: no changes")
    for name, content in sorted(res.files.items()):
        size = len(content) * 3 // 4 - content[-2:].count("=")
        typer.echo(f"  file {clean(name)} ({size} bytes)  (--file {clean(name)} prints it)")


def _write_job_bytes(data: bytes, *, raw: bool) -> None:
    """A job's bytes (its diff, an output file) to stdout: exactly to a pipe or a file (`| git apply`,
    `> out.bin`) or with --raw; to a terminal without control sequences (a job could write the
    clipboard with OSC 52, retitle the window, or hide text between a secret's halves)."""
    from corral.terminal import clean

    if not raw and sys.stdout.isatty():
        sys.stdout.write(clean(data.decode("utf-8", "replace")))
    else:
        sys.stdout.buffer.write(data)
    sys.stdout.flush()


# -- executors ---------------------------------------------------------------------------------------
def _executor_variables() -> str:
    """The variables an executor reads, from the one table of them (corral.executor.variables):
    those some runtime honours, with their defaults and meanings (for `executor run --help`)."""
    from rich.markup import escape

    from corral.executor.variables import EVERY, VARIABLES

    rows = []
    for v in VARIABLES.values():
        if not v.runtimes:
            continue  # recognised (Sourcegraph's) but honoured by no runtime yet: see the README
        only = "" if EVERY in v.runtimes else f" ({', '.join(sorted(v.runtimes))} runtime)"
        rows.append((v.name, v.default or "-", v.meaning + only))
    name_w = max(len(r[0]) for r in rows)
    default_w = min(max(len(r[1]) for r in rows), 12)
    lines = [f"{n:<{name_w}}  {d:<{default_w}}  {m}" for n, d, m in rows]
    head = "Configuration: environment variables (default, meaning); the README's executor table has more."
    return escape(head + "\n\n" + "\n".join(lines))


def _lazy_epilog() -> str:
    try:
        return _executor_variables()
    except Exception as exc:  # --help must never fail
        return f"(the EXECUTOR_* variables could not be listed: {exc})"


@command(executor_app, "run", epilog=_lazy_epilog())
def executor_run(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages too.")] = False,
) -> None:
    """Run an executor: dequeue jobs and run them in the configured runtime."""
    import asyncio
    import logging

    from corral.executor.main import run_executor
    from corral.executor.settings import ExecutorSettings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = ExecutorSettings.from_env()
        asyncio.run(run_executor(settings))
    except CorralError as exc:
        raise _fail(exc.message) from None


@command(executor_app, "validate")
def executor_validate(as_json: JsonOpt = False) -> None:
    """Check the configuration, the runtime's prerequisites and the server connection."""
    from corral.executor.main import run_validate

    try:
        problems = run_validate()
    except CorralError as exc:
        if as_json:
            _print_json({"ok": False, "problems": [exc.message]})
            raise typer.Exit(1) from None
        raise _fail(exc.message) from None
    if as_json:
        _print_json({"ok": not problems, "problems": problems})
        raise typer.Exit(1 if problems else 0)
    if problems:
        for p in problems:
            typer.secho(f"✗ {p}", fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.secho("✓ configuration, runtime and server connection are fine", fg=typer.colors.GREEN)


class InstallTarget(StrEnum):
    """What `executor install` prepares."""

    firecracker = "firecracker"


@command(executor_app, "install")
def executor_install(
    target: Annotated[InstallTarget, typer.Argument(metavar="TARGET", help="firecracker")],
    assets_dir: Annotated[
        Path | None, typer.Option("--dir", metavar="DIR", help="Where the assets go.")
    ] = None,
) -> None:
    """Prepare this machine for a runtime from Debian packages (idempotent; re-running is a no-op)."""
    from corral.executor.runtimes.firecracker.install import run_install

    try:
        run_install(assets_dir)
    except CorralError as exc:
        raise _fail(exc.message) from None


@command(executor_app, "list")
def executor_list(
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """List the executors the server has heard from (active: a heartbeat in the last 30 s)."""
    from corral.console import local_time, table

    executors = _run(_client(server_url, token, data_dir).executor_list)
    if as_json:
        _print_json(_dump(executors))
        return
    if not executors:
        typer.echo("no executor has connected yet: start one with `corral executor run`")
        return
    rows = [
        [
            e.name,
            "active" if e.active else "gone",
            ",".join(e.queues),
            e.executor_version or "-",
            ",".join(str(i) for i in e.running_job_ids) or "-",
            local_time(e.last_seen_at),
        ]
        for e in executors
    ]
    table(["NAME", "STATUS", "QUEUES", "VERSION", "RUNNING", "LAST SEEN"], rows)


# -- local runs ---------------------------------------------------------------------------------------
@command(app)
def demo(
    runtime: Annotated[
        str | None, typer.Option(metavar="NAME", help="docker or shell (default: docker when ready).")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the server running afterwards.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Where to keep the demo's data (default: a temp dir).")
    ] = None,
) -> None:
    """Run a batch change across three sample repositories with a server and an executor."""
    from corral.demo import run_demo

    bad = _interruptible(lambda: run_demo(runtime, keep, data_dir))
    raise typer.Exit(1 if bad else 0)


@command(batch_app, "run")
def batch_run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Batch spec (YAML).")],
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="CORRAL_URL",
            metavar="URL",
            help="Use this server; default: start one here with an executor.",
        ),
    ] = None,
    token: TokenOpt = "",
    runtime: Annotated[
        str, typer.Option(metavar="NAME", help="Runtime of the embedded executor.")
    ] = "docker",
    data_dir: Annotated[Path, typer.Option(metavar="DIR", help="Data of the embedded server.")] = Path(
        ".corral-batch"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Run SPEC's steps in each of its repositories; print every diff (exit 1 unless all completed)."""
    from corral.batch import BatchSpec, report, run, summary
    from corral.client import ProducerClient
    from corral.embedded import embedded

    def go() -> int:
        spec = BatchSpec.load(spec_path)
        base = spec_path.resolve().parent
        if server_url:
            runs = run(spec, _client(server_url, token), base, local=False, live=not as_json)
        else:
            from corral.batch import plan

            plan(spec, base, None)  # a bad spec fails before a server is started
            with embedded(data_dir.resolve(), runtime=runtime) as emb:
                client = ProducerClient(emb.url, emb.admin_token)
                runs = run(spec, client, base, local=True, live=not as_json)
        if as_json:
            _print_json(summary(runs))
            return sum(r.state != "completed" for r in runs)
        return report(runs)

    bad = _interruptible(go)
    raise typer.Exit(1 if bad else 0)


from corral.cli_secret import secret_app  # noqa: E402 (it builds on this module's helpers)

app.add_typer(secret_app, name="secret")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
