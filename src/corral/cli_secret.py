"""`corral secret ...`: executor secrets (corral.protocol.secrets), registered by corral.cli.

A value is never a command-line argument (other users see those in `ps`): it is read from a file
(`--from-file`), from standard input, or asked for without echo on a terminal. One trailing
newline of a file or of standard input is dropped (`echo value | corral secret add NAME`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from corral.cli import (
    DEFAULT_URL,
    DataDirOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    _client,
    _dump,
    _fail,
    _print_json,
    _run,
    _typer,
    command,
)
from corral.protocol.secrets import MAX_SECRET_VALUE_BYTES, SecretIn, SecretValueIn, last_newline_dropped

__all__ = ["secret_app"]

secret_app = _typer("Executor secrets: values a job names get into its steps' env, redacted everywhere.")

NamespaceOpt = Annotated[
    str | None,
    typer.Option("--namespace", metavar="NS", help="user:NAME or org:NAME (default: the global scope)."),
]
FromFileOpt = Annotated[
    Path | None,
    typer.Option("--from-file", metavar="FILE", help="Read the value from FILE (default: stdin)."),
]


def _read_value(from_file: Path | None) -> str:
    limit = MAX_SECRET_VALUE_BYTES + 2  # room for the newline; the server names the bound
    if from_file is not None:
        try:
            with from_file.open("rb") as f:
                raw = f.read(limit + 1)
        except OSError as exc:
            raise _fail(f"cannot read {from_file}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        raw = typer.prompt("value", hide_input=True, err=True).encode()
    else:
        raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        raise _fail(f"the value is over the limit of {MAX_SECRET_VALUE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("the value is not UTF-8 text (an environment variable's value)") from None
    return last_newline_dropped(text)


def _problem(exc: ValidationError) -> str:
    return "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())


@command(secret_app, "add")
def secret_add(
    name: Annotated[str, typer.Argument(help="Its name: the environment variable a job's steps get.")],
    namespace: NamespaceOpt = None,
    from_file: FromFileOpt = None,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Store a secret NAME (its value from --from-file, stdin, or a prompt)."""
    try:
        body = SecretIn(name=name, value=_read_value(from_file), namespace=namespace)
    except ValidationError as exc:
        raise _fail(_problem(exc)) from None
    made = _run(lambda: _client(server_url, token, data_dir).add_secret(body))
    if as_json:
        _print_json(_dump(made))
    else:
        typer.echo(f"secret {made.name} added ({made.namespace or 'global'}, id {made.id})")


@command(secret_app, "set")
def secret_set(
    secret_id: Annotated[int, typer.Argument(metavar="ID", help="The secret's id (corral secret list).")],
    from_file: FromFileOpt = None,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Give secret ID a new value (jobs dequeued from now on get it)."""
    try:
        body = SecretValueIn(value=_read_value(from_file))
    except ValidationError as exc:
        raise _fail(_problem(exc)) from None
    s = _run(lambda: _client(server_url, token, data_dir).set_secret(secret_id, body))
    if as_json:
        _print_json(_dump(s))
    else:
        typer.echo(f"secret {s.name} ({s.namespace or 'global'}, id {s.id}) has a new value")


@command(secret_app, "list")
def secret_list(
    namespace: NamespaceOpt = None,
    global_only: Annotated[bool, typer.Option("--global", help="Only the global scope's.")] = False,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """List secrets (names and scopes; values are never shown)."""
    from corral.console import local_time, table

    rows = _run(lambda: _client(server_url, token, data_dir).secret_list(namespace, global_only=global_only))
    if as_json:
        _print_json(_dump(rows))
    elif not rows:
        typer.echo("no secrets: add one with `corral secret add NAME < value-file`")
    else:
        table(
            ["ID", "NAMESPACE", "UPDATED", "NAME"],
            [[str(s.id), s.namespace or "(global)", local_time(s.updated_at), s.name] for s in rows],
        )


@command(secret_app, "remove")
def secret_remove(
    secret_id: Annotated[int, typer.Argument(metavar="ID")],
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Delete secret ID (queued jobs naming it then fail at dequeue; its access log stays)."""
    _run(lambda: _client(server_url, token, data_dir).remove_secret(secret_id))
    if as_json:
        _print_json({"id": secret_id, "removed": True})
    else:
        typer.echo(f"secret {secret_id} removed")


@command(secret_app, "accesses")
def secret_accesses(
    secret_id: Annotated[int, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest this many.")] = 100,
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Which jobs' attempts were handed secret ID's value, on which executor, when (newest first)."""
    from corral.console import local_time, table

    rows = _run(lambda: _client(server_url, token, data_dir).secret_accesses(secret_id, limit))
    if as_json:
        _print_json(_dump(rows))
    elif not rows:
        typer.echo(f"secret {secret_id} was never handed to a job")
    else:
        table(
            ["TIME", "JOB", "ATTEMPT", "EXECUTOR"],
            [[local_time(a.accessed_at), str(a.job_id), str(a.attempt), a.executor_name] for a in rows],
        )


@command(secret_app, "reencrypt")
def secret_reencrypt(
    server_url: ServerOpt = DEFAULT_URL,
    token: TokenOpt = "",
    data_dir: DataDirOpt = Path(".corral"),
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every secret under the server's first key (a key rotation's middle step)."""
    done = _run(lambda: _client(server_url, token, data_dir).reencrypt_secrets())
    if as_json:
        _print_json(_dump(done))
    else:
        typer.echo(
            f"{done.reencrypted} of {done.total} secrets re-encrypted; all are under key {done.key_id}"
        )


@command(secret_app, "keygen")
def secret_keygen() -> None:
    """Print a new key for CORRAL_SECRETS_KEY (base64 of 32 random bytes; nothing is stored)."""
    from corral.server.secretbox import new_key

    typer.echo(new_key())
