"""Printing job log events in a terminal (used by `corral job logs -f`, `corral batch` and the demo).

Everything a job wrote passes `corral.terminal.clean` first: no escape sequence of a job reaches the
operator's terminal (OSC 52 clipboard writes, titles, cursor moves)."""

from __future__ import annotations

from typing import Any

import typer

from corral.terminal import clean as _clean


def _same(text: str) -> str:
    return text


def print_event(ev: dict[str, Any], prefix: str = "", *, sanitize: bool = True) -> None:
    """Print one log event; `sanitize=False` only for output that is already clean, or --raw."""
    clean = _clean if sanitize else _same
    kind = ev.get("type")
    if kind == "entry":
        cmd = clean(" ".join(ev.get("command") or []))
        head = f"{prefix}▶ {clean(ev['key'])}"
        typer.secho(head + (f"  $ {cmd[:100]}" if cmd else ""), fg=typer.colors.CYAN)
    elif kind == "output":
        for line in clean(ev["data"]).splitlines():
            typer.echo(f"{prefix}  {line}")
    elif kind == "exit":
        color = typer.colors.GREEN if ev["exitCode"] == 0 else typer.colors.RED
        typer.secho(f"{prefix}  ⏹ exit {ev['exitCode']} ({ev.get('durationMs') or 0} ms)", fg=color)
    elif kind == "state":
        color = typer.colors.GREEN if ev["state"] == "completed" else typer.colors.RED
        err = f": {clean(ev['error'])}" if ev.get("error") else ""
        typer.secho(f"{prefix}● job {ev['state']}{err}", fg=color, bold=True)
