"""The `corral` command: one Typer app; `main()` is the only entry point."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral import __version__
from corral.errors import CorralError
from corral.terminal import Sanitizer, clean

app = typer.Typer(
    help="corral: run untrusted jobs in sandboxes for a central server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
repo_app = typer.Typer(help="Repositories the server serves to executors.", no_args_is_help=True)
job_app = typer.Typer(help="Submit and follow jobs.", no_args_is_help=True)
executor_app = typer.Typer(
    help="Run or check an executor (configured by EXECUTOR_* variables).", no_args_is_help=True
)
batch_app = typer.Typer(help="Run the same steps across many repositories.", no_args_is_help=True)
app.add_typer(repo_app, name="repo")
app.add_typer(job_app, name="job")
app.add_typer(executor_app, name="executor")
app.add_typer(batch_app, name="batch")

ServerOpt = Annotated[str, typer.Option("--server", envvar="CORRAL_URL", help="Server URL.")]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--token", envvar="CORRAL_ADMIN_TOKEN", help="Admin token (default: <data-dir>/admin-token)."
    ),
]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Server data directory.")
]
DEFAULT_URL = "http://127.0.0.1:3080"


def _fail(msg: str) -> typer.Exit:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.command()
def version() -> None:
    """Print corral's version."""
    typer.echo(__version__)


@app.command()
def server(
    host: Annotated[str, typer.Option(envvar="CORRAL_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CORRAL_PORT")] = 3080,
    data_dir: DataDirOpt = Path(".corral"),
    database_url: Annotated[
        str, typer.Option(envvar="CORRAL_DATABASE_URL", help="Default: SQLite in the data dir.")
    ] = "",
    log_level: Annotated[str, typer.Option(envvar="CORRAL_LOG_LEVEL")] = "info",
) -> None:
    """Run the server: queue API for executors, producer API, git for jobs, metrics."""
    from corral.server.app import create_app, run
    from corral.server.settings import ServerSettings

    settings = ServerSettings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    try:
        settings.check()
        _token, path = settings.ensure_admin_token()
        fastapi_app = create_app(settings)
    except CorralError as exc:
        raise _fail(exc.message) from None
    if path is not None:
        typer.echo(f"admin token: stored in {path} (mode 0600); set CORRAL_ADMIN_TOKEN to choose one")
    typer.echo(
        f"corral {__version__} serving on http://{host}:{port} (data: {settings.data_dir}, db: "
        f"{settings.db_url.split('@')[-1]})"
    )
    run(fastapi_app, host, port, log_level)


def _client(server_url: str, token: str, data_dir: Path | None = None) -> Any:
    from corral.client import ProducerClient

    if not token:
        path = (data_dir or Path(".corral")) / "admin-token"
        if not path.exists():
            raise _fail(f"no admin token: set CORRAL_ADMIN_TOKEN or pass --token (looked in {path})")
        token = path.read_text().strip()
    return ProducerClient(server_url, token)


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _run(fn: Any) -> Any:
    try:
        return fn()
    except CorralError as exc:
        raise _fail(exc.message) from None


@repo_app.command("add")
def repo_add(
    name: str,
    path: Path,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
) -> None:
    """Register (or refresh) a local git repository PATH under NAME."""
    c = _client(server_url, token, data_dir)
    _print(_run(lambda: c.add_repo(name, str(path.resolve()))))


@repo_app.command("list")
def repo_list(
    server_url: ServerOpt = DEFAULT_URL, token: TokenOpt = "", data_dir: DataDirOpt = Path(".corral")
) -> None:
    """List repositories."""
    _print(_run(_client(server_url, token, data_dir).list_repos))


@job_app.command("submit")
def job_submit(
    queue: str,
    spec: Annotated[Path, typer.Argument(help="Job JSON file (the producer API's fields), or - for stdin.")],
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
) -> None:
    """Submit a job to QUEUE."""
    raw = sys.stdin.read() if str(spec) == "-" else spec.read_text()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _fail(f"{spec} is not valid JSON: {exc}") from None
    c = _client(server_url, token, data_dir)
    _print(_run(lambda: c.submit(queue, body)))


@job_app.command("get")
def job_get(
    job_id: int,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
) -> None:
    """Show a job with its state and results."""
    _print(_run(lambda: _client(server_url, token, data_dir).get(job_id)))


@job_app.command("list")
def job_list(
    queue: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    limit: int = 50,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
) -> None:
    """List jobs, newest first."""
    c = _client(server_url, token, data_dir)
    for j in _run(lambda: c.list(queue=queue, state=state, limit=limit)):
        typer.echo(
            f"{j['id']:>6}  {j['queue']:<12} {j['state']:<10} {j['repositoryName'] or '-':<24} "
            f"{(j['error'] or '')[:60]}"
        )


@job_app.command("logs")
def job_logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
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
) -> None:
    """Print a job's logs (without terminal control sequences unless --raw)."""
    c = _client(server_url, token, data_dir)
    if follow:
        from corral.console import print_event

        streams: dict[int, Sanitizer] = {}
        for ev in c.stream_logs(job_id):
            print_event(ev if raw else _clean_event(ev, streams), sanitize=False)
        return
    for e in _run(lambda: c.logs(job_id))["entries"]:
        if raw:  # exactly as stored (click's echo would strip colour codes when piped)
            sys.stdout.write(f"== {e['key']} (exit {e['exitCode']}, {e['durationMs']} ms)\n{e['out']}")
            sys.stdout.flush()
            continue
        typer.secho(f"== {clean(e['key'])} (exit {e['exitCode']}, {e['durationMs']} ms)", bold=True)
        typer.echo(clean(e["out"]), nl=False)


def _clean_event(ev: dict[str, Any], streams: dict[int, Sanitizer]) -> dict[str, Any]:
    """A log stream event with its job-controlled text sanitised. Output is sanitised per entry as
    a stream, so that a sequence split across two events is still removed."""
    if ev.get("type") == "output":
        stream = streams.setdefault(ev.get("entryId", 0), Sanitizer())
        return {**ev, "data": stream.feed(str(ev.get("data", "")))}
    clean_ev = {k: clean(v) if isinstance(v, str) else v for k, v in ev.items()}
    if isinstance(ev.get("command"), list):
        clean_ev["command"] = [clean(str(c)) for c in ev["command"]]
    if ev.get("type") == "exit" and ev.get("entryId") in streams:
        streams.pop(ev["entryId"]).flush()  # an unfinished sequence at the end: dropped
    return clean_ev


@job_app.command("cancel")
def job_cancel(
    job_id: int,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
) -> None:
    """Cancel a job (at once when queued; through its executor when running)."""
    _print(_run(lambda: _client(server_url, token, data_dir).cancel(job_id)))


@executor_app.command("run")
def executor_run(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
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


@executor_app.command("validate")
def executor_validate() -> None:
    """Check the configuration, the runtime's prerequisites and the server connection."""
    from corral.executor.main import run_validate

    try:
        problems = run_validate()
    except CorralError as exc:
        raise _fail(exc.message) from None
    if problems:
        for p in problems:
            typer.secho(f"✗ {p}", fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.secho("✓ configuration, runtime and server connection are fine", fg=typer.colors.GREEN)


@app.command()
def demo(
    runtime: Annotated[str | None, typer.Option(help="docker or shell (default: docker when ready)")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the server running afterwards.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where to keep the demo's data (default: a temp dir).")
    ] = None,
) -> None:
    """Run a batch change across three sample repositories with a server and an executor."""
    from corral.demo import run_demo

    try:
        bad = run_demo(runtime, keep, data_dir)
    except CorralError as exc:
        raise _fail(exc.message) from None
    raise typer.Exit(1 if bad else 0)


@batch_app.command("run")
def batch_run(
    spec_path: Annotated[Path, typer.Argument(help="Batch spec (YAML).")],
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="CORRAL_URL", help="Use this server; default: start one here with an executor."
        ),
    ] = None,
    token: TokenOpt = "",
    runtime: Annotated[str, typer.Option(help="Runtime of the embedded executor.")] = "docker",
    data_dir: Annotated[Path, typer.Option(help="Data of the embedded server.")] = Path(".corral-batch"),
) -> None:
    """Run SPEC's steps in each of its repositories; print every diff."""
    from corral.batch import BatchSpec, follow, report, submit
    from corral.client import ProducerClient
    from corral.embedded import embedded

    try:
        spec = BatchSpec.load(spec_path)
        base = spec_path.resolve().parent
        if server_url:
            client = _client(server_url, token)
            runs = submit(spec, client, base)
            follow(runs, client)
            bad = report(runs)
        else:
            with embedded(data_dir.resolve(), runtime=runtime) as emb:
                client = ProducerClient(emb.url, emb.admin_token)
                runs = submit(spec, client, base)
                follow(runs, client)
                bad = report(runs)
    except CorralError as exc:
        raise _fail(exc.message) from None
    raise typer.Exit(1 if bad else 0)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
